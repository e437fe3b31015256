#!/usr/bin/env bash
# Submit Skill1 training to a running Ray cluster as a Ray job.
#   RAY_ADDRESS=http://<head>:8265 cluster/submit.sh --config pipelines/configs/quickstart.yaml key=value ...
# The working directory (this repo, minus runs/ and the venv) is shipped to the cluster by Ray.
set -euo pipefail
cd "$(dirname "$0")/.."
ADDRESS=${RAY_ADDRESS:-http://127.0.0.1:8265}
RUNTIME_ENV='{"excludes": ["runs/", ".venv/", ".git/", "wandb/", "*.safetensors"],
              "env_vars": {"HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}}'
exec ray job submit --address "$ADDRESS" --working-dir . --runtime-env-json "$RUNTIME_ENV" \
  -- python pipelines/train.py "$@"
