"""The pixel detectors against the emulator's RAM on real frames (frame skip 4, as recorded)."""
from __future__ import annotations

import numpy as np
import pytest

from common.detectors import (BRICK_POINTS, RAM_BALL_Y, ball_count, ball_xy, brick_mask, lives, paddle_x, ram_bricks,
                              ram_positions, ram_score, score)
from common.game_eval import follow_ball
from common.recorder import make_env


@pytest.fixture(scope="module")
def frames_and_ram():
    """~600 real frames with their RAM: sweeps to both walls, then random play with FIRE after each lost life."""
    env = make_env("breakout", frame_skip=4, noop_max=30)
    rng = np.random.default_rng(0)
    frames, rams = [], []
    for episode in range(2):
        env.unwrapped.np_random = np.random.default_rng(episode)
        _, info = env.reset()
        lives, script = info["lives"], [1] + [2] * 12 + [3] * 14 + [1]
        for t in range(300):
            action = script[t] if t < len(script) else int(rng.integers(4))
            _, _, terminated, truncated, info = env.step(1 if info["lives"] < lives else action)
            lives = info["lives"]
            frames.append(env.unwrapped.ale.getScreenRGB())
            rams.append(env.unwrapped.ale.getRAM().copy())
            if terminated or truncated:
                break
    return frames, rams


def test_paddle_matches_ram_exactly_and_moves_with_it(frames_and_ram):
    frames, rams = frames_and_ram
    pixel = np.array([paddle_x(f) for f in frames], dtype=float)
    ram = np.array([ram_positions(r)[0] for r in rams])
    assert np.abs(pixel - ram).max() == 0.0
    assert pixel.min() == 15.5 and pixel.max() == 151.5  # both walls reached, including under the right wall
    moved = np.diff(ram) != 0
    assert moved.mean() > 0.3 and np.all(np.sign(np.diff(pixel))[moved] == np.sign(np.diff(ram))[moved])


def test_ball_matches_ram_when_visible(frames_and_ram):
    frames, rams = frames_and_ram
    truth = [ram_positions(r)[1] for r in rams]
    found = [ball_xy(f) for f in frames]
    in_open = [(t, b) for t, b in zip(truth, found) if t is not None and t[1] < 183]  # away from the paddle
    assert len(in_open) > 200
    detected = [(t, b) for t, b in in_open if b is not None]
    assert len(detected) / len(in_open) > 0.95
    error = np.array([(b[0] - t[0], b[1] - t[1]) for t, b in detected])
    assert np.abs(error[:, 0]).max() <= 0.5 and np.abs(error[:, 1]).max() <= 1.5
    xs = np.array([t[0] for t, _ in detected])
    assert np.corrcoef(xs, [b[0] for _, b in detected])[0, 1] > 0.999 and xs.std() > 20
    absent = [b for t, b in zip(truth, found) if t is None]  # before FIRE, or fallen below the paddle
    assert len(absent) > 5 and all(b is None for b in absent)


def test_detectors_on_synthetic_frames():
    frame = np.zeros((210, 160, 3), np.uint8)
    assert paddle_x(frame) is None and ball_xy(frame) is None
    frame[189:193, 40:56] = (200, 72, 72)     # paddle, centre 47.5
    frame[120:124, 90:92] = (200, 72, 72)     # ball, centre (90.5, 121.5)
    frame[57:63, 8:152] = (200, 72, 72)       # the red brick row is neither
    assert paddle_x(frame) == 47.5
    assert ball_xy(frame) == (90.5, 121.5)
    frame[120:124, 90:92] = 0
    frame[189:193, 60:62] = (200, 72, 72)     # the ball level with the paddle does not shift the paddle
    assert paddle_x(frame) == 47.5 and ball_xy(frame) == (60.5, 190.5)
    frame[189:193, 144:160] = (200, 72, 72)   # paddle under the right wall: only 8 px are inside
    frame[189:193, 40:56] = 0
    assert paddle_x(frame) == 151.5


@pytest.fixture(scope="module")
def followed_game():
    """One whole game of ball-following play (bricks broken, every life lost): frames, RAM, rewards, lives."""
    env = make_env("breakout", frame_skip=4, noop_max=30)
    rng = np.random.default_rng(1)
    env.unwrapped.np_random = rng
    env.reset()
    frames, rams = [env.unwrapped.ale.getScreenRGB()], [env.unwrapped.ale.getRAM().copy()]
    rewards, lives_left = [0.0], [5]
    while True:
        _, reward, terminated, truncated, info = env.step(follow_ball(frames[-1], rng))
        frames.append(env.unwrapped.ale.getScreenRGB())
        rams.append(env.unwrapped.ale.getRAM().copy())
        rewards.append(reward)
        lives_left.append(info["lives"])
        if terminated or truncated:
            return frames, rams, np.array(rewards), np.array(lives_left)


def test_ball_count_is_one_exactly_where_the_ball_is_found(frames_and_ram, followed_game):
    frames, rams = frames_and_ram[0] + followed_game[0], frames_and_ram[1] + followed_game[1]
    counts = np.array([ball_count(f) for f in frames])
    assert np.array_equal(counts, [ball_xy(f) is not None for f in frames])  # never two balls on a real screen
    assert counts.mean() > 0.8
    idle = [c for c, r in zip(counts, rams) if r[RAM_BALL_Y] == 0]  # no ball in play
    assert len(idle) > 5 and not any(idle)
    frame = np.zeros((210, 160, 3), np.uint8)
    frame[100:104, 50:52] = frame[150:154, 90:92] = (200, 72, 72)   # two balls
    frame[57:63, 8:16] = frame[189:193, 40:56] = (200, 72, 72)      # a red brick and the paddle are not balls
    assert ball_count(frame) == 2


def test_bricks_match_ram_exactly_and_each_pays_its_row(followed_game):
    frames, rams, rewards, _ = followed_game
    walls = np.stack([brick_mask(f) for f in frames])
    assert np.array_equal(walls, np.stack([ram_bricks(r) for r in rams]))
    assert walls[0].all() and (~walls[-1]).sum() >= 15 and (~walls[-1]).any(axis=1).sum() >= 3
    assert not (walls[1:] & ~walls[:-1]).any()  # a broken brick never comes back
    broken = walls[:-1] & ~walls[1:]
    assert np.array_equal((broken * np.array(BRICK_POINTS)[:, None]).sum(axis=(1, 2)), rewards[1:])


def test_score_and_lives_digits_match_the_game(followed_game):
    frames, rams, rewards, lives_left = followed_game
    truth = np.array([ram_score(r) for r in rams])
    assert np.array_equal(truth, np.cumsum(rewards)) and truth[-1] >= 20
    for read, real in ((np.array([score(f) for f in frames]), truth),
                       (np.array([lives(f) for f in frames]), lives_left)):
        # the digits are drawn above the ball: a hit or lost life in a step's last emulator frame shows a step later
        assert all(read[t] in (real[t], real[t - 1]) for t in range(1, len(frames)))
        assert (read == real).mean() > 0.98
    assert set(lives_left[:-1]) == {5, 4, 3, 2, 1}


def test_every_digit_reads_in_every_place():
    env = make_env("breakout", frame_skip=4, noop_max=30)
    env.reset(seed=0)
    ale = env.unwrapped.ale
    for digit in range(10):
        ale.setRAM(76, digit)              # hundreds
        ale.setRAM(77, digit * 0x11)       # tens and ones, binary-coded decimal
        env.step(0)
        frame = ale.getScreenRGB()
        assert score(frame) == 111 * digit and lives(frame) == 5
    noisy = frame.copy()
    noisy[5, 36:39] = 142                  # three stray pixels do not change a 4x2 block's reading
    assert score(noisy) == 999
    noisy[9:11, 40:44] = 0                 # a missing block (9 without its middle) matches no glyph
    assert score(noisy) is None and lives(np.zeros_like(frame)) is None
