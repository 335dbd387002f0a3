"""Analysis: does the latent action code the serve, or does a serve share the codes of a plain FIRE?

The neural game can only serve a new ball if some latent code means "a ball comes now". This
counts the serves in the recorded data (a ball at 100 < y < 180 in a frame whose two previous frames
show none) and prints where the ball appears, and the latent codes Stage 4 gave those transitions
beside the codes of FIRE without a serve.
Reads data/actions/action_latent_pairs.json (run 04 first) and Stage 3's frame cache.

    .venv/bin/python bench/serve_codes.py --data-dir data
"""
from __future__ import annotations

import argparse
import sys
from collections import Counter
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from common import paths  # noqa: E402
from common.cli import run_main  # noqa: E402
from common.detectors import ball_xy  # noqa: E402
from common.frame_cache import load_frame_cache  # noqa: E402
from common.io import read_json  # noqa: E402

FIRE = 1
SERVE_ROWS = (100, 180)   # a served ball appears mid-screen; below 180 it could be one leaving the paddle


def serve_transitions(balls: list[tuple[float, float] | None]) -> list[int]:
    """Indices i of the transitions frame i -> i+1 that serve: no ball in frames i-1 and i, one in i+1."""
    return [i for i in range(1, len(balls) - 1)
            if balls[i - 1] is None and balls[i] is None and balls[i + 1] is not None
            and SERVE_ROWS[0] < balls[i + 1][1] < SERVE_ROWS[1]]


def code_table(counts: Counter, total: int) -> str:
    return ", ".join(f"{code}: {n} ({100 * n / total:.0f}%)" for code, n in counts.most_common(6))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default="data", help="Stage 2 data set with Stage 4's pairs in actions/")
    args = parser.parse_args()
    pairs = read_json(paths.pairs_path(Path(args.data_dir)),
                      "04_collect_action_latent_pairs.py")["pairs"]
    codes = {(p["level"], p["episode"], p["frame"]): tuple(p["latent_code"]) for p in pairs}
    cache = load_frame_cache(args.data_dir)
    palette = np.array(cache.palette, dtype=np.uint8)
    serve_codes, fire_codes, serve_actions, serve_places = Counter(), Counter(), Counter(), Counter()
    for episode in cache.episodes:
        balls = [ball_xy(palette[frame]) for frame in cache.episode_frames(episode)]
        serves = set(serve_transitions(balls))
        serve_places.update((round(balls[i + 1][0]), round(balls[i + 1][1])) for i in serves)
        for i, action in enumerate(episode.actions):
            code = codes.get((episode.level, episode.index, i))
            if code is None:
                continue
            if i in serves:
                serve_codes[code] += 1
                serve_actions[action] += 1
            elif action == FIRE:
                fire_codes[code] += 1
    serves, fires = sum(serve_codes.values()), sum(fire_codes.values())
    print(f"{serves} serves (by the action that made them: {dict(serve_actions)}); {fires} FIRE without a serve")
    if serves:
        print("where the ball appears (x, y):", ", ".join(f"{place}: {n}" for place, n in serve_places.most_common(8)))
        print(f"serve codes:            {code_table(serve_codes, serves)}")
        print(f"FIRE-no-serve codes:    {code_table(fire_codes, fires)}")
        top = [code for code, _ in fire_codes.most_common(2)]
        print(f"on FIRE's two most common codes {top}: {sum(serve_codes[c] for c in top)} of {serves} serves, "
              f"{sum(fire_codes[c] for c in top)} of {fires} plain FIREs")


if __name__ == "__main__":
    run_main(main)
