"""PNG plots written beside the training logs (matplotlib, no display needed)."""
from __future__ import annotations

import csv
from pathlib import Path


def read_csv(path: str | Path) -> list[dict[str, float]]:
    with open(path, newline="") as handle:
        return [{k: float(v) for k, v in row.items() if v not in ("", None)} for row in csv.DictReader(handle)]


def _figure(rows: int, cols: int, size: tuple[float, float], **options):
    """A figure off screen (Agg) and its axes, flat; `options` go to plt.subplots (e.g. sharey)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(rows, cols, figsize=size, squeeze=False, **options)
    return plt, fig, axes.ravel()


def _save(plt, fig, out_png: str | Path) -> None:
    """Lay out, write under a temporary name and rename, so a reader never sees half a PNG."""
    out_png = Path(out_png)
    tmp = out_png.with_name(f".tmp_{out_png.name}")
    fig.tight_layout()
    fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)
    tmp.replace(out_png)


def plot_eval_curves(eval_logs: dict[str, str | Path], out_png: str | Path, title: str = "") -> None:
    """Evaluation mean (± std) against wall-clock minutes and agent steps, one line per run (01's eval_log.csv)."""
    plt, fig, (by_time, by_steps) = _figure(1, 2, (11, 4), sharey=True)
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
    _save(plt, fig, out_png)


def plot_latent_training(train_log: str | Path, out_png: str | Path) -> None:
    """03's train_log.csv: reconstruction (train and validation), codebook perplexity, event rate and prior KL
    against updates."""
    rows = read_csv(train_log)
    plt, fig, (recon, codes, events) = _figure(1, 3, (14, 3.6))
    step = [r["step"] for r in rows]
    recon.plot(step, [r["recon"] for r in rows], label="train")
    val = [(r["step"], r["val_recon"]) for r in rows if "val_recon" in r]
    if val:
        recon.plot(*zip(*val), marker="o", label="validation")
    recon.set_yscale("log")
    recon.set_title("pixel cross-entropy")
    codes.plot(step, [r["perplexity"] for r in rows], label="action-code perplexity")
    codes.plot(step, [r["codes_used"] for r in rows], label="codes used")
    codes.set_title("codebook")
    events.plot(step, [r["event_rate"] for r in rows], label="event rate (nats)")
    events.plot(step, [r["prior_kl"] for r in rows], label="prior KL (nats)")
    events.set_title("random event latent")
    for axis in (recon, codes, events):
        axis.set_xlabel("updates")
        axis.grid(alpha=0.3)
        axis.legend()
    _save(plt, fig, out_png)


def plot_control_by_step(control: dict, out_png: str | Path) -> None:
    """06 --evaluate: paddle within 3 px, ball within 4 px and PSNR by rollout step, the neural game (real
    actions through the map), the world model with inferred latents, and copy-last-frame."""
    details = control["details"]
    plt, fig, axes = _figure(1, 3, (14, 3.6))
    names = {"action_to_latent": "neural game (actions -> map)", "inferred_latents": "inferred latents",
             "copy_last_frame": "copy last frame"}
    for key, title in (("paddle_within_3px_by_step", "paddle within 3 px"),
                       ("ball_within_4px_by_step", "ball within 4 px"), ("psnr_db_by_step", "PSNR (dB)")):
        axis = axes[["paddle_within_3px_by_step", "ball_within_4px_by_step", "psnr_db_by_step"].index(key)]
        for name, label in names.items():
            if name in details:
                values = details[name][key]
                axis.plot(range(1, len(values) + 1), values, label=label)
        axis.set_title(title)
        axis.set_xlabel("rollout step")
        axis.grid(alpha=0.3)
    axes[0].legend()
    _save(plt, fig, out_png)


def plot_action_confusion(metrics: dict, out_png: str | Path) -> None:
    """05's test report: for each real action, the latent code the encoder inferred (rows) against the
    code the map predicted (columns)."""
    per_action = metrics["report"]["per_action"]
    num_codes = int(metrics["num_codes"])
    plt, fig, axes = _figure(1, len(per_action), (3.4 * len(per_action), 3.4))
    for axis, (action, row) in zip(axes, per_action.items()):
        grid = [[0] * num_codes for _ in range(num_codes)]
        for true, predicted in row.get("confusion_true_to_predicted", {}).items():
            for code, count in predicted.items():
                if int(true) < num_codes and int(code) < num_codes:
                    grid[int(true)][int(code)] = count
        axis.imshow(grid, cmap="Blues")
        axis.set_title(f"{action}: {row['transition_accuracy']:.1%} of {row['count']}")
        axis.set_xlabel("predicted code")
        axis.set_ylabel("inferred code")
    _save(plt, fig, out_png)
