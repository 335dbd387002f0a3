"""PNG plots written beside the training logs (matplotlib, no display needed)."""
from __future__ import annotations

import csv
from pathlib import Path


def read_csv(path: str | Path) -> list[dict[str, float]]:
    with open(path, newline="") as handle:
        return [{k: float(v) for k, v in row.items() if v not in ("", None)} for row in csv.DictReader(handle)]


def plot_eval_curves(eval_logs: dict[str, str | Path], out_png: str | Path, title: str = "") -> None:
    """Evaluation mean (± std) against wall-clock minutes and agent steps, one line per run (01's eval_log.csv)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (by_time, by_steps) = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
    for label, path in eval_logs.items():
        rows = read_csv(path)
        if not rows:
            continue
        minutes = [r["wall_s"] / 60 for r in rows]
        steps = [r["step"] for r in rows]
        mean = [r["eval_mean"] for r in rows]
        low = [r["eval_mean"] - r["eval_std"] for r in rows]
        high = [r["eval_mean"] + r["eval_std"] for r in rows]
        for axis, x in ((by_time, minutes), (by_steps, steps)):
            (line,) = axis.plot(x, mean, marker=".", label=label)
            axis.fill_between(x, low, high, color=line.get_color(), alpha=0.15)
    by_time.set_xlabel("wall-clock minutes")
    by_steps.set_xlabel("agent steps")
    by_time.set_ylabel("evaluation mean score (± std)")
    for axis in (by_time, by_steps):
        axis.grid(alpha=0.3)
    by_time.legend()
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    out_png = Path(out_png)
    tmp = out_png.with_name(f".tmp_{out_png.name}")
    fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)
    tmp.replace(out_png)
