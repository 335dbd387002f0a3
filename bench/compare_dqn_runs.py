"""Overlay the evaluation curves of several 01_train_dqn.py runs (score vs minutes and agent steps).

    python bench/compare_dqn_runs.py runs/ab/A/dqn runs/ab/B/dqn --labels "quick, 1 update / 8 steps" \
        "1 update / 4 steps" --out docs/dqn_quick_candidates.png

Each folder holds the eval_log.csv that 01 writes. Prints, per run, the evaluation mean reached by
a few wall-clock marks, so runs of equal time can be compared in a table as well.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from common.cli import run_main  # noqa: E402
from common.errors import UserError  # noqa: E402
from common.plots import plot_eval_curves, read_csv  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("folders", nargs="+", help="01 checkpoint folders (each with eval_log.csv)")
    p.add_argument("--labels", nargs="+", default=None, help="one label per folder (default: the folder names)")
    p.add_argument("--out", default="runs/dqn_curves.png")
    p.add_argument("--marks", type=float, nargs="+", default=[10, 20, 30, 40, 52], help="minutes to tabulate")
    args = p.parse_args()
    labels = args.labels or [str(f) for f in args.folders]
    if len(labels) != len(args.folders):
        raise UserError("give one --labels entry per folder")
    logs = {}
    for label, folder in zip(labels, args.folders):
        path = Path(folder) / "eval_log.csv"
        if not path.exists():
            raise UserError(f"{path} not found: point at a folder written by 01_train_dqn.py")
        logs[label] = path
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    plot_eval_curves(logs, args.out)
    print("| run | " + " | ".join(f"best by {m:g} min" for m in args.marks) + " | steps | final |")
    print("|---|" + "---|" * (len(args.marks) + 2))
    for label, path in logs.items():
        rows = read_csv(path)
        best = [max((r["eval_mean"] for r in rows if r["wall_s"] <= m * 60), default=float("nan"))
                for m in args.marks]
        print(f"| {label} | " + " | ".join(f"{b:.1f}" for b in best) + f" | {rows[-1]['step']:,.0f} | "
              f"{rows[-1]['eval_mean']:.1f} |")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    run_main(main)
