#!/usr/bin/env bash
# The GPU paths that only a GPU can show, in one short run (< 8 min on one GPU; see scripts/gpu_check.py):
#   bf16 learner steps under DeepSpeed ZeRO-2 and ZeRO-3 (SDPA, or flash-attn when installed), the memory plan
#   against torch.cuda.max_memory_allocated, CUDA-IPC weight sync into a second process, an NCCL bf16 broadcast.
# Needs torch + transformers (a GPU image has them); DeepSpeed, pydantic, hjson and omegaconf are taken from
# wheels in .whl/ when present (a machine with no package index), else from the environment. The tokenizer
# comes from runs/models/tiny-env (`skill1 model init-tiny`), or --tokenizer DIR. vLLM is not exercised here.
#   bash scripts/gpu_check.sh [REPORT.json]
set -euo pipefail
cd "$(dirname "$0")/.."
REPORT=${1:-${OUT:-.}/gpu_check.json}
if compgen -G ".whl/*.whl" >/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/skill1-site .whl/*.whl
  export PYTHONPATH=/tmp/skill1-site${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || echo "no nvidia-smi"
python3 -c "import torch, transformers; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'transformers', transformers.__version__)"
python3 scripts/gpu_check.py all --out "$REPORT"
echo "report: $REPORT"
