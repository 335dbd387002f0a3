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
import io
import os
import time
from pathlib import Path
from typing import Callable

os.environ.setdefault("PYGAME_HIDE_SUPPORT_PROMPT", "1")
# Idle OpenMP threads sleep instead of spinning: on a busy 2-core machine spinning threads made a
# 2-thread step 6x slower (165 ms vs 28 ms p50, bench/bench_play.py). Must be set before torch loads.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import cv2
import imageio.v2 as imageio
import numpy as np
import pygame
import torch
from PIL import Image
from tqdm import tqdm

from common.cli import (add_preset_arg, apply_preset, non_negative_float, non_negative_int, pick_device,
                        positive_float, positive_int, run_main, set_threads)
from common.control_eval import evaluate_control, measure_play_speed
from common.dataset import (ACTION_NAMES, FIRE, LEFT, NOOP, RIGHT, actions_path, load_episodes, read_frames,
                            read_level)
from common.errors import UserError
from common.game_eval import evaluate_game, follow_ball
from common.io import atomic_write_bytes, atomic_write_json
from common.neural_game import NeuralBreakout
from common.paths import control_metrics_path, neural_game_gif
from common.recorder import make_env

HUD_HEIGHT = 14  # px under the 210x160 frame in files; 210 + 14 = 224 keeps the MP4 16-aligned
PRESETS = {  # budgets of --evaluate only; playing has no budget
    "smoke": {"max_windows": 4, "speed_steps": 20, "game_starts": 2, "games": 1, "game_steps": 20},
    "quick": {"max_windows": 64, "speed_steps": 300, "game_starts": 100, "games": 6, "game_steps": 400},
    "full": {"max_windows": 256, "speed_steps": 1000, "game_starts": 200, "games": 16, "game_steps": 400},
}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", default="data", help="recorded episodes (start frames) and outputs")
    parser.add_argument("--checkpoint-dir", default="checkpoints", help="checkpoint root (stages 03 and 05)")
    parser.add_argument("--device", default="cpu", help="cpu (default: fastest at batch 1 here), cuda, mps, auto")
    parser.add_argument("--threads", type=positive_int, default=1,
                        help="torch threads for the model; 1 is fastest at batch 1 on a busy 2-core CPU (part5.md)")
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
    parser.add_argument("--control-steps", type=positive_int, default=30, help="evaluate: rollout steps scored")
    parser.add_argument("--drift-steps", type=positive_int, default=50, help="evaluate: PSNR by step up to this")
    parser.add_argument("--max-windows", type=positive_int, default=None, help="evaluate: rollout start points")
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


def pick_start(episodes: list, k: int, rng: np.random.Generator, random_start: bool):
    """A random episode and t0 (its last context frame); returns (episode, t0, frames (k, 210, 160, 3))."""
    episode = episodes[rng.integers(len(episodes))]
    t0 = int(rng.integers(k - 1, episode.num_frames - 1)) if random_start else k - 1
    return episode, t0, read_frames(episode, t0 - k + 1, t0 + 1)


# ---------------------------------------------------------------- the real game, for --compare
class RealBreakout:
    """The emulator, brought to a recorded frame by resetting with the episode's seed and replaying its actions.

    It is built the way Stage 02 recorded (common.recorder.make_env, the level's frame skip and no-op
    starts, no sticky actions), so the replay lands on exactly the recorded frame; reset_to checks that.
    """

    def __init__(self, data_dir: str):
        self.data_dir = data_dir
        self.env = None

    def reset_to(self, episode, t0: int, expected: np.ndarray) -> np.ndarray:
        header = read_level(actions_path(self.data_dir, episode.level))
        if self.env is None:
            self.env = make_env(header["game"], header["frame_skip"], header["noop_max"])
        self.env.reset(seed=episode.seed)
        for action in episode.actions[:t0]:
            self.env.step(int(action))
        frame = self.env.unwrapped.ale.getScreenRGB()
        if not np.array_equal(frame, expected):
            print(f"note: the emulator's replay of {Path(episode.folder).name} from its seed differs from the "
                  f"recorded frame {t0} in {int((frame != expected).any(-1).sum())} pixels, so the real game "
                  f"starts from a slightly different state (the recording is not reproducible from its seed)")
        return frame

    def step(self, action: int) -> np.ndarray:
        _, _, terminated, truncated, _ = self.env.step(action)
        if terminated or truncated:
            self.env.reset()
        return self.env.unwrapped.ale.getScreenRGB()


# ---------------------------------------------------------------- controls and policies
def action_from_keys(is_down: Callable[[int], bool]) -> int:
    """Map held keys to an action: SPACE fire wins, then `.` no-op, then one arrow; nothing (or both arrows) = NOOP."""
    if is_down(pygame.K_SPACE):
        return FIRE
    if is_down(pygame.K_PERIOD):
        return NOOP
    right, left = is_down(pygame.K_RIGHT), is_down(pygame.K_LEFT)
    if right != left:
        return RIGHT if right else LEFT
    return NOOP


def parse_keys_file(path: str) -> list[int]:
    """Actions from a text file: tokens NOOP/FIRE/RIGHT/LEFT or 0-3, `NAME*N` repeats a token N times."""
    try:
        text = Path(path).read_text()
    except OSError as err:
        raise UserError(f"cannot read keys file {path}: {err.strerror}") from None
    actions = []
    for token in text.split():
        name, _, count = token.partition("*")
        if name.upper() in ACTION_NAMES:
            action = ACTION_NAMES.index(name.upper())
        elif name.isdigit() and int(name) < len(ACTION_NAMES):
            action = int(name)
        else:
            raise UserError(f"keys file {path}: {token!r} is not one of {', '.join(ACTION_NAMES)} or 0-3")
        if count and not count.isdigit():
            raise UserError(f"keys file {path}: {token!r} repeat count must be a positive integer")
        actions += [action] * (int(count) if count else 1)
    return actions


def make_policy(spec: str, seed: int) -> Callable[[int, np.ndarray], int]:
    """policy(step, newest frame) -> action for headless play."""
    rng = np.random.default_rng(seed)
    if spec == "random":
        return lambda step, frame: int(rng.integers(len(ACTION_NAMES)))
    if spec == "follow":
        return lambda step, frame: follow_ball(frame, rng)
    if spec.startswith("keys:"):
        actions = parse_keys_file(spec[len("keys:"):])
        return lambda step, frame: actions[step] if step < len(actions) else NOOP
    raise UserError(f"--policy must be 'random', 'follow' or 'keys:FILE', got {spec!r}")


# ---------------------------------------------------------------- headless: GIF + MP4
def with_hud(frames: list[np.ndarray], text: str) -> np.ndarray:
    """Frames side by side with a one-line HUD strip under them."""
    image = np.concatenate(frames, axis=1)
    strip = np.zeros((HUD_HEIGHT, image.shape[1], 3), np.uint8)
    cv2.putText(strip, text, (2, HUD_HEIGHT - 4), cv2.FONT_HERSHEY_PLAIN, 0.7, (255, 255, 255), 1, cv2.LINE_AA)
    return np.concatenate([image, strip], axis=0)


def write_videos(images: list[np.ndarray], gif_path: Path, fps: float) -> Path:
    """Write the GIF (every image a frame) and an MP4 beside it; returns the MP4 path."""
    buffer = io.BytesIO()
    pictures = [Image.fromarray(image) for image in images]
    pictures[0].save(buffer, format="GIF", save_all=True, append_images=pictures[1:],
                     duration=round(1000 / fps), loop=0, optimize=False)
    atomic_write_bytes(gif_path, buffer.getvalue())
    mp4_path = gif_path.with_suffix(".mp4")
    with imageio.get_writer(mp4_path, fps=fps, codec="libx264", quality=8, macro_block_size=16) as writer:
        for image in images:
            writer.append_data(cv2.resize(image, None, fx=2, fy=2, interpolation=cv2.INTER_NEAREST))
    return mp4_path


def run_headless(args: argparse.Namespace, game: NeuralBreakout, episodes: list, rng: np.random.Generator,
                 policy: Callable[[int], int]) -> None:
    episode, t0, start = pick_start(episodes, game.context_frames, rng, args.random_start)
    game.reset(start, episode.actions[:t0])
    real = RealBreakout(args.data_dir) if args.compare else None
    real_frame = real.reset_to(episode, t0, start[-1]) if real else None
    images, times, frame = [], [], start[-1]
    for step in tqdm(range(args.steps), desc="neural game", unit="step"):
        action = policy(step, frame)
        begin = time.perf_counter()
        frame = game.step(action, temperature=args.temperature, event_temperature=args.event_temperature)
        times.append(time.perf_counter() - begin)
        shown = [frame]
        if real:
            real_frame = real.step(action)
            shown.append(real_frame)
        label = "   left: neural, right: real" if real else ""
        images.append(with_hud(shown, f"{step + 1:4d} {ACTION_NAMES[action]:<5s} T={args.temperature:g} "
                                      f"E={args.event_temperature:g}{label}"))
    name = args.policy if args.policy in ("random", "follow") else "keys"
    gif_path = Path(args.output) if args.output else neural_game_gif(args.data_dir, name)
    mp4_path = write_videos(images, gif_path, args.fps)
    ms = np.array(times) * 1000
    print(f"wrote {gif_path} and {mp4_path} ({len(images)} frames from {episode.folder} frame {t0}); "
          f"model step p50 {np.percentile(ms, 50):.1f} ms, p95 {np.percentile(ms, 95):.1f} ms")


# ---------------------------------------------------------------- the window
def run_window(args: argparse.Namespace, game: NeuralBreakout, episodes: list, rng: np.random.Generator) -> None:
    pygame.display.init()
    pygame.font.init()
    k = game.context_frames
    real = RealBreakout(args.data_dir) if args.compare else None
    panels = 2 if real else 1
    width, height = 160 * args.scale, 210 * args.scale
    hud = 28
    screen = pygame.display.set_mode((width * panels, height + hud))
    pygame.display.set_caption("Neural Breakout" + (" | real emulator on the right" if real else ""))
    font = pygame.font.Font(None, 22)
    clock = pygame.time.Clock()
    print("SPACE fire, LEFT/RIGHT move, . no-op, R restart, P pause, ESC/Q quit")

    def restart():
        episode, t0, start = pick_start(episodes, k, rng, args.random_start)
        game.reset(start, episode.actions[:t0])
        return start[-1], (real.reset_to(episode, t0, start[-1]) if real else None)

    frame, real_frame = restart()
    step, action, paused, model_ms, running = 0, NOOP, False, 0.0, True
    while running:
        tapped = set()
        for event in pygame.event.get():
            if event.type == pygame.QUIT:
                running = False
            elif event.type == pygame.KEYDOWN:
                if event.key in (pygame.K_ESCAPE, pygame.K_q):
                    running = False
                elif event.key == pygame.K_r:
                    (frame, real_frame), step = restart(), 0
                elif event.key == pygame.K_p:
                    paused = not paused
                tapped.add(event.key)  # a tap shorter than one frame still counts for this frame
        if not running:
            break
        if not paused:
            held = pygame.key.get_pressed()
            action = action_from_keys(lambda key: held[key] or key in tapped)
            begin = time.perf_counter()
            frame = game.step(action, temperature=args.temperature, event_temperature=args.event_temperature)
            model_ms = (time.perf_counter() - begin) * 1000
            if real:
                real_frame = real.step(action)
            step += 1
        for i, image in enumerate([frame, real_frame] if real else [frame]):
            surface = pygame.surfarray.make_surface(np.ascontiguousarray(image.transpose(1, 0, 2)))
            screen.blit(pygame.transform.scale(surface, (width, height)), (i * width, 0))
        screen.fill((0, 0, 0), (0, height, width * panels, hud))
        status = (f"step {step}  action {ACTION_NAMES[action]}  T={args.temperature:g}  "
                  f"events T={args.event_temperature:g}  "
                  f"{clock.get_fps():4.1f} fps  model {model_ms:4.1f} ms" + ("  PAUSED" if paused else "")
                  + ("   | left: neural, right: real" if real else ""))
        screen.blit(font.render(status, True, (255, 255, 255)), (6, height + 6))
        pygame.display.flip()
        clock.tick(args.fps)
        if args.max_steps and step >= args.max_steps:
            break
    pygame.quit()
    print(f"played {step} steps")


# ---------------------------------------------------------------- evaluation
def _percent(share: float | None) -> str:
    return "n/a" if share is None else f"{share:.1%}"


def game_headline(measures: dict) -> dict:
    """The game measures' headline figures (neural game; the emulator's where they differ from a constant)."""
    serve, in_play, long_play = measures["serve"], measures["ball_in_play"], measures["long_play"]["total"]
    return {
        "serve_within_10_steps_game_start": serve["game_start"]["served_within_10_steps"]["neural"],
        "serve_within_10_steps_after_lost_life": serve["after_lost_life"]["served_within_10_steps"]["neural"],
        "serve_x_tv_distance": serve["all"]["serve_x_tv"],
        "serve_within_10_noops_without_fire": serve["noop_only"]["neural"],
        "ball_kept": in_play["open_loop"]["ball_kept_when_emulator_ball"],
        "ball_within_4px_before_first_random_event": in_play["open_loop"]["ball_within_4px_before_first_event"],
        "long_play_one_ball_share": long_play["neural"]["one_ball_share"],
        "long_play_one_ball_share_emulator": long_play["emulator"]["one_ball_share"],
        "long_play_bricks_back": long_play["neural"]["bricks_back"],
    }


def print_game_measures(measures: dict) -> None:
    serve, in_play, games = measures["serve"], measures["ball_in_play"], measures["long_play"]
    for kind in ("game_start", "after_lost_life"):
        s = serve[kind]
        print(f"serve ({kind.replace('_', ' ')}, {s['starts']} emulator states, FIRE then NOOPs): ball within 10 "
              f"steps {_percent(s['served_within_10_steps']['neural'])} (emulator "
              f"{_percent(s['served_within_10_steps']['emulator'])}); served x TV distance "
              f"{'n/a' if s['serve_x_tv'] is None else format(s['serve_x_tv'], '.2f')}")
    print(f"10 NOOPs without FIRE: a ball within 10 steps {_percent(serve['noop_only']['neural'])} "
          f"(emulator {_percent(serve['noop_only']['emulator'])})")
    for mode in ("open_loop", "teacher_forced"):
        scores = in_play[mode]
        if scores:
            print(f"ball in play, {in_play['windows']} windows of {in_play['steps']} steps, events "
                  f"{'drawn from the prior' if mode == 'open_loop' else 'inferred from the real frames'}: "
                  f"ball kept {_percent(scores['ball_kept_when_emulator_ball'])}, within 4 px before the first "
                  f"random event {_percent(scores['ball_within_4px_before_first_event'])} (overall "
                  f"{_percent(scores['ball_within_4px'])})")
    for side in ("neural", "emulator"):
        total = games["total"][side]
        print(f"long play, {games['games']} games of {games['steps']} steps, {side}: one ball in play "
              f"{_percent(total['one_ball_share'])}, serves {total['serves']}, bricks broken "
              f"{total['bricks_broken']}, bricks back {total['bricks_back']}, lives lost {total['lives_lost']}, "
              f"score {total['score_gained']}, digit changes without cause {total['digit_changes_without_cause']}")


def run_evaluate(args: argparse.Namespace, game: NeuralBreakout, episodes: list, split: str,
                 rng: np.random.Generator) -> None:
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
        "details": {**control, "speed_by_threads": speeds, "preset": args.preset},
    }
    if "inferred_latents" in control:
        metrics["inferred_latents_paddle_within_3px"] = control["inferred_latents"]["paddle_within_3px"]
        metrics["inferred_latents_ball_within_4px"] = control["inferred_latents"]["ball_within_4px"]
    path = control_metrics_path(args.checkpoint_dir)
    atomic_write_json(path, metrics)
    print(f"control over {control['windows']} rollouts of {args.control_steps} steps ({split} episodes): "
          f"paddle within 3 px {ours['paddle_within_3px']:.1%} (goal 95%; copy-last-frame "
          f"{still['paddle_within_3px']:.1%}), ball within 4 px {ours['ball_within_4px']:.1%} (goal 80%; "
          f"copy-last-frame {still['ball_within_4px']:.1%})")
    print(f"on the steps where the real paddle had moved > 3 px from its start ({control['real_paddle_moved_share']:.0%}): "
          f"paddle {_percent(ours['paddle_within_3px_when_real_paddle_moved'])}; where the real ball is visible "
          f"({control['real_ball_visible_share']:.0%}): ball {_percent(ours['ball_within_4px_when_real_ball_visible'])}")
    print(f"PSNR step 1 {ours['psnr_db_by_step'][0]:.2f} dB, step {len(ours['psnr_db_by_step'])} "
          f"{ours['psnr_db_by_step'][-1]:.2f} dB")
    for level, row in ours["by_level"].items():
        print(f"  {level}: {row['windows']} rollouts, paddle {row['paddle_within_3px']:.1%}, ball within 4 px "
              f"{row['ball_within_4px']:.1%}, ball kept {_percent(row['ball_kept'])}, PSNR at steps 1/10/30 "
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
    game = NeuralBreakout.load(args.checkpoint_dir, device=str(pick_device(args.device)), seed=args.seed)
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
