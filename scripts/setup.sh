#!/usr/bin/env bash
# Install biomedseg and its dependencies into a virtual environment (idempotent).
#
#   bash scripts/setup.sh            create .venv (or reuse it) and install what a user installs:
#                                    torch==2.13.0, then `pip install -e ".[dev,napari]"` resolved afresh
#   bash scripts/setup.sh --locked   the same, with the versions of constraints.txt (reproducible)
#   bash scripts/setup.sh --write-lock   write constraints.txt from the environment's versions
#
# The environment is $BIOMEDSEG_VENV (default .venv in the repository), made with $PYTHON
# (default python3, 3.11 or newer). torch is pinned first: on these machines torch==2.13.0
# resolves to a local CPU wheel, while an unpinned torch would pull several GB of CUDA packages.
# A second run does nothing unless pyproject.toml (or, with --locked, constraints.txt) changed.
# The napari extra (the plugin and its tests, tests/napari_plugin) adds napari 0.9, PyQt5 and pytest-qt
# (about 12 s and 340 MB here); its tests draw with OpenGL, which Qt's offscreen platform gets
# from an X display: Xvfb (Debian package xvfb, about 5 s) is installed when apt-get can.
set -euo pipefail
cd "$(dirname "$0")/.."
MODE=${1:-}
case "$MODE" in
  ""|--locked|--write-lock) ;;
  *) echo "usage: bash scripts/setup.sh [--locked | --write-lock]" >&2; exit 2 ;;
esac
VENV=${BIOMEDSEG_VENV:-.venv}
PY=${PYTHON:-python3}
LOCK=constraints.txt

if [ ! -x "$VENV/bin/python" ]; then
  "$PY" -c "import sys; sys.exit(0 if sys.version_info >= (3, 11) else 'biomedseg needs Python 3.11 or newer')"
  "$PY" -m venv "$VENV"
fi
VPY="$VENV/bin/python"

if [ "$MODE" = --write-lock ]; then
  # the installed versions, without biomedseg itself; torch without its build tag (+cpu), so the
  # lock also serves a CUDA build of the same version
  { echo "# Versions of an install that passed the tests (Python $("$VPY" -c 'import platform; print(platform.python_version())')),"
    echo "# written by: bash scripts/setup.sh --write-lock; used by: bash scripts/setup.sh --locked"
    "$VPY" -m pip freeze --exclude-editable | sed -E 's/^(torch==[^+]+)\+.*/\1/'; } > "$LOCK.tmp"
  mv "$LOCK.tmp" "$LOCK"
  echo "wrote $LOCK ($(grep -vc "^#" "$LOCK") packages)"
  exit 0
fi

STAMP="$VENV/.biomedseg-setup${MODE:+-locked}"
if [ -f "$STAMP" ] && [ "$STAMP" -nt pyproject.toml ] && { [ -z "$MODE" ] || [ "$STAMP" -nt "$LOCK" ]; } \
   && "$VPY" -c "import biomedseg, torch, pytest, napari" 2>/dev/null; then
  exit 0  # already installed
fi
CONSTRAIN=()
[ "$MODE" = --locked ] && CONSTRAIN=(-c "$LOCK")
if ! "$VPY" -c "import torch, sys; sys.exit(0 if torch.__version__.startswith('2.13.0') else 1)" 2>/dev/null; then
  "$VPY" -m pip install --quiet "torch==2.13.0"
fi
"$VPY" -m pip install --quiet "${CONSTRAIN[@]}" -e ".[dev,napari]"
if ! command -v Xvfb >/dev/null && command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
  { apt-get install -y -q xvfb || { apt-get update -q && apt-get install -y -q xvfb; }; } >/dev/null \
    || echo "setup: could not install xvfb: tests/napari_plugin will skip" >&2
fi
rm -f "$VENV"/.biomedseg-setup*
touch "$STAMP"
