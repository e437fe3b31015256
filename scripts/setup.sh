#!/usr/bin/env bash
# Create .venv (once) and install Skill1 with CPU torch. Idempotent; re-running is cheap.
# SKILL1_EXTRAS picks the extras (default "dev"; the tests add "alfworld" for the real ALFWorld engine).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
. .venv/bin/activate
# pip prints a warning for every local index folder this machine lacks: keep the log readable
quiet() { grep -v "is ignored: it is neither a file nor a directory" || true; }
EXTRAS=${SKILL1_EXTRAS:-dev}
STAMP=.venv/.skill1-installed-${EXTRAS//,/-}
if [ ! -f "$STAMP" ] || [ pyproject.toml -nt "$STAMP" ]; then
  echo "Installing Skill1[$EXTRAS] into .venv (CPU torch; a few minutes the first time)..."
  python -m pip install -q --upgrade pip 2>&1 | quiet
  python -m pip install -q -c constraints.txt "torch==2.13.0" 2>&1 | quiet
  # transformers pinned here, not in constraints.txt: .venv-vllm shares that file and needs <5.20 (vLLM 0.32.0)
  python -m pip install -q -c constraints.txt "transformers==5.24.0" -e ".[$EXTRAS]" 2>&1 | quiet
  touch "$STAMP"
fi
