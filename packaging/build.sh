#!/usr/bin/env bash
# Build the one-folder desktop app into dist/ingle (Linux; see README "Packaging" for macOS and Windows).
# Usage: packaging/build.sh            (uses the current Python environment, which must have Ingle installed)
set -euo pipefail
cd "$(dirname "$0")/.."
python -c "import PyInstaller" 2>/dev/null || python -m pip install "pyinstaller>=6.10"
if python -c "import torch" 2>/dev/null; then
  echo "note: torch is installed here; it is excluded from the bundle (training stays an optional extra)"
fi
python packaging/make_icons.py
python -m PyInstaller packaging/ingle.spec --noconfirm --clean --distpath dist --workpath build/pyinstaller
install -m 644 packaging/ingle.desktop dist/ingle/ingle.desktop
install -m 644 assets/icons/ingle-256.png dist/ingle/ingle.png
echo "built: dist/ingle ($(du -sh dist/ingle | cut -f1)); run dist/ingle/ingle, or packaging/smoke.sh"
