"""Stage 6: play Breakout with the keyboard inside the learned world model (no emulator in the loop).

Modes:
  (default)   a pygame window: SPACE fire, LEFT/RIGHT move, . no-op (also when nothing is held),
              R restart from a new real start, P pause, ESC/Q quit
  --compare   the real emulator beside the neural game, same keys, same start frames
  --headless  no display: a policy (random, follow, or keys:FILE) plays --steps steps into a GIF and an MP4
  --evaluate  the control measures on the recorded test episodes, the game measures beside the
              real emulator (serve, ball kept, long play) and the play speed
              -> checkpoints/latent_action/control_metrics.json

Start frames are real frames of a recorded test episode, so playing needs no ROM; --compare does
(it replays the episode's actions from its seed to reach the same start).
"""
from __future__ import annotations

import argparse
import os

os.environ.setdefault("PYGAME_HIDE_SUPPORT_PROMPT", "1")
# Idle OpenMP threads sleep instead of spinning, which a busy machine punishes (part5.md, bench/bench_play.py).
# Must be set before torch loads.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np
import torch

from common.cli import (add_preset_arg, apply_preset, non_negative_float, non_negative_int, pick_device,
                        positive_float, positive_int, run_main, set_threads)
from common.control_eval import evaluate_control, measure_play_speed
from common.dataset import level_files, load_episodes
from common.errors import UserError
from common.game_eval import evaluate_game, game_headline, percent, print_game_measures
from common.io import atomic_write_json
from common.neural_game import NeuralBreakout
from common.paths import control_metrics_path
from common.play import make_policy, pick_start, run_headless, run_window
from common.plots import plot_control_by_step
from common.pretrained import playable_root

PRESETS = {  # budgets of --evaluate only; playing has no budget
    "smoke": {"max_windows": 4, "speed_steps": 20, "game_starts": 2, "games": 1, "game_steps": 20},
    "quick": {"max_windows": 32, "speed_steps": 300, "game_starts": 100, "games": 6, "game_steps": 400},
    "full": {"max_windows": 256, "speed_steps": 1000, "game_starts": 200, "games": 16, "game_steps": 400},
}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", default="data", help="recorded episodes (start frames) and outputs")
    parser.add_argument("--checkpoint-dir", default=None,
                        help="checkpoint root (stages 03 and 05; default checkpoints, or the shipped weights in "
                             "pretrained/ while checkpoints holds no trained game)")
    parser.add_argument("--device", default="cpu", help="cpu (default: fastest at batch 1 here), cuda, mps, auto")
    parser.add_argument("--threads", type=positive_int, default=1,
                        help="torch threads for the model; 1 is the fastest at batch 1 on a CPU (part5.md)")
    parser.add_argument("--seed", type=int, default=0, help="start-episode choice, random policy, sampling")
    parser.add_argument("--temperature", type=non_negative_float, default=0.0,
                        help="latent action sampling temperature: 0 = most likely latent (deterministic)")
    parser.add_argument("--event-temperature", type=non_negative_float, default=1.0,
                        help="random events (where a ball is served, which way an uncertain bounce goes: the world "
                             "model's event latent and the ball committed as one object): 1 = drawn as the model "
                             "learned them, 0 = always the most likely outcome")
    parser.add_argument("--fps", type=positive_float, default=15.0,
                        help="fixed play rate; 15 is real time at frame skip 4")
    parser.add_argument("--scale", type=positive_int, default=3, help="window pixels per frame pixel")
    parser.add_argument("--random-start", action="store_true",
                        help="start at a random point of the episode instead of its beginning")
    parser.add_argument("--compare", action="store_true", help="show the real emulator beside the neural game")
    parser.add_argument("--max-steps", type=non_negative_int, default=0,
                        help="window mode: quit after this many steps (0 = play until ESC/Q)")
    parser.add_argument("--headless", action="store_true", help="no window: write a GIF and an MP4")
    parser.add_argument("--steps", type=positive_int, default=200, help="headless: steps to play")
    parser.add_argument("--policy", default="random", help="headless: random; follow (the paddle follows the ball "
                        "it sees in the neural frames, FIRE when there is none, 15%% random actions); or keys:FILE "
                        "(action names or 0-3, whitespace-separated, NAME*N repeats; NOOP after the file ends)")
    parser.add_argument("--output", default=None,
                        help="headless GIF path (default DATA_DIR/neural_<policy>_game.gif; an MP4 beside it)")
    parser.add_argument("--evaluate", action="store_true", help="measure control and play speed, write "
                        "CHECKPOINT_DIR/latent_action/control_metrics.json")
    add_preset_arg(parser)
    parser.add_argument("--eval-threads", type=non_negative_int, default=0,
                        help="evaluate: torch threads for the batched rollouts (0 = every core); the play speed "
                             "is measured at --threads")
    parser.add_argument("--control-steps", type=positive_int, default=30, help="evaluate: rollout steps scored")
    parser.add_argument("--drift-steps", type=positive_int, default=50, help="evaluate: PSNR by step up to this")
    parser.add_argument("--max-windows", type=positive_int, default=None, help="evaluate: rollout start points per skill level")
    parser.add_argument("--speed-steps", type=positive_int, default=None, help="evaluate: timed steps at batch 1")
    parser.add_argument("--game-starts", type=positive_int, default=None,
                        help="evaluate: emulator start states of each kind (no ball at a game's start, no ball "
                             "after a lost life, ball in play) for the game measures")
    parser.add_argument("--games", type=positive_int, default=None, help="evaluate: long games, model and emulator")
    parser.add_argument("--game-steps", type=positive_int, default=None, help="evaluate: steps of each long game")
    return apply_preset(parser.parse_args(), PRESETS)


# ---------------------------------------------------------------- start frames from the recording
def start_episodes(data_dir: str, k: int) -> tuple[list, str]:
    """Test episodes long enough to start from (falling back to val, then train, when there are none).

    The episode list is read without checking every PNG (that takes seconds on a large data set);
    read_frames reports any frame it cannot read.
    """
    episodes = load_episodes(data_dir)
    for split in ("test", "val", "train"):
        chosen = [ep for ep in episodes if ep.split == split and ep.num_frames > k + 1]
        if chosen:
            return chosen, split
    raise UserError(f"no recorded episode in {data_dir} has more than {k + 1} frames: re-run 02_record_videos.py")


# ---------------------------------------------------------------- evaluation
def run_evaluate(args: argparse.Namespace, game: NeuralBreakout, episodes: list, split: str,
                 rng: np.random.Generator) -> None:
    eval_threads = args.eval_threads or os.cpu_count() or 1
    torch.set_num_threads(eval_threads)  # the rollouts run many games in a batch
    try:
        control = evaluate_control(game, episodes, control_steps=args.control_steps,
                                   drift_steps=args.drift_steps, max_windows=args.max_windows,
                                   event_temperature=args.event_temperature)
    except ValueError as err:
        raise UserError(f"{err}: record longer episodes with 02_record_videos.py or lower --drift-steps") from None
    game_measures = evaluate_game(game, n_starts=max(args.game_starts, args.games), games=args.games,
                                  game_steps=args.game_steps, window_steps=args.control_steps, seed=args.seed,
                                  event_temperature=args.event_temperature)
    _, _, start = pick_start(episodes, game.context_frames, rng, random_start=False)
    speeds = {}
    for threads in sorted({1, os.cpu_count() or 1, args.threads}):
        torch.set_num_threads(threads)
        speeds[f"threads_{threads}"] = measure_play_speed(game, start, steps=args.speed_steps, seed=args.seed)
    torch.set_num_threads(args.threads)
    speed = speeds[f"threads_{args.threads}"]
    ours, still = control["action_to_latent"], control["copy_last_frame"]
    metrics = {  # top-level scalars are the headline (run_pipeline prints them); details below
        "paddle_within_3px": ours["paddle_within_3px"],
        "ball_within_4px": ours["ball_within_4px"],
        "paddle_within_3px_when_real_paddle_moved": ours["paddle_within_3px_when_real_paddle_moved"],
        "ball_within_4px_when_real_ball_visible": ours["ball_within_4px_when_real_ball_visible"],
        "copy_last_frame_paddle_within_3px": still["paddle_within_3px"],
        "copy_last_frame_ball_within_4px": still["ball_within_4px"],
        "psnr_db_step_1": ours["psnr_db_by_step"][0],
        "psnr_db_step_last": ours["psnr_db_by_step"][-1],
        "play_latency_ms_p50": speed["latency_ms_p50"],
        "play_latency_ms_p95": speed["latency_ms_p95"],
        "play_fps": speed["fps"],
        "play_cpu_ms_per_step": speed["cpu_ms_per_step_p50"],
        "play_load_average": speed["load_average_1min"],
        **game_headline(game_measures),
        "split": split,
        "play_threads": args.threads,
        "game": game_measures,
        "details": {**control, "speed_by_threads": speeds, "preset": args.preset, "eval_threads": eval_threads},
    }
    if "inferred_latents" in control:
        metrics["inferred_latents_paddle_within_3px"] = control["inferred_latents"]["paddle_within_3px"]
        metrics["inferred_latents_ball_within_4px"] = control["inferred_latents"]["ball_within_4px"]
    path = control_metrics_path(args.checkpoint_dir)
    atomic_write_json(path, metrics)
    plot_control_by_step(metrics, path.with_name("control_by_step.png"))
    print(f"control over {control['windows']} rollouts of {args.control_steps} steps ({split} episodes): "
          f"paddle within 3 px {ours['paddle_within_3px']:.1%} (goal 95%; copy-last-frame "
          f"{still['paddle_within_3px']:.1%}), ball within 4 px {ours['ball_within_4px']:.1%} (goal 80%; "
          f"copy-last-frame {still['ball_within_4px']:.1%})")
    print(f"on the steps where the real paddle had moved > 3 px from its start ({control['real_paddle_moved_share']:.0%}): "
          f"paddle {percent(ours['paddle_within_3px_when_real_paddle_moved'])}; where the real ball is visible "
          f"({control['real_ball_visible_share']:.0%}): ball {percent(ours['ball_within_4px_when_real_ball_visible'])}")
    print(f"PSNR step 1 {ours['psnr_db_by_step'][0]:.2f} dB, step {len(ours['psnr_db_by_step'])} "
          f"{ours['psnr_db_by_step'][-1]:.2f} dB")
    for level, row in ours["by_level"].items():
        print(f"  {level}: {row['windows']} rollouts, paddle {row['paddle_within_3px']:.1%}, ball within 4 px "
              f"{row['ball_within_4px']:.1%}, ball kept {percent(row['ball_kept'])}, PSNR at steps 1/10/30 "
              + " / ".join(f"{v:.1f}" for v in row["psnr_db_at_steps_1_10_30"]) + " dB")
    print_game_measures(game_measures)
    for name, measured in speeds.items():
        print(f"play ({name.replace('_', ' ')}): p50 {measured['latency_ms_p50']:.1f} ms, "
              f"p95 {measured['latency_ms_p95']:.1f} ms, {measured['fps']:.0f} fps; CPU time per step "
              f"{measured['cpu_ms_per_step_p50']:.1f} ms (load average {measured['load_average_1min']:.1f})")
    print(f"wrote {path}")


def main() -> None:
    args = parse_args()
    set_threads(args.threads)
    if args.headless and args.evaluate:
        raise UserError("choose one of --headless and --evaluate")
    policy = make_policy(args.policy, args.seed) if args.headless else None
    explicit = args.checkpoint_dir is not None
    args.checkpoint_dir = playable_root(args.checkpoint_dir or "checkpoints", explicit or args.evaluate)
    game = NeuralBreakout.load(args.checkpoint_dir, device=str(pick_device(args.device)), seed=args.seed)
    if not args.evaluate and not level_files(args.data_dir):
        print(f"no recorded episodes in {args.data_dir}: starting from the emulator's own game start")
        episodes, split = [], "emulator"
    else:
        episodes, split = start_episodes(args.data_dir, game.context_frames)
        if split != "test":
            print(f"note: no test episodes long enough; starting from {split} episodes")
    rng = np.random.default_rng(args.seed)
    if args.evaluate:
        run_evaluate(args, game, episodes, split, rng)
    elif args.headless:
        run_headless(args, game, episodes, rng, policy)
    else:
        run_window(args, game, episodes, rng)


if __name__ == "__main__":
    run_main(main)
