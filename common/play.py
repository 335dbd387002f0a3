"""Playing the neural game: the pygame window (optionally beside the real emulator) and headless runs
into a GIF and an MP4. 06_play_neural_breakout.py chooses the mode; this module holds the loops."""
from __future__ import annotations

import argparse
import io
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import cv2
import imageio.v2 as imageio
import numpy as np
import pygame
from PIL import Image
from tqdm import tqdm

from common.dataset import ACTION_NAMES, FIRE, LEFT, NOOP, RIGHT, read_frames, read_level
from common.errors import UserError
from common.game_eval import follow_ball
from common.io import atomic_write_bytes
from common.neural_game import NeuralBreakout
from common.paths import actions_path, neural_game_gif
from common.recorder import make_env

HUD_HEIGHT = 14  # px under the 210x160 frame in files; 210 + 14 = 224 keeps the MP4 16-aligned


@dataclass
class EmulatorStart:
    """A start made by the emulator itself when no recording exists: a game reset with `seed` (no random
    no-ops), then NOOPs, one frame per agent step. It stands in for a recorded episode in pick_start."""
    seed: int
    num_frames: int
    header: dict = field(default_factory=lambda: {"game": "breakout", "frame_skip": 4, "noop_max": 0})
    folder: str = "the emulator's game start"

    @property
    def actions(self) -> list[int]:
        return [NOOP] * (self.num_frames - 1)

    def frames(self) -> np.ndarray:
        env = make_env(self.header["game"], self.header["frame_skip"], self.header["noop_max"])
        env.reset(seed=self.seed)
        frames = [env.unwrapped.ale.getScreenRGB()]
        for action in self.actions:
            env.step(action)
            frames.append(env.unwrapped.ale.getScreenRGB())
        env.close()
        return np.stack(frames)


def pick_start(episodes: list, k: int, rng: np.random.Generator, random_start: bool):
    """A random episode and t0 (its last context frame); returns (episode, t0, frames (k, 210, 160, 3)).
    Without recorded episodes, the emulator makes the start (EmulatorStart)."""
    if not episodes:
        start = EmulatorStart(seed=int(rng.integers(2**31)), num_frames=k)
        return start, k - 1, start.frames()
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
        header = getattr(episode, "header", None) or read_level(actions_path(self.data_dir, episode.level))
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
