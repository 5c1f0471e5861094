#!/usr/bin/env bash
# Assemble a Space repository in DEST (default ./space-build): app.py, the package, assets and the Space files.
# Then: cd DEST && git init && git remote add origin https://huggingface.co/spaces/USER/NAME && git add . && git push
set -euo pipefail
src="$(cd "$(dirname "$0")/.." && pwd)"
dest="${1:-space-build}"
mkdir -p "$dest"
cp "$src/app.py" "$dest/"
rm -rf "$dest/hierdemo" "$dest/assets"
cp -r "$src/hierdemo" "$src/assets" "$dest/"
find "$dest/hierdemo" -name __pycache__ -prune -exec rm -rf {} +
cp "$src/spaces_config/README.md" "$dest/README.md"
cp "$src/spaces_config/requirements.txt" "$dest/requirements.txt"
echo "Space files written to $dest"
