"""Play one game and write it to disk the 02 way: native RGB PNGs, an MP4 with overlay, a record.

The agent sees exactly what it trained on (gymnasium's AtariPreprocessing: frame skip with max-pool,
84x84 gray, no-op starts, plus an N-frame stack zero-padded at reset like ale_py's vector env), while
the recorder keeps the emulator's native 210x160 RGB screen after every agent step. Sticky actions
are always off here, so the recorded action is exactly the one the emulator applied.

For the DQN agent FIRE is pressed at the start of a game and after every lost life (its training env
fires on reset; a greedy agent would otherwise wait forever); those forced FIREs are recorded like any
action. The random player is left to serve when its own draw is FIRE, so the data shows that the other
keys serve no ball: with every game and life started by FIRE, the world model and the map would learn that
a serve follows whatever the key.
"""
from __future__ import annotations

import shutil
import signal
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import numpy as np

from common.dataset import FRAME_SHAPE
from common.errors import UserError
from common.paths import frame_name

RANDOM_ENV_CONFIG = {"game": "breakout", "frame_skip": 4, "stack": 8, "noop_max": 30,
                     "repeat_action_probability": 0.0,
                     "action_meanings": ["NOOP", "FIRE", "RIGHT", "LEFT"]}
PNG_PARAMS = [cv2.IMWRITE_PNG_COMPRESSION, 1]  # lossless; level 1 writes much faster than 9 for files ~2x bigger
VIDEO_BAR = 30  # pixels of text under the frame: 210 + 30 = 240 rows, a multiple of the 16-px macro block


def gym_id(game: str) -> str:
    """ale_py ROM id ('breakout', 'ms_pacman') -> gymnasium id ('ALE/Breakout-v5', 'ALE/MsPacman-v5')."""
    return "ALE/" + "".join(part.capitalize() for part in game.split("_")) + "-v5"


def make_env(game: str, frame_skip: int, noop_max: int):
    import ale_py
    import gymnasium as gym

    gym.register_envs(ale_py)
    env = gym.make(gym_id(game), frameskip=1, repeat_action_probability=0.0,
                   full_action_space=False, max_num_frames_per_episode=108_000)
    return gym.wrappers.AtariPreprocessing(env, noop_max=noop_max, frame_skip=frame_skip, screen_size=84,
                                           terminal_on_life_loss=False, grayscale_obs=True, scale_obs=False)


def episode_seed(seed: int, level: int, index: int) -> int:
    """Every episode's seed follows from (run seed, level, index), so a top-up run is reproducible."""
    return int(np.random.SeedSequence([seed, level, index]).generate_state(1)[0])


def choose_split(seed: int, level: int, index: int) -> str:
    """80/10/10 train/val/test in blocks of 10 episodes, val and test among the first 3 of each block.

    Which of the first three is val/test/train is drawn from the seed, so every block of ten has
    exactly one val and one test episode and even a 3-episode smoke run has all three splits.
    """
    block, position = divmod(index, 10)
    if position >= 3:
        return "train"
    order = np.random.default_rng([seed, level, block, 7]).permutation(["train", "val", "test"])
    return str(order[position])


class VideoWriter:
    """MP4 at 30 fps: the native frame over a text bar with level, episode, frame, action and score."""

    def __init__(self, path: Path, action_meanings: list[str], level: int, index: int):
        import imageio.v2 as imageio

        self.meanings, self.level, self.index = action_meanings, level, index
        self.canvas = np.zeros((FRAME_SHAPE[0] + VIDEO_BAR, FRAME_SHAPE[1], 3), np.uint8)
        self.writer = imageio.get_writer(str(path), format="FFMPEG", fps=30, codec="libx264", macro_block_size=16,
                                         ffmpeg_log_level="error", output_params=["-preset", "ultrafast"])

    def add(self, frame: np.ndarray, i: int, action: int | None, score: float) -> None:
        h = FRAME_SHAPE[0]
        self.canvas[:h] = frame
        self.canvas[h:] = 0
        name = "-" if action is None else self.meanings[action]
        for row, text in enumerate((f"L{self.level} ep {self.index} frame {i}", f"{name}  score {score:g}")):
            cv2.putText(self.canvas, text, (3, h + 12 + 13 * row), cv2.FONT_HERSHEY_SIMPLEX, 0.35,
                        (255, 255, 255), 1, cv2.LINE_AA)
        self.writer.append_data(self.canvas)

    def close(self) -> None:
        self.writer.close()


_WORKER_CACHE: dict = {}


def worker_init() -> None:
    """Pool workers leave Ctrl-C to the parent, which stops them and cleans up."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def write_png(path: Path, rgb: np.ndarray) -> None:
    if not cv2.imwrite(str(path), rgb[..., ::-1], PNG_PARAMS):
        raise UserError(f"could not write {path} (disk full or not writable?)")


class PngWriter:
    """Encodes and writes PNGs on a background thread (cv2 releases the GIL) while the game runs on.

    At most `depth` frames wait in memory; flush() waits for all of them and re-raises a failed write.
    It pays where a core is spare (a single game on a 2-core machine); with one game per core it breaks
    even (part1.md).
    """

    def __init__(self, depth: int = 64):
        self.pool = ThreadPoolExecutor(max_workers=1)
        self.pending: deque = deque()
        self.depth = depth

    def write(self, path: Path, rgb: np.ndarray) -> None:
        self.pending.append(self.pool.submit(write_png, path, rgb))
        while len(self.pending) > self.depth:
            self.pending.popleft().result()

    def flush(self) -> None:
        while self.pending:
            self.pending.popleft().result()


def _cached(key, build):
    if key not in _WORKER_CACHE:
        _WORKER_CACHE[key] = build()
    return _WORKER_CACHE[key]


def record_episode(job: dict) -> dict:
    """Play one game for `job` into job['tmp_dir'] (and job['video_tmp']); return the episode record.

    The caller renames the temporary folder into place, so a killed worker never leaves a
    half-written episode where the data set lives.
    """
    start_time = time.perf_counter()
    env_config = job["env_config"]
    env = _cached(("env", env_config["game"], job["frame_skip"], env_config["noop_max"]),
                  lambda: make_env(env_config["game"], job["frame_skip"], env_config["noop_max"]))
    policy = None
    if job["policy"] == "dqn":
        import torch

        from common.dqn import load_policy

        torch.set_num_threads(1)  # games already run in parallel, one per core
        policy = _cached(("dqn", job["checkpoint"]), lambda: load_policy(job["checkpoint"], "cpu"))
    meanings = list(env_config["action_meanings"])
    num_actions = len(meanings)
    fire = meanings.index("FIRE") if "FIRE" in meanings else None
    rng = np.random.default_rng(job["seed"])

    tmp_dir = Path(job["tmp_dir"])
    shutil.rmtree(tmp_dir, ignore_errors=True)
    tmp_dir.mkdir(parents=True)
    if job["video_tmp"]:
        Path(job["video_tmp"]).parent.mkdir(parents=True, exist_ok=True)
    video = VideoWriter(Path(job["video_tmp"]), meanings, job["level"], job["index"]) if job["video_tmp"] else None

    env.unwrapped.np_random = np.random.default_rng(job["seed"])  # no-op starts; reset(seed=) would reload the ROM
    obs, info = env.reset()
    stack = deque([np.zeros_like(obs)] * (env_config["stack"] - 1) + [obs], maxlen=env_config["stack"])
    ale = env.unwrapped.ale
    frame = ale.getScreenRGB()
    pngs = _cached("png_writer", PngWriter)
    pngs.write(tmp_dir / frame_name(0), frame)
    actions, rewards, lives = [], [], [int(info["lives"])]
    forces_fire = fire is not None and policy is not None
    score, random_steps, need_fire, truncated = 0.0, 0, forces_fire, False
    try:
        while True:
            if need_fire:
                action = fire
            elif policy is None or rng.random() < job["random_fraction"]:
                action = int(rng.integers(num_actions))
                random_steps += 1
            else:
                action = int(policy.act(np.stack(stack)[None], 0.0, rng)[0])
            if video:
                video.add(frame, len(actions), action, score)
            obs, reward, terminated, env_truncated, info = env.step(action)
            stack.append(obs)
            frame = ale.getScreenRGB()
            actions.append(action)
            rewards.append(float(reward))
            score += float(reward)
            need_fire = forces_fire and int(info["lives"]) < lives[-1]
            lives.append(int(info["lives"]))
            pngs.write(tmp_dir / frame_name(len(actions)), frame)
            if terminated or env_truncated or len(actions) >= job["max_steps"]:
                truncated = not terminated
                break
        if video:
            video.add(frame, len(actions), None, score)
    finally:
        pngs.flush()
        if video:
            video.close()
    return {
        "index": job["index"], "folder": job["folder"], "split": job["split"],
        "num_frames": len(actions) + 1, "score": score, "truncated": truncated,
        "policy": job["policy"], "checkpoint": job.get("checkpoint_name"),
        "random_fraction": 1.0 if policy is None else job["random_fraction"],
        "random_steps": random_steps,
        "seed": job["seed"], "seconds": round(time.perf_counter() - start_time, 3),
        "actions": actions, "rewards": rewards, "lives": lives,
    }
