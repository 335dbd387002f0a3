"""Run every stage in order at one preset, time each, and print the project's measures.

`make pipeline` calls this. Each stage is the numbered script run as its own process, exactly
as a user would run it, so any stage can later be re-run alone after a tweak.

Run again, it keeps what is done: a training stage whose result exists and is newer than its input
is kept (and said so), an interrupted world model resumes, and once a stage runs every later one
runs again on its new output. `--fresh` (`make pipeline FRESH=1`) retrains everything.
`--nproc N` (`make pipeline NPROC=N`) trains the world model in N processes under torchrun.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from common import paths
from common.cli import add_preset_arg, default_preset, non_negative_int, positive_int, run_main
from common.errors import UserError
from common.io import atomic_write_json
from common.report import write_report

ROOT = Path(__file__).resolve().parent


def stage_commands(preset: str, data_dir: str, ckpt_dir: str, log_dir: str,
                   seed: int = 0) -> list[tuple[str, list[str]]]:
    """(name, argv) for each stage; 06 runs headless: an evaluation and the random-player GIF.
    Every stage that draws random numbers gets the same --seed."""
    dirs = ["--data-dir", data_dir, "--checkpoint-dir", ckpt_dir]
    seeded = ["--seed", str(seed)]
    with_preset = ["--preset", preset, *dirs, *seeded]
    return [
        ("01 train the agent", ["01_train_dqn.py", "--preset", preset, "--checkpoint-dir", ckpt_dir, "--log-dir", log_dir,
                                *seeded]),
        ("02 record videos", ["02_record_videos.py", *with_preset]),
        ("03 train latent actions + world model", ["03_train_latent_action.py", *with_preset, "--log-dir", log_dir]),
        ("04 collect action-latent pairs", ["04_collect_action_latent_pairs.py", *dirs]),
        ("05 train action->latent", ["05_train_action_to_latent.py", *with_preset]),
        ("06 evaluate control", ["06_play_neural_breakout.py", "--evaluate", *with_preset]),
        ("06 neural game GIF", ["06_play_neural_breakout.py", "--headless", "--policy", "random",
                                "--steps", "60" if preset == "smoke" else "300", *dirs, *seeded]),
    ]


def launch(argv: list[str], nproc: int) -> list[str]:
    """The command line of one stage: the world model (03) under torchrun when nproc > 1."""
    if nproc > 1 and argv[0].startswith("03_"):
        return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(nproc), *argv]
    return [sys.executable, *argv]


def stage_result(name: str, data_dir: Path, ckpt_dir: Path) -> Path | None:
    """The file that says a stage is complete (its newest output), or None for a stage that always runs."""
    return {"01": paths.dqn_checkpoint(ckpt_dir, "latest"),
            "02": paths.summary_path(data_dir),
            "03": paths.latent_metrics_path(ckpt_dir),
            "04": paths.pairs_path(data_dir),
            "05": paths.action_to_latent_metrics_path(ckpt_dir)}.get(name[:2])


def plan_stage(name: str, data_dir: Path, ckpt_dir: Path, fresh: bool, upstream_ran: bool,
               previous: Path | None) -> tuple[str, list[str]]:
    """("run" | "keep", extra flags) for one stage: keep a complete, current result; resume an interrupted
    world model; start over (--fresh) where a result exists but is stale or a fresh run was asked for."""
    result = stage_result(name, data_dir, ckpt_dir)
    if result is None:
        return "run", []
    current = result.exists() and (previous is None or not previous.exists()
                                   or result.stat().st_mtime >= previous.stat().st_mtime)
    if not fresh and not upstream_ran and current:
        return "keep", []
    if name[:2] == "02":   # a new agent (or --fresh): record every level again, the old episodes go when it is done
        return "run", ["--replace"]
    # the file whose presence makes a training stage refuse to start without --resume or --fresh
    trained = {"01": paths.dqn_checkpoint(ckpt_dir, "latest"), "03": paths.latent_checkpoint(ckpt_dir, "latest"),
               "05": paths.action_to_latent_checkpoint(ckpt_dir)}.get(name[:2])
    if trained is None or not trained.exists():
        return "run", []
    if name[:2] == "03" and not fresh and not upstream_ran and not result.exists():
        return "run", ["--resume"]
    return "run", ["--fresh"]

def _load(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return {}


def agent_summary(dqn_dir: Path) -> dict:
    """Skill levels reached and the best evaluation row of 01's eval_log.csv."""
    import csv

    levels = sorted(int(p.stem.rsplit("_", 1)[1]) for p in dqn_dir.glob("skill_level_*.pt"))
    summary: dict = {"skill_levels": levels}
    try:
        with open(dqn_dir / "eval_log.csv") as handle:
            rows = list(csv.DictReader(handle))
    except OSError:
        return summary
    if rows:
        best = max(rows, key=lambda row: float(row["eval_mean"]))
        summary.update(best_eval_mean=float(best["eval_mean"]), best_eval_step=int(best["step"]),
                       last_eval_mean=float(rows[-1]["eval_mean"]), evaluations=len(rows))
    return summary


def summarize(data_dir: Path, ckpt_dir: Path, timings: dict[str, float]) -> dict:
    """Collect the measures every stage wrote into one dict."""
    return {
        "stage_seconds": timings,
        "agent": agent_summary(paths.dqn_dir(ckpt_dir)),
        "recording": _load(paths.summary_path(data_dir)),
        "world_model": _load(paths.latent_metrics_path(ckpt_dir)),
        "action_to_latent": _load(paths.action_to_latent_metrics_path(ckpt_dir)),
        "control": _load(paths.control_metrics_path(ckpt_dir)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_preset_arg(parser)
    parser.add_argument("--data-dir", default="data")
    parser.add_argument("--checkpoint-dir", default="checkpoints")
    parser.add_argument("--log-dir", default="runs", help="TensorBoard and CSV training logs")
    parser.add_argument("--from-stage", type=int, default=1, choices=range(1, 7),
                        help="skip the stages before this one (their outputs must exist) and run this one again")
    parser.add_argument("--fresh", action="store_true",
                        help="retrain every stage, replacing what earlier runs trained (default: keep what is "
                             "complete and current)")
    parser.add_argument("--nproc", type=positive_int, default=1,
                        help="processes that train the world model together (torchrun, one per GPU or a share "
                             "of the CPU cores each)")
    parser.add_argument("--seed", type=non_negative_int, default=0,
                        help="the seed of every stage: the agent, the recording, the world model, the map, play")
    args = parser.parse_args()
    preset = args.preset or default_preset()
    data_dir, ckpt_dir = Path(args.data_dir), Path(args.checkpoint_dir)

    timings: dict[str, float] = {}
    upstream_ran, previous = False, None
    for name, argv in stage_commands(preset, args.data_dir, args.checkpoint_dir, args.log_dir,
                                     args.seed):
        if int(name[:2]) < args.from_stage:
            previous = stage_result(name, data_dir, ckpt_dir) or previous
            continue
        asked = args.from_stage > 1 and int(name[:2]) == args.from_stage   # --from-stage N: N runs again
        action, extra = plan_stage(name, data_dir, ckpt_dir, args.fresh, upstream_ran or asked, previous)
        previous = stage_result(name, data_dir, ckpt_dir) or previous
        if action == "keep":
            print(f"\n=== {name}: kept {previous} (complete and newer than its input; --fresh or "
                  f"FRESH=1 retrains) ===", flush=True)
            continue
        upstream_ran = True
        print(f"\n=== {name} ({preset}){' ' + ' '.join(extra) if extra else ''} ===", flush=True)
        start = time.monotonic()
        result = subprocess.run(launch([*argv, *extra], args.nproc), cwd=ROOT)
        timings[name] = round(time.monotonic() - start, 1)
        if result.returncode != 0:
            raise UserError(f"stage '{name}' failed (exit {result.returncode}); fix it and re-run with "
                            f"--from-stage {int(name[:2])}")
    summary = summarize(data_dir, ckpt_dir, timings)
    atomic_write_json(paths.pipeline_summary_path(data_dir), summary)
    print_summary(summary)
    page = write_report(data_dir, ckpt_dir, Path(args.log_dir), Path(args.log_dir) / "report")
    print(f"\nresults with plots: {page}")


def print_summary(summary: dict) -> None:
    print("\n=== Neural Breakout: pipeline summary ===")
    for name, seconds in summary["stage_seconds"].items():
        print(f"  {name:<42s} {seconds / 60:6.1f} min")
    print(f"  {'total':<42s} {sum(summary['stage_seconds'].values()) / 60:6.1f} min")
    for section in ("agent", "world_model", "action_to_latent", "control"):
        values = {k: v for k, v in summary[section].items() if isinstance(v, (int, float, str))}
        if values:
            print(f"  {section}: " + ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                                               for k, v in values.items()))


if __name__ == "__main__":
    run_main(main)
