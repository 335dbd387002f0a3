"""Ball kept and ball within 4 px over the same emulator windows, once per draw seed of the random events.

`06 --evaluate` draws the random events once, so a change to the play path is judged there by one draw
(the windows' ball kept moved by 2-3 points between draws of the same weights). This replays its 100
ball-in-play windows of 30 steps (the same starts and actions) with the game's generator seeded 0, 1,
..., and prints each draw's figures and their mean.

    .venv/bin/python bench/ball_kept_seeds.py --checkpoint-dir pretrained --seeds 3
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from common.cli import positive_int, run_main  # noqa: E402
from common.game_eval import Emulator, emulator_windows, make_starts, neural_windows, window_scores  # noqa: E402
from common.neural_game import NeuralBreakout  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint-dir", default="checkpoints", help="where stages 3 and 5 saved their models")
    p.add_argument("--seeds", type=positive_int, default=3, help="draw seeds 0 .. seeds-1")
    p.add_argument("--starts", type=positive_int, default=100, help="ball-in-play windows (06 --evaluate: 100)")
    p.add_argument("--threads", type=positive_int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    game = NeuralBreakout.load(args.checkpoint_dir, seed=0)
    starts = make_starts(game.context_frames, args.starts, seed=0)
    windows = emulator_windows(Emulator(), starts["ball_in_play"], 30, seed=0)
    kept, near = [], []
    for seed in range(args.seeds):
        game.generator.manual_seed(seed)
        scores = window_scores(neural_windows(game, windows), windows)
        kept.append(scores["ball_kept_when_emulator_ball"])
        near.append(scores["ball_within_4px_before_first_event"])
        print(f"draw seed {seed}: ball kept {kept[-1]:.1%}, within 4 px before the first event {near[-1]:.1%}",
              flush=True)
    print(f"mean of {args.seeds}: ball kept {np.mean(kept):.1%}, within 4 px before the first event {np.mean(near):.1%}")


if __name__ == "__main__":
    run_main(main)
