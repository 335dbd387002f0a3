"""Benchmark the DQN learner on this machine: update cost and agent steps/s.

    python bench/bench_dqn.py                      # ~3 minutes on a 2-core CPU
    python bench/bench_dqn.py --compile            # also torch.compile (slow to compile)

Part 1 times one Double-DQN update (replay sampling included) for several variants, round-robin,
so that every variant sees the same machine load; it reports the median over rounds.
Part 2 runs the real acting+learning loop (common/dqn_training.py's Trainer) for a fixed number of agent
steps at CleanRL's setting (Nature CNN, batch 32, 1 update / 4 steps, 1 env) with 4 and 8 frames,
with and without overlapping the emulator with the updates, and at the quick preset.
"""
from __future__ import annotations

import argparse
import functools
import importlib.util
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from common.cli import run_main  # noqa: E402
from common.dqn_training import Trainer  # noqa: E402


def load_train_module():
    spec = importlib.util.spec_from_file_location("train_dqn", ROOT / "01_train_dqn.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


CLEANRL = ["--conv-widths", "32", "64", "64", "--fc-width", "512", "--no-dueling", "--double", "--no-per",
           "--batch-size", "32", "--n-step", "1", "--updates-per-step", "0.25", "--num-envs", "1"]


def make_trainer(script, flags: list[str], tmp: str, threads: int):
    args = script.parse_args(["--preset", "quick", "--learner", "dqn", "--checkpoint-dir", tmp,
                              "--threads", str(threads), "--learning-starts", "0", *flags])
    return Trainer(args)


def fill_random(trainer, steps: int) -> tuple:
    from common.atari import make_vector_env

    env = make_vector_env(trainer.env_config, trainer.args.num_envs, training=True)
    obs, info = env.reset(seed=0)
    trainer.last_lives = info["lives"].copy()
    trainer.game_returns = np.zeros(trainer.args.num_envs)
    obs, lives = trainer.fill_replay(env, obs, steps, use_policy=False)
    return env, obs, lives


def time_updates(trainer, count: int) -> float:
    start = time.perf_counter()
    for _ in range(count):
        trainer.learn()
    return (time.perf_counter() - start) / count * 1000


def bench_updates(script, variants: dict, rounds: int, count: int, tmp: str) -> dict:
    trainers = {}
    for name, (flags, threads) in variants.items():
        torch.set_num_threads(threads)
        trainer = make_trainer(script, flags, f"{tmp}/{name}", threads)
        env, _, _ = fill_random(trainer, 2_000)
        env.close()
        trainer.learn()  # warm-up (oneDNN kernels, torch.compile)
        trainers[name] = (trainer, threads)
    times = {name: [] for name in variants}
    for _ in range(rounds):
        for name, (trainer, threads) in trainers.items():
            torch.set_num_threads(threads)
            times[name].append(time_updates(trainer, count))
    return {name: statistics.median(values) for name, values in times.items()}


def bench_loop(script, flags: list[str], steps: int, threads: int, tmp: str) -> float:
    """Agent steps/s of the real loop (act, step the emulator, store, learn) after a warm-up."""
    torch.set_num_threads(threads)
    trainer = make_trainer(script, flags, tmp, threads)
    env, obs, lives = fill_random(trainer, 2_000)
    a = trainer.args
    credit, done, start, warmup = 0.0, 0, None, min(64, steps // 2)
    try:
        while done < steps:
            if start is None and done >= warmup:  # steady state: start the clock after a short warm-up
                start, warmup = time.perf_counter(), done
            actions = trainer.act(obs, 0.1, random_only=False)
            credit += a.num_envs * a.updates_per_step
            n, credit = int(credit), credit - int(credit)
            overlap = functools.partial(trainer.learn_many, n) if n else None
            obs, lives = trainer.env_step(env, actions, lives, overlap=overlap)
            done += a.num_envs
    finally:
        env.close()
    return (done - warmup) / (time.perf_counter() - start)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=3, help="round-robin rounds for the update timings")
    p.add_argument("--updates", type=int, default=10, help="updates per variant per round")
    p.add_argument("--loop-steps", type=int, default=600, help="agent steps per loop measurement")
    p.add_argument("--compile", action="store_true", help="also time torch.compile variants")
    p.add_argument("--out", default="runs/bench_dqn.json")
    args = p.parse_args()
    script = load_train_module()
    tmp = tempfile.mkdtemp(prefix="bench_dqn_")
    variants = {
        "cleanrl 4f, 1 thread": (CLEANRL + ["--stack", "4"], 1),
        "cleanrl 4f, 2 threads": (CLEANRL + ["--stack", "4"], 2),
        "cleanrl 4f, channels-last, 1 thread": (CLEANRL + ["--stack", "4", "--channels-last"], 1),
        "cleanrl 8f, 1 thread": (CLEANRL + ["--stack", "8"], 1),
        "cleanrl 8f, 2 threads": (CLEANRL + ["--stack", "8"], 2),
        "quick preset (16-32-32+256, 8f, dueling, PER, 3-step), 1 thread": ([], 1),
    }
    if args.compile:
        variants["cleanrl 4f, torch.compile, 1 thread"] = (CLEANRL + ["--stack", "4", "--compile"], 1)
    print(f"update timings: {args.rounds} rounds x {args.updates} updates per variant (median ms/update)")
    update_ms = bench_updates(script, variants, args.rounds, args.updates, tmp)
    for name, ms in update_ms.items():
        print(f"  {name:70s} {ms:7.1f} ms")
    loops = {
        "cleanrl 4f, sequential": (CLEANRL + ["--stack", "4", "--no-overlap"], 1),
        "cleanrl 4f, overlapped": (CLEANRL + ["--stack", "4", "--overlap"], 1),
        "cleanrl 8f, overlapped": (CLEANRL + ["--stack", "8", "--overlap"], 1),
        "quick preset (8 envs, 1 update / 8 steps), overlapped": ([], 1),
    }
    print(f"agent steps/s of the acting+learning loop ({args.loop_steps} steps each)")
    loop_sps = {}
    for name, (flags, threads) in loops.items():
        loop_sps[name] = bench_loop(script, flags, args.loop_steps, threads, f"{tmp}/{name.replace(' ', '_')}")
        print(f"  {name:70s} {loop_sps[name]:7.1f} steps/s")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"update_ms": update_ms, "loop_steps_per_s": loop_sps,
                                          "torch": torch.__version__, "cpus": os.cpu_count()}, indent=1))
    print(f"-> {args.out}")


if __name__ == "__main__":
    run_main(main)
