"""Before Qt starts: can its Linux display plugin load? Qt aborts the process when it cannot, so say why first."""

from __future__ import annotations

import ctypes
import sys
from collections.abc import Callable, Mapping

# What Qt's xcb plugin loads from the system (ldd of PySide6's plugins/platforms/libqxcb.so and
# lib/libQt6XcbQpa.so.6), and the Debian/Ubuntu package of each. PySide6's wheels bring Qt itself, not these;
# a stock Debian 12 lacks the first three.
XCB_LIBRARIES = (
    ("libxcb-cursor.so.0", "libxcb-cursor0"),
    ("libxcb-icccm.so.4", "libxcb-icccm4"),
    ("libxcb-keysyms.so.1", "libxcb-keysyms1"),
    ("libxcb-image.so.0", "libxcb-image0"),
    ("libxcb-render-util.so.0", "libxcb-render-util0"),
    ("libxcb-shape.so.0", "libxcb-shape0"),
    ("libxcb-randr.so.0", "libxcb-randr0"),
    ("libxcb-xkb.so.1", "libxcb-xkb1"),
    ("libxkbcommon-x11.so.0", "libxkbcommon-x11-0"),
    ("libxcb.so.1", "libxcb1"),
    ("libX11-xcb.so.1", "libx11-xcb1"),
    ("libxcb-render.so.0", "libxcb-render0"),
    ("libxcb-shm.so.0", "libxcb-shm0"),
    ("libxcb-sync.so.1", "libxcb-sync1"),
    ("libxcb-util.so.1", "libxcb-util1"),
    ("libxcb-xfixes.so.0", "libxcb-xfixes0"),
    ("libxkbcommon.so.0", "libxkbcommon0"),
)


def can_load(soname: str) -> bool:
    """True when the dynamic loader finds `soname` (what Qt's plugin loader will do)."""
    try:
        ctypes.CDLL(soname)
    except OSError:
        return False
    return True


def can_connect_x(display: str) -> bool:
    """True when an X server answers at `display` (Qt aborts when it does not)."""
    try:
        xcb = ctypes.CDLL("libxcb.so.1")
    except OSError:
        return True  # reported as a missing library instead
    xcb.xcb_connect.restype = ctypes.c_void_p
    xcb.xcb_connect.argtypes = [ctypes.c_char_p, ctypes.c_void_p]
    xcb.xcb_connection_has_error.argtypes = [ctypes.c_void_p]
    xcb.xcb_disconnect.argtypes = [ctypes.c_void_p]
    conn = xcb.xcb_connect(display.encode(), None)
    try:
        return conn is not None and xcb.xcb_connection_has_error(conn) == 0
    finally:
        if conn is not None:
            xcb.xcb_disconnect(conn)


def display_problem(
    environ: Mapping[str, str],
    platform: str = sys.platform,
    loadable: Callable[[str], bool] = can_load,
    connects: Callable[[str], bool] = can_connect_x,
) -> str | None:
    """One line saying why the Qt window cannot open here and what to do, or None when it can (or when Qt
    will use a platform other than X11, which this does not check)."""
    if not platform.startswith("linux"):
        return None
    chosen = environ.get("QT_QPA_PLATFORM", "").strip()
    if chosen and not chosen.startswith("xcb"):
        return None  # offscreen, wayland, vnc...: Qt's own choice
    if not chosen and environ.get("WAYLAND_DISPLAY"):
        return None  # a Wayland session: Qt prefers its Wayland plugin, which needs none of the X11 libraries
    display = environ.get("DISPLAY", "")
    if not display:
        return (
            "no display to open the window on (DISPLAY and WAYLAND_DISPLAY are not set): start Ingle from a "
            "desktop session, or use the command line (ingle --help)"
        )
    missing = [(lib, pkg) for lib, pkg in XCB_LIBRARIES if not loadable(lib)]
    if missing:
        return (
            f"the window cannot open: Qt's X11 support needs {', '.join(lib for lib, _ in missing)}; install "
            f"{'it' if len(missing) == 1 else 'them'} with: sudo apt install {' '.join(pkg for _, pkg in missing)}"
        )
    if not connects(display):
        return f"cannot connect to the X display {display!r}: check DISPLAY (and xhost/xauth) and try again"
    return None
