"""Ingle's PySide6 GUI and the `ingle` command line that composes every layer's commands."""
