"""How far from the paddle's centre does the real ball come back? (the reach of common/ball_sampler.py)

Plays the emulator with the ball-following policy and many random keys, and at every step on which a
falling ball at the paddle's height (AT_PADDLE and below) goes back up, reads the x distance between the
ball's centre and the paddle's; prints how many returns and their largest distance beside PADDLE_REACH.

    .venv/bin/python bench/paddle_returns.py --steps 30000
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from common.ball_sampler import PADDLE_REACH  # noqa: E402
from common.cli import positive_int, run_main  # noqa: E402
from common.detectors import ball_xy, paddle_x  # noqa: E402
from common.game_eval import Emulator, follow_ball, paddle_returns  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=positive_int, default=30_000, help="emulator steps to play")
    p.add_argument("--random-share", type=float, default=0.3, help="share of uniformly random keys")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    rng = np.random.default_rng(args.seed)
    emulator = Emulator()
    emulator.new_game(rng)
    balls, paddles = [ball_xy(emulator.frames[-1])], [paddle_x(emulator.frames[-1])]
    for _ in tqdm(range(args.steps), desc="emulator", unit="step"):
        if emulator.over:                           # a gap between games: no return spans it
            emulator.new_game(rng)
            balls.append(None)
            paddles.append(None)
        frame = emulator.step(follow_ball(emulator.frames[-1], rng, args.random_share))
        balls.append(ball_xy(frame))
        paddles.append(paddle_x(frame))
    distances = [d for d in paddle_returns(balls, paddles) if np.isfinite(d)]
    if not distances:
        print("no returns off the paddle: play more --steps")
        return
    print(f"{len(distances)} returns off the paddle; ball centre to paddle centre in x: median "
          f"{np.median(distances):.1f} px, largest {max(distances):.1f} px (PADDLE_REACH {PADDLE_REACH} px)")


if __name__ == "__main__":
    run_main(main)
