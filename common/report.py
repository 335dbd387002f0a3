"""One page of results from the latest run: `make report` -> runs/report/results.md.

Every table is generated from the metrics JSON the stages wrote (never typed by hand); the plots are
drawn from the same files and copied beside the page with the neural game's GIF, so the folder can be
read or shared on its own.

    python -m common.report [--data-dir data] [--checkpoint-dir checkpoints] [--log-dir runs]
"""
from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

from common import paths
from common.io import atomic_write_bytes
from common.plots import plot_action_confusion, plot_control_by_step, plot_eval_curves, plot_latent_training


def _load(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return {}


def _pct(value) -> str:
    return "n/a" if value is None else f"{value:.1%}"


def _table(header: list[str], rows: list[list]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + [
        "| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]


def agent_section(ckpt: Path, out: Path) -> list[str]:
    eval_log = paths.dqn_dir(ckpt) / "eval_log.csv"
    if not eval_log.exists():
        return []
    plot_eval_curves({"evaluation": eval_log}, out / "agent_evaluation.png")
    levels = sorted(paths.dqn_dir(ckpt).glob("skill_level_*.pt"))
    return ["## Stage 1: the agent", "", "![agent evaluation](agent_evaluation.png)", "",
            f"Skill levels saved: {', '.join(p.stem for p in levels) or 'none'}.", ""]


def recording_section(data: Path) -> list[str]:
    summary = _load(paths.summary_path(data))
    if not summary:
        return []
    rows = [[level, s["policy"], s.get("threshold") if s.get("threshold") is not None else "-",
             {True: "yes", False: "no"}.get(s.get("threshold_reached"), "-"), s["episodes"], s["frames"],
             "/".join(str(s["splits"][k]) for k in ("train", "val", "test")),
             f"{s['score_mean']:.1f} ± {s['score_std']:.1f}", f"{s.get('frames_per_life', 0):.0f}"]
            for level, s in summary["levels"].items()]
    return ["## Stage 2: the recording", ""] + _table(
        ["level", "policy", "threshold", "reached", "episodes", "frames", "train/val/test", "score", "frames per life"],
        rows) + [""]


def world_model_section(ckpt: Path, logs: Path, out: Path) -> list[str]:
    metrics = _load(paths.latent_metrics_path(ckpt))
    if not metrics:
        return []
    lines = ["## Stage 3: latent actions and the world model", ""]
    train_log = logs / "latent_action" / "train_log.csv"
    if train_log.exists():
        plot_latent_training(train_log, out / "latent_training.png")
        lines += ["![training curves](latent_training.png)", ""]
    training = metrics.get("training", {})
    lines += [f"{training.get('steps', '?')} updates in {training.get('minutes', 0):.1f} minutes; one-step PSNR "
              f"{metrics['one_step']['psnr']:.2f} dB (copy-last-frame {metrics['one_step']['copy_last_psnr']:.2f}), "
              f"ΔPSNR {metrics['delta_psnr']:.2f} dB.", ""]
    rows = [[level, row["episodes"], f"{row['one_step_psnr']:.2f}",
             " / ".join("-" if v is None else f"{v:.1f}" for v in row["psnr_at_steps_1_10_30"])]
            for level, row in metrics.get("by_level", {}).items()]
    return lines + _table(["level", "test episodes", "one-step PSNR (dB)", "rollout PSNR at 1 / 10 / 30"], rows) + [""]


def map_section(ckpt: Path, out: Path) -> list[str]:
    metrics = _load(paths.action_to_latent_metrics_path(ckpt))
    if not metrics:
        return []
    plot_action_confusion(metrics, out / "action_confusion.png")
    return ["## Stage 5: the action->latent map", "",
            f"Per-transition accuracy on the {metrics['report_split']} pairs: "
            f"{metrics['test_transition_accuracy']:.2%} (a table of action -> most common code: "
            f"{metrics['action_only_table_accuracy']:.2%}).", "", "![confusion](action_confusion.png)", ""]


def game_section(ckpt: Path, data: Path, out: Path) -> list[str]:
    control = _load(paths.control_metrics_path(ckpt))
    if not control:
        return []
    plot_control_by_step(control, out / "control_by_step.png")
    gif = paths.neural_game_gif(data, "random")
    lines = ["## Stage 6: the neural game", ""]
    if gif.exists():
        shutil.copy(gif, out / gif.name)
        lines += [f"![the neural game]({gif.name})", ""]
    headline = [["paddle within 3 px (30-step rollouts, real actions)", _pct(control["paddle_within_3px"])],
                ["ball within 4 px", _pct(control["ball_within_4px"])],
                ["serve within 10 steps of FIRE: game start / after a lost life",
                 f"{_pct(control.get('serve_within_10_steps_game_start'))} / "
                 f"{_pct(control.get('serve_within_10_steps_after_lost_life'))}"],
                ["ball kept (emulator starts)", _pct(control.get("ball_kept"))],
                ["long play, one ball in play: neural / emulator",
                 f"{_pct(control.get('long_play_one_ball_share'))} / "
                 f"{_pct(control.get('long_play_one_ball_share_emulator'))}"],
                ["bricks back in long play", control.get("long_play_bricks_back", "n/a")],
                ["play step p50", f"{control['play_latency_ms_p50']:.1f} ms ({control['play_fps']:.0f} frames/s)"]]
    lines += _table(["measure", "value"], headline) + ["", "![by rollout step](control_by_step.png)", ""]
    rows = [[level, row["windows"], _pct(row["paddle_within_3px"]), _pct(row["ball_within_4px"]),
             _pct(row.get("ball_kept")), " / ".join(f"{v:.1f}" for v in row.get("psnr_db_at_steps_1_10_30", []))]
            for level, row in control["details"]["action_to_latent"].get("by_level", {}).items()]
    return lines + _table(["level", "rollouts", "paddle", "ball within 4 px", "ball kept", "PSNR 1 / 10 / 30"],
                          rows) + [""]


def write_report(data: Path, ckpt: Path, logs: Path, out: Path) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    pipeline = _load(paths.pipeline_summary_path(data))
    lines = ["# Neural Breakout: results of the latest run", ""]
    if pipeline.get("stage_seconds"):
        lines += _table(["stage", "minutes"], [[name, f"{s / 60:.1f}"] for name, s in pipeline["stage_seconds"].items()])
        lines += [""]
    for section in (agent_section(ckpt, out), recording_section(data), world_model_section(ckpt, logs, out),
                    map_section(ckpt, out), game_section(ckpt, data, out)):
        lines += section
    page = out / "results.md"
    atomic_write_bytes(page, "\n".join(lines).encode())
    return page


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", default="data")
    parser.add_argument("--checkpoint-dir", default="checkpoints")
    parser.add_argument("--log-dir", default="runs")
    parser.add_argument("--out", default="runs/report")
    args = parser.parse_args()
    page = write_report(Path(args.data_dir), Path(args.checkpoint_dir), Path(args.log_dir), Path(args.out))
    print(f"wrote {page}")


if __name__ == "__main__":
    from common.cli import run_main

    run_main(main)
