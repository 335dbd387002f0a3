"""Stage 3 at 1 and N processes (torchrun), one configuration after another for equal wall time.

    python bench/bench_distributed.py --data-dir data --minutes 5                  # 1x1, 2x1, 1x2
    python bench/bench_distributed.py --data-dir data --configs 1x1,2x1 --minutes 10

A configuration PxT is P processes of T threads each. Each one trains 03_train_latent_action.py at the
quick preset for --minutes into <out>/<config>/ and runs its held-out evaluation (2 test episodes per
level, rollouts of 30 steps); the table compares
training samples/s (the global batch), updates, and the test measures (one-step PSNR overall and per
skill level, PSNR at rollout steps 1/10/30). Run it on an otherwise idle machine: the configurations
share its cores one after the other, never side by side.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from common import paths  # noqa: E402
from common.cli import positive_float, run_main  # noqa: E402
from common.errors import UserError  # noqa: E402
from common.io import atomic_write_json  # noqa: E402
from run_pipeline import launch  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def parse_config(text: str) -> tuple[int, int]:
    try:
        processes, threads = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise UserError(f"a configuration looks like 2x1 (processes x threads), got {text!r}") from None
    return processes, threads


def command(processes: int, threads: int, data_dir: str, out: Path, minutes: float) -> list[str]:
    stage = ["03_train_latent_action.py", "--preset", "quick", "--data-dir", data_dir, "--checkpoint-dir", str(out),
             "--log-dir", str(out / "runs"), "--time-budget", str(minutes), "--threads", str(threads), "--fresh",
             "--eval-episodes", "2", "--rollout-steps", "30"]   # a shorter held-out evaluation, the same for all
    return launch(stage, processes)   # under torchrun as run_pipeline.py --nproc starts it


def row(name: str, metrics: dict) -> dict:
    training = metrics["training"]
    return {"config": name, "world_size": training.get("world_size", 1), "threads": training["threads"],
            "updates": training["steps"], "minutes": training["minutes"], "samples_per_s": training["samples_per_s"],
            "one_step_psnr": metrics["one_step"]["psnr"],
            "by_level": {level: {key: r[key] for key in ("one_step_psnr", "psnr_at_steps_1_10_30")}
                         for level, r in metrics["by_level"].items()}}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-dir", default="data", help="a quick-preset recording (Stage 02)")
    p.add_argument("--configs", default="1x1,2x1,1x2", help="comma-separated PROCESSESxTHREADS")
    p.add_argument("--minutes", type=positive_float, default=5.0, help="training minutes per configuration")
    p.add_argument("--out", default="runs/bench_distributed")
    args = p.parse_args()
    if not paths.summary_path(args.data_dir).exists():
        raise UserError(f"{args.data_dir} holds no recording: run 02_record_videos.py first")
    rows = []
    for name in args.configs.split(","):
        processes, threads = parse_config(name)
        out = Path(args.out) / name
        print(f"=== {name}: {processes} process(es) x {threads} thread(s), {args.minutes:g} min ===", flush=True)
        result = subprocess.run(command(processes, threads, args.data_dir, out, args.minutes), cwd=ROOT)
        if result.returncode != 0:
            raise UserError(f"configuration {name} failed (exit {result.returncode})")
        rows.append(row(name, json.loads(paths.latent_metrics_path(out).read_text())))
    base = rows[0]["samples_per_s"]
    print("\n| config | updates | samples/s | vs first | one-step PSNR | " +
          " | ".join(f"{level} PSNR 1/10/30" for level in rows[0]["by_level"]) + " |")
    for r in rows:
        steps = " | ".join("/".join("-" if v is None else f"{v:.1f}" for v in level["psnr_at_steps_1_10_30"])
                           for level in r["by_level"].values())
        print(f"| {r['config']} | {r['updates']} | {r['samples_per_s']:.1f} | {r['samples_per_s'] / base:.2f}x | "
              f"{r['one_step_psnr']:.2f} | {steps} |")
    atomic_write_json(Path(args.out) / "results.json", {"minutes": args.minutes, "rows": rows})
    print(f"wrote {Path(args.out) / 'results.json'}")


if __name__ == "__main__":
    run_main(main)
