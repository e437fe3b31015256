#!/usr/bin/env bash
# GPU install (a CUDA machine or a Ray GPU image): Skill1 with vLLM, its CUDA torch and flash-attn, pinned by
# constraints-gpu.txt to one vLLM release (vllm 0.32.0: torch==2.13.0, transformers<5.20). Into the active
# Python environment (an image's, or a venv you made); SKILL1_EXTRAS adds extras (default: alfworld).
#   bash scripts/setup_gpu.sh
set -euo pipefail
cd "$(dirname "$0")/.."
EXTRAS=gpu,${SKILL1_EXTRAS:-alfworld}
python -m pip install -q --upgrade pip
python -m pip install -q -c constraints-gpu.txt -e ".[$EXTRAS]"
# flash-attn builds against the torch now installed: pip's build isolation would hide it ("No module named
# 'torch'"); ninja and CUDA's compiler are needed unless a matching prebuilt wheel is found
python -m pip install -q -c constraints-gpu.txt --no-build-isolation flash-attn
python -c "import torch, vllm, transformers, flash_attn, deepspeed
print('torch', torch.__version__, 'cuda', torch.version.cuda, '| vllm', vllm.__version__, '| transformers',
      transformers.__version__, '| flash-attn', flash_attn.__version__, '| deepspeed', deepspeed.__version__)"
