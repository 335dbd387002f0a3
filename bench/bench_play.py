"""Benchmark: how fast does the neural game step at batch 1 on this CPU, and where does the time go?

Times NeuralBreakout.step (what the window calls) with 1 and 2 torch threads, with and without
channels-last world-model weights (NeuralBreakout uses channels-last), and splits one step into its
parts (action->latent, world model). Wall-clock times on a shared machine include waiting for a core;
the process CPU time per step does not.
torch.compile was tried on the decoder (inductor, 1 thread): ~2 minutes to compile for no gain, so
it is not used.

    .venv/bin/python bench/bench_play.py --checkpoint-dir checkpoints --data-dir data
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as 06 does; run with OMP_WAIT_POLICY=ACTIVE to compare

import numpy as np  # noqa: E402
import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from common.cli import positive_int, run_main  # noqa: E402
from common.control_eval import measure_play_speed  # noqa: E402
from common.neural_game import NeuralBreakout  # noqa: E402


def start_frames(data_dir: str, k: int) -> np.ndarray:
    from common.dataset import read_frames, require_dataset

    episodes = [ep for ep in require_dataset(data_dir) if ep.num_frames > k + 1]
    return read_frames(episodes[0], 0, k)


def timed(fn, repeats: int) -> float:
    """Median milliseconds of fn() over `repeats` calls after 3 warm-up calls."""
    for _ in range(3):
        fn()
    times = []
    for _ in range(repeats):
        begin = time.perf_counter()
        fn()
        times.append(time.perf_counter() - begin)
    return float(np.median(times) * 1000)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint-dir", default="checkpoints")
    parser.add_argument("--data-dir", default="data")
    parser.add_argument("--steps", type=positive_int, default=200, help="timed steps per setting")
    args = parser.parse_args()

    game = NeuralBreakout.load(args.checkpoint_dir, device="cpu")
    frames = start_frames(args.data_dir, game.context_frames)
    print(f"context_frames={game.context_frames}, torch {torch.__version__}, "
          f"latent model {sum(p.numel() for p in game.latent_model.parameters()) / 1e6:.2f}M parameters")

    for threads in (1, 2):
        torch.set_num_threads(threads)
        for channels_last in (False, True):
            game.latent_model.to(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
            speed = measure_play_speed(game, frames, steps=args.steps)
            print(f"threads={threads} channels_last={channels_last!s:<5}  p50 {speed['latency_ms_p50']:6.2f} ms  "
                  f"p95 {speed['latency_ms_p95']:6.2f} ms  {speed['fps']:6.1f} fps  "
                  f"CPU {speed['cpu_ms_per_step_p50']:5.2f} ms/step  (load average {speed['load_average_1min']:.1f})")
    torch.set_num_threads(1)
    game.latent_model.to(memory_format=torch.channels_last)  # what NeuralBreakout uses

    game.reset(frames)
    past, action = game.frames, torch.tensor([2])
    codes = game.latents(past, action)
    parts = {
        "action->latent": timed(lambda: game.latents(past, action), args.steps),
        "world model, RGB in": timed(lambda: game.predict(past, codes), args.steps),
        "whole step": timed(lambda: game.step(2), args.steps),
    }
    for name, ms in parts.items():
        print(f"{name:<20s} {ms:6.2f} ms (median, 1 thread)")


if __name__ == "__main__":
    run_main(main)
