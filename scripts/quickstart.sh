#!/usr/bin/env bash
# The main job on the embedded default: local Ray, embedded LanceDB, tiny local policy, built-in env,
# wandb offline. Extra arguments are config overrides, e.g. `algorithm.iterations=5`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
exec skill1 train --config pipelines/configs/quickstart.yaml "$@"
