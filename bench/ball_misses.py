"""Where the neural ball leaves the real one: the steps of the game measures' 30-step windows before the
emulator's first random event, each put in one class (both show no ball, one of them shows none, the
two balls more than 4 px apart on the window's first such step or after an earlier one), and every first
miss listed with its step and both balls' centres. The windows are the ones `06 --evaluate` plays.

    .venv/bin/python bench/ball_misses.py --checkpoint-dir checkpoints --starts 100 --seed 0
"""
from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from common.cli import positive_int, run_main  # noqa: E402
from common.control_eval import BALL_TOLERANCE_PX  # noqa: E402
from common.detectors import ball_xy  # noqa: E402
from common.game_eval import Emulator, emulator_windows, make_starts, neural_windows, window_scores  # noqa: E402
from common.neural_game import NeuralBreakout  # noqa: E402


def miss_class(neural: tuple[float, float] | None, real: tuple[float, float] | None, after_miss: bool) -> str:
    """The class of one step from the two balls' centres (ball_xy)."""
    if neural is None or real is None:
        return {(True, True): "no ball in either", (True, False): "no neural ball",
                (False, True): "no emulator ball"}[(neural is None, real is None)]
    if np.hypot(neural[0] - real[0], neural[1] - real[1]) <= BALL_TOLERANCE_PX:
        return "within 4 px"
    return "apart, after an earlier miss" if after_miss else "apart, first miss"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint-dir", default="checkpoints", help="where stages 3 and 5 saved their models")
    p.add_argument("--starts", type=positive_int, default=100, help="windows (emulator states with a ball in play)")
    p.add_argument("--seed", type=int, default=0, help="the game's draw seed")
    p.add_argument("--threads", type=positive_int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    game = NeuralBreakout.load(args.checkpoint_dir, seed=args.seed)
    windows = emulator_windows(Emulator(), make_starts(game.context_frames, args.starts, seed=0)["ball_in_play"], 30)
    generated = neural_windows(game, windows)
    print(json.dumps(window_scores(generated, windows)))
    counts, first_misses = Counter(), []
    for frames, window in zip(generated, windows):
        after_miss = False
        for step in range(min(window.first_event - 1, len(window.frames))):
            neural, real = ball_xy(frames[step]), ball_xy(window.frames[step])
            kind = miss_class(neural, real, after_miss)
            counts[kind] += 1
            if kind == "apart, first miss":
                first_misses.append((step + 1, tuple(round(v) for v in neural), tuple(round(v) for v in real)))
            after_miss = kind not in ("within 4 px", "no ball in either")
    total = sum(counts.values())
    for kind, count in counts.most_common():
        print(f"{kind:30s} {count:5d} {count / total:6.1%}")
    print("first misses (step, neural x, y, emulator x, y):", first_misses)


if __name__ == "__main__":
    run_main(main)
