#!/usr/bin/env bash
# Submit Skill1 training to a running Ray cluster as a Ray job.
#   RAY_ADDRESS=http://<head>:8265 cluster/submit.sh --config pipelines/configs/quickstart.yaml key=value ...
# This checkout is shipped as the job's working dir, with cluster/runtime_env.yaml (what it leaves out, env vars).
# SKILL1_SUBMIT_FLAGS passes flags to `ray job submit` itself, e.g. "--no-wait --submission-id my-run".
# SKILL1_ENTRYPOINT picks the entry point (default pipelines/train.py; pipelines/evaluate.py for evaluation).
set -euo pipefail
cd "$(dirname "$0")/.."
ADDRESS=${RAY_ADDRESS:-http://127.0.0.1:8265}
# shellcheck disable=SC2086  # the flags are meant to split
exec ray job submit --address "$ADDRESS" --working-dir . --runtime-env cluster/runtime_env.yaml \
  ${SKILL1_SUBMIT_FLAGS:-} -- python "${SKILL1_ENTRYPOINT:-pipelines/train.py}" "$@"
