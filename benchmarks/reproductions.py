"""Full-size runs of the reproduction notebooks (induction heads, grokking, TopK SAE scaling, feature absorption):
each notebook executed top to bottom at its full settings (the test suite runs the same notebooks on small ones),
its claims asserted in its cells.

    python benchmarks/reproductions.py                    # all four
    python benchmarks/reproductions.py --only grokking    # one (grokking at p = 113 takes about an hour on 2 cores)

Prints what each notebook printed (the measured figures) and its wall time; the executed notebooks are kept in
--out for their figures.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
RUNS = {"induction": "09_induction_heads.ipynb", "grokking": "10_grokking.ipynb", "sae-scaling": "11_sae_scaling.ipynb",
        "absorption": "12_feature_absorption.ipynb"}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", choices=sorted(RUNS), action="append")
    ap.add_argument("--out", default=os.path.expanduser("~/.cache/interp/benchmarks/reproductions"))
    args = ap.parse_args()

    import nbclient
    import nbformat

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    os.environ.pop("INTERP_NOTEBOOK_SMALL", None)  # full settings
    for name in args.only or sorted(RUNS):
        nb = nbformat.read(NOTEBOOKS / RUNS[name], as_version=4)
        start = time.perf_counter()
        client = nbclient.NotebookClient(nb, timeout=None, kernel_name="python3",
                                         resources={"metadata": {"path": str(out)}})
        failed = None
        try:
            client.execute()
        except nbclient.exceptions.CellExecutionError as e:
            failed = str(e).strip().splitlines()[-1]
        finally:
            nbformat.write(nb, out / RUNS[name])
        print(f"== {name} ({time.perf_counter() - start:.0f} s){' FAILED: ' + failed if failed else ''}")
        for cell in nb.cells:
            for o in cell.get("outputs", []):
                if o.output_type == "stream" and o.name == "stdout":
                    text = "".join(line for line in o.text.splitlines(True) if not line.startswith("train:"))
                    print(text.rstrip()) if text.strip() else None
                elif o.output_type == "execute_result" and "text/plain" in o.data and "History" in o.data["text/plain"]:
                    print(o.data["text/plain"])


if __name__ == "__main__":
    main()
