"""Execute a notebook without Jupyter (nbclient, installed with the test extras), as the committed copies were.

    SKILL1_RUN=runs/<name> python notebooks/execute.py notebooks/run_analysis.ipynb        # → runs/<name>/analysis.ipynb
    python notebooks/execute.py notebooks/learning_study.ipynb --in-place                  # refresh the committed copy

The kernel starts in notebooks/ (as Jupyter's would); the notebooks resolve their paths from the repository root.
Printed output is echoed here too, so the tables show in the terminal.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("notebook", type=Path)
    parser.add_argument("--in-place", action="store_true", help="write the outputs into the notebook itself")
    parser.add_argument("--out", type=Path, help="where to write the executed copy (default: the run dir's "
                                                 "analysis.ipynb with SKILL1_RUN set, else <name>.executed.ipynb)")
    parser.add_argument("--timeout", type=int, default=600, help="seconds a cell may take")
    args = parser.parse_args(argv)
    import nbformat
    from nbclient import NotebookClient

    if not args.notebook.is_file():
        print(f"error: no notebook at {args.notebook}", file=sys.stderr)
        return 2
    nb = nbformat.read(args.notebook, as_version=4)
    NotebookClient(nb, timeout=args.timeout, kernel_name="python3",
                   resources={"metadata": {"path": str(ROOT / "notebooks")}}).execute()
    for cell in nb.cells:
        for output in cell.get("outputs", []):
            if output.get("output_type") == "stream":
                print(output["text"], end="")
    if args.in_place:
        out = args.notebook
    elif args.out:
        out = args.out
    elif os.environ.get("SKILL1_RUN"):
        run = Path(os.environ["SKILL1_RUN"])
        out = (run if run.is_absolute() else ROOT / run) / "analysis.ipynb"
    else:
        out = args.notebook.with_suffix(".executed.ipynb")
    nbformat.write(nb, out)
    print(f"executed notebook: {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
