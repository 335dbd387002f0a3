"""Find Breakout's paddle and ball in a native 210x160 RGB frame (for the world model's control measures).

Paddle and ball share one palette colour (also the top brick row's and a patch of the right wall's):
- the paddle is the red run in rows 189-192 inside the walls (x 8..151); at the right wall the paddle
  slides under the wall, so a run touching the wall is measured from its left edge (full width 16);
- the ball is a small red blob (2x4 px) anywhere in the playfield: connected components of red
  pixels, keeping the ones no bigger than the ball, so bricks (8x6) and the paddle (16x4) drop out.
  A ball touching a red brick or the paddle merges with it and is reported as not found (None).
Checked against the emulator's RAM in tests/test_detectors.py.
"""
from __future__ import annotations

import cv2
import numpy as np

RED = (200, 72, 72)
PADDLE_ROWS = slice(189, 193)
PLAY_LEFT, PLAY_RIGHT = 8, 151     # inside the side walls (inclusive)
PLAY_TOP, PLAY_BOTTOM = 32, 195    # below the top wall, down to the bottom of the screen (inclusive)
PADDLE_WIDTH = 16
BALL_MAX_W, BALL_MAX_H = 3, 5
# Ground truth from the emulator (tests/test_detectors.py): pixel = RAM byte + offset.
RAM_PADDLE, RAM_BALL_X, RAM_BALL_Y = 72, 99, 101
PADDLE_OFFSET, BALL_X_OFFSET, BALL_Y_OFFSET = -39.5, -48.5, 10.5


def _red(region: np.ndarray) -> np.ndarray:
    return (region[..., 0] == RED[0]) & (region[..., 1] == RED[1]) & (region[..., 2] == RED[2])


def paddle_x(frame: np.ndarray) -> float | None:
    """Centre x of the paddle in native pixels, or None when no paddle is drawn."""
    columns = np.flatnonzero(_red(frame[PADDLE_ROWS, PLAY_LEFT:PLAY_RIGHT + 1]).any(axis=0)) + PLAY_LEFT
    if columns.size == 0:
        return None
    runs = np.split(columns, np.flatnonzero(np.diff(columns) > 1) + 1)  # a ball passing by is a separate run
    paddle = max(runs, key=len)
    left, right = int(paddle[0]), int(paddle[-1])
    if right == PLAY_RIGHT and right - left + 1 < PADDLE_WIDTH:
        return left + (PADDLE_WIDTH - 1) / 2  # partly under the right wall
    return (left + right) / 2


def ball_xy(frame: np.ndarray) -> tuple[float, float] | None:
    """Centre (x, y) of the ball in native pixels, or None when it is not visible on its own."""
    mask = _red(frame[PLAY_TOP:PLAY_BOTTOM + 1, PLAY_LEFT:PLAY_RIGHT + 1]).astype(np.uint8)
    count, _, stats, centroids = cv2.connectedComponentsWithStats(mask, connectivity=8)
    best = None
    for label in range(1, count):
        x, y, w, h, area = stats[label]
        if w <= BALL_MAX_W and h <= BALL_MAX_H and (best is None or area > stats[best][4]):
            best = label
    if best is None:
        return None
    cx, cy = centroids[best]
    return float(cx + PLAY_LEFT), float(cy + PLAY_TOP)


def ram_positions(ram: np.ndarray) -> tuple[float, tuple[float, float] | None]:
    """(paddle centre x, ball centre (x, y) or None) in native pixels, from Breakout's RAM.

    The ball is None when no ball is in play (y byte 0) or it has dropped below the visible screen.
    """
    paddle = float(ram[RAM_PADDLE]) + PADDLE_OFFSET
    y = float(ram[RAM_BALL_Y]) + BALL_Y_OFFSET
    if ram[RAM_BALL_Y] == 0 or y > PLAY_BOTTOM:
        return paddle, None
    return paddle, (float(ram[RAM_BALL_X]) + BALL_X_OFFSET, y)
