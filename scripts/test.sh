#!/usr/bin/env bash
# Install (if needed) and run the test suite. Extra arguments go to pytest, e.g. `-m "not slow"`.
set -euo pipefail
cd "$(dirname "$0")/.."
SKILL1_EXTRAS=${SKILL1_EXTRAS:-dev,alfworld} bash scripts/setup.sh
. .venv/bin/activate
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false WANDB_SILENT=true
set +e
python -m pytest "$@"
rc=$?
set -e
if [ "$rc" -eq 5 ]; then
  echo "pytest collected no tests: failing, a suite that runs nothing proves nothing" >&2
  exit 1
fi
exit "$rc"
