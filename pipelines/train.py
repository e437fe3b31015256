"""`ray job submit --working-dir . -- python pipelines/train.py --config pipelines/configs/quickstart.yaml k=v ...`

Runs unchanged locally (starts its own Ray) and as a Ray job (joins the cluster through RAY_ADDRESS).
"""

import sys

from skill1.cli import main

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]]))
