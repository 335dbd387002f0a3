"""Compare the ball committer's rules on the game measures (common/ball_sampler.py), each added to the ones
before: the committed ball alone (the expected count), the ball in flight kept, the serve drawn for sure,
the ball at the paddle kept when the random event sends it back (with the paddle within reach), the
paddle drawn whole where the decoder dropped it, the serve at the places the recorded serves landed, a
broken brick kept broken; on one world model, the same emulator starts and the same seeds.

    .venv/bin/python bench/compare_ball_commit.py --checkpoint-dir checkpoints --starts 100
    .venv/bin/python bench/compare_ball_commit.py --skip 4     # only the rows with the first 4 rules and more
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from common.cli import non_negative_int, positive_int, run_main  # noqa: E402
from common.game_eval import evaluate_game, game_headline, make_starts  # noqa: E402
from common.neural_game import NeuralBreakout  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint-dir", default="checkpoints", help="where stages 3 and 5 saved their models")
    p.add_argument("--starts", type=positive_int, default=100, help="emulator states of each kind")
    p.add_argument("--threads", type=positive_int, default=1)
    p.add_argument("--skip", type=non_negative_int, default=0, help="leave out the first SKIP rows (each takes minutes)")
    p.add_argument("--out", default=None, help="also write the measures of every row to this JSON file")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    game = NeuralBreakout.load(args.checkpoint_dir, seed=0)
    starts = make_starts(game.context_frames, args.starts, seed=0)
    serve_events, serve_places = game.serve_events, game.serve_places
    rules = ("ball in flight kept", "serve for sure", "ball at the paddle kept", "paddle kept whole",
             "serve at the recorded places", "broken bricks stay broken")
    results = {}
    for added in range(min(args.skip, len(rules)), len(rules) + 1):   # row k: the first k rules on
        on = set(rules[:added])
        label = f"+ {rules[added - 1]}" if added else "committed ball"
        game.keep_ball_in_flight = "ball in flight kept" in on
        game.serve_events = serve_events if "serve for sure" in on else serve_events[:0]
        game.keep_ball_at_paddle = "ball at the paddle kept" in on
        game.keep_paddle = "paddle kept whole" in on
        game.serve_places = serve_places if "serve at the recorded places" in on else serve_places[:0]
        game.keep_wall = "broken bricks stay broken" in on
        game.generator.manual_seed(0)
        measures = evaluate_game(game, starts)
        teacher = measures["ball_in_play"]["teacher_forced"]
        results[label] = {**game_headline(measures),
                          "ball_kept_teacher_forced": teacher and teacher["ball_kept_when_emulator_ball"],
                          "long_play": measures["long_play"]["total"]}
    keys = [k for k in next(iter(results.values())) if k != "long_play"]
    print(f"| measure | {' | '.join(results)} |\n|---|" + "---|" * len(results))
    for key in keys:
        values = [results[label][key] for label in results]
        print(f"| {key} | " + " | ".join("n/a" if v is None else f"{v:.3f}" if isinstance(v, float) else str(v)
                                        for v in values) + " |")
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    run_main(main)
