"""Render assets/icons/ingle.svg to the PNG sizes desktops and PyInstaller want (run after editing the SVG)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

SIZES = (16, 24, 32, 48, 64, 128, 256, 512)


def main() -> int:
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    from PySide6.QtCore import Qt
    from PySide6.QtGui import QGuiApplication, QImage, QPainter
    from PySide6.QtSvg import QSvgRenderer

    icons = Path(__file__).resolve().parents[1] / "assets" / "icons"
    app = QGuiApplication.instance() or QGuiApplication(sys.argv)  # noqa: F841 (Qt needs an application)
    renderer = QSvgRenderer(str(icons / "ingle.svg"))
    if not renderer.isValid():
        print(f"error: {icons / 'ingle.svg'} is not a valid SVG", file=sys.stderr)
        return 2
    for size in SIZES:
        image = QImage(size, size, QImage.Format.Format_ARGB32)
        image.fill(Qt.GlobalColor.transparent)
        painter = QPainter(image)
        painter.setRenderHint(QPainter.RenderHint.Antialiasing)
        renderer.render(painter)
        painter.end()
        image.save(str(icons / f"ingle-{size}.png"))
    print(f"wrote {len(SIZES)} PNGs to {icons}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
