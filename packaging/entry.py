"""Entry point of the frozen app: the same `ingle` CLI (no arguments opens the window)."""

import multiprocessing
import sys

from app.cli import main

if __name__ == "__main__":
    multiprocessing.freeze_support()
    sys.exit(main())
