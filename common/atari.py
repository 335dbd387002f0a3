"""Atari environments built on ale_py's C++ vector env (preprocessing happens in C++ threads).

Training envs: 84x84 gray, frame skip 4 with max-pool, an N-frame stack, random no-op starts,
FIRE on reset, and a termination signal on every lost life while the game itself continues
(the brick wall keeps its holes across lives). Rewards come back unclipped so the trainer can
log real game scores; it clips them for learning. Evaluation envs play full games.
"""
from __future__ import annotations

import re

import numpy as np

from common.errors import UserError

DEFAULT_ENV = {"frame_skip": 4, "stack": 8, "noop_max": 30, "repeat_action_probability": 0.0}


def resolve_game(name: str) -> str:
    """Accept 'breakout', 'Breakout', 'ALE/Breakout-v5', 'MsPacman', 'ms_pacman' -> ALE rom id."""
    from ale_py import roms

    valid = roms.get_all_rom_ids()
    text = name.strip()
    text = re.sub(r"^ALE/", "", text)
    text = re.sub(r"(NoFrameskip)?-v\d+$", "", text)
    snake = re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "_", text).lower().replace("-", "_")
    for candidate in (snake, text.lower()):
        if candidate in valid:
            return candidate
    examples = ", ".join(["breakout", "pong", "ms_pacman", "space_invaders", "seaquest", "qbert"])
    raise UserError(f"unknown Atari game {name!r}; valid names include {examples} "
                    f"({len(valid)} ROMs ship with ale-py)")


def action_meanings(game: str) -> list[str]:
    from ale_py.vector_env import AtariVectorEnv

    env = AtariVectorEnv(game, 1, num_threads=1)
    try:
        return [action.name for action in env.ale.get_action_set()]
    finally:
        env.close()


def make_env_config(game: str = "breakout", frame_skip: int = 4, stack: int = 8, noop_max: int = 30,
                    repeat_action_probability: float = 0.0) -> dict:
    """Everything needed to rebuild the agent's view of the game (stored in every checkpoint)."""
    game = resolve_game(game)
    meanings = action_meanings(game)
    return {"game": game, "frame_skip": int(frame_skip), "stack": int(stack), "noop_max": int(noop_max),
            "repeat_action_probability": float(repeat_action_probability), "obs_size": 84,
            "grayscale": True, "maxpool": True, "fire_reset": True,
            "num_actions": len(meanings), "action_meanings": meanings}


def make_vector_env(env_config: dict, num_envs: int, training: bool, max_episode_frames: int = 108_000,
                    num_threads: int = 0):
    """A batch of games. training=True: a lost life terminates (the game continues underneath).

    Autoreset is SameStep: the step that ends a game already returns the next game's first
    observation (an all-zero stack except the newest frame).
    """
    from ale_py.vector_env import AtariVectorEnv

    return AtariVectorEnv(
        env_config["game"], num_envs,
        num_threads=num_threads or min(num_envs, 2),
        max_num_frames_per_episode=max_episode_frames,
        repeat_action_probability=env_config["repeat_action_probability"],
        autoreset_mode="SameStep",
        img_height=84, img_width=84, grayscale=True,
        stack_num=env_config["stack"], frameskip=env_config["frame_skip"], maxpool=True,
        noop_max=env_config["noop_max"],
        episodic_life=False, life_loss_info=training,
        reward_clipping=False, use_fire_reset=True,
    )


def game_over_mask(terminated: np.ndarray, truncated: np.ndarray, lives: np.ndarray,
                   prev_lives: np.ndarray) -> np.ndarray:
    """Which envs finished a whole game this step (vs. only lost a life).

    With SameStep autoreset a finished game reports the new game's lives (>= before); a lost
    life reports fewer lives. Games without lives (Pong) always report 0 -> game over.
    """
    return truncated | (terminated & (lives >= prev_lives))
