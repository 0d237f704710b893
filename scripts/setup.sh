#!/usr/bin/env bash
# Install biomedseg and its dependencies into the current Python (idempotent).
# torch is pinned first: on these machines torch==2.13.0 resolves to a local CPU wheel,
# while an unpinned torch would pull several GB of CUDA packages.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if ! "$PY" -c "import torch, sys; sys.exit(0 if torch.__version__.startswith('2.13.0') else 1)" 2>/dev/null; then
  "$PY" -m pip install --quiet "torch==2.13.0"
fi
if ! "$PY" -c "import biomedseg, monai, pytest" 2>/dev/null || [ pyproject.toml -nt .setup-stamp ] 2>/dev/null; then
  "$PY" -m pip install --quiet -e ".[dev]"
  touch .setup-stamp
fi
