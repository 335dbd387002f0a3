"""Env contract: shapes, dtype, stack order, life loss ends a training episode but not a game."""
import numpy as np
import pytest

from common.atari import game_over_mask, make_env_config, make_vector_env, resolve_game
from common.errors import UserError


@pytest.fixture(scope="module")
def breakout():
    return make_env_config("breakout", stack=8)


def test_game_names_and_config(breakout):
    assert resolve_game("Breakout") == "breakout"
    assert resolve_game("ALE/MsPacman-v5") == "ms_pacman"
    assert resolve_game("SpaceInvadersNoFrameskip-v4") == "space_invaders"
    assert breakout["action_meanings"] == ["NOOP", "FIRE", "RIGHT", "LEFT"]
    assert breakout["num_actions"] == 4 and breakout["stack"] == 8 and breakout["frame_skip"] == 4
    assert breakout["repeat_action_probability"] == 0.0 and breakout["noop_max"] == 30
    assert make_env_config("pong")["num_actions"] == 6


def test_unknown_game_is_a_user_error():
    with pytest.raises(UserError, match="unknown Atari game 'Brekout'.*breakout"):
        resolve_game("Brekout")


def play_until(env, predicate, steps=3000, seed=0):
    """Random play until predicate(terminated, truncated, info, prev_lives) holds; returns that step."""
    rng = np.random.default_rng(seed)
    obs, info = env.reset(seed=seed)
    prev_lives = info["lives"].copy()
    for _ in range(steps):
        prev_obs = obs
        obs, reward, terminated, truncated, info = env.step(rng.integers(0, 4, env.num_envs).astype(np.int32))
        if predicate(terminated, truncated, info, prev_lives):
            return prev_obs, obs, terminated, truncated, info, prev_lives
        prev_lives = info["lives"].copy()
    raise AssertionError("condition never met")


def test_observation_shape_dtype_and_stack_order(breakout):
    env = make_vector_env(breakout, 2, training=True)
    try:
        obs, info = env.reset(seed=0)
        assert obs.shape == (2, 8, 84, 84) and obs.dtype == np.uint8
        assert (obs[:, :-1] == 0).all() and obs[:, -1].any()  # reset stack: only the newest frame
        previous = obs
        for _ in range(5):
            obs, *_ = env.step(np.array([1, 2], dtype=np.int32))
            assert (obs[:, :-1] == previous[:, 1:]).all()  # oldest frame first, shifts by one per step
            previous = obs
    finally:
        env.close()


def test_life_loss_ends_training_episode_but_game_continues(breakout):
    env = make_vector_env(breakout, 1, training=True)
    try:
        prev_obs, obs, terminated, truncated, info, prev_lives = play_until(
            env, lambda term, trunc, info, prev: term.any())
        assert info["lives"][0] == prev_lives[0] - 1  # the life is gone, the game goes on
        assert not game_over_mask(terminated, truncated, info["lives"], prev_lives)[0]
        assert (obs[0, :-1] == prev_obs[0, 1:]).all()  # no reset: the stack runs on
    finally:
        env.close()


def test_evaluation_game_does_not_end_on_life_loss(breakout):
    env = make_vector_env(breakout, 1, training=False)
    try:
        _, _, terminated, truncated, info, prev_lives = play_until(
            env, lambda term, trunc, info, prev: (info["lives"] < prev).any())
        assert not terminated[0] and not truncated[0] and info["lives"][0] == prev_lives[0] - 1
        # playing on, the game ends only when the last life is gone, then a new game starts
        _, obs, terminated, truncated, info, prev_lives = play_until(
            env, lambda term, trunc, info, prev: term.any(), steps=5000)
        assert prev_lives[0] == 1 and info["lives"][0] == 5
        assert game_over_mask(terminated, truncated, info["lives"], prev_lives)[0]
        assert (obs[0, :-1] == 0).all()  # SameStep autoreset: the next game's first observation
    finally:
        env.close()


def test_rewards_are_not_clipped_by_the_env():
    """Ms. Pac-Man's dots are worth 10: the env returns game points (the trainer clips for learning)."""
    env = make_vector_env(make_env_config("ms_pacman", stack=4), 2, training=False)
    try:
        env.reset(seed=3)
        rng = np.random.default_rng(3)
        seen = set()
        for _ in range(300):
            _, reward, *_ = env.step(rng.integers(0, 9, 2).astype(np.int32))
            seen.update(reward.tolist())
        assert 10 in seen
    finally:
        env.close()
