"""The pixel detectors against the emulator's RAM on real frames (frame skip 4, as recorded)."""
from __future__ import annotations

import numpy as np
import pytest

from common.detectors import ball_xy, paddle_x, ram_positions
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
