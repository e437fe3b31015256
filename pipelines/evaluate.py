"""`python pipelines/evaluate.py --run runs/<name> [k=v ...]` — or the same under `ray job submit`."""

import sys

from skill1.cli import main

if __name__ == "__main__":
    sys.exit(main(["eval", *sys.argv[1:]]))
