#!/usr/bin/env bash
# Create .venv (Python 3.10+) with the pinned requirements and the skipnet package (editable).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install -q --disable-pip-version-check -r requirements.txt
.venv/bin/python -m pip install -q --disable-pip-version-check --no-deps --no-build-isolation -e .
echo "skipnet installed in .venv ($(.venv/bin/python -c 'import skipnet; print(skipnet.__version__)'))"
