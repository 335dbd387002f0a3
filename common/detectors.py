"""Find Breakout's paddle and ball in a native 210x160 RGB frame (for the world model's control measures).

Paddle and ball share one palette colour (also the top brick row's and a patch of the right wall's):
- the paddle is the red run in rows 189-192 inside the walls (x 8..151); at the right wall the paddle
  slides under the wall, so a run touching the wall is measured from its left edge (full width 16);
- the ball is a small red blob (2x4 px) anywhere in the playfield: connected components of red
  pixels, keeping the ones no bigger than the ball, so bricks (8x6) and the paddle (16x4) drop out.
  A ball touching a red brick or the paddle merges with it and is reported as not found (None).

The game's state, for game-level measures:
- bricks: the wall is 6 rows x 18 bricks, each 8x6 px, rows 57-92 and columns 8-151; a brick is
  there when most of its cell is lit (the ball covers at most 8 of a cell's 48 px);
- score and lives: the grey digits in rows 5-14, score at x 36/52/68 (three digits, leading zeros
  shown), lives at x 100. A glyph is 3x5 blocks of 4x2 px, read block by block (a block is lit
  when at least half its pixels are) and matched against the ten digit templates.
  The digits are drawn at the top of the screen before the ball reaches a brick further down in
  the same emulator frame, so a frame can still show the score from before its last hit.
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
BRICK_TOP, BRICK_ROWS, BRICK_COLUMNS, BRICK_W, BRICK_H = 57, 6, 18, 8, 6
BRICK_POINTS = (7, 7, 4, 4, 1, 1)  # per row, top first
DIGIT_TOP, DIGIT_W, DIGIT_H = 5, 12, 10
SCORE_X, LIVES_X = (36, 52, 68), 100
DIGIT_GLYPHS = ("###/#.#/#.#/#.#/###", ".#./.#./.#./.#./.#.", "###/..#/###/#../###", "###/..#/.##/..#/###",
                "#.#/#.#/###/..#/..#", "###/#../###/..#/###", "#../#../###/#.#/###", "###/..#/..#/..#/..#",
                "###/#.#/###/#.#/###", "###/#.#/###/..#/..#")  # 0-9 as seen on the emulator's screen
RAM_SCORE_HUNDREDS, RAM_SCORE_TENS_ONES = 76, 77  # the score in binary-coded decimal


def _red(region: np.ndarray) -> np.ndarray:
    return (region[..., 0] == RED[0]) & (region[..., 1] == RED[1]) & (region[..., 2] == RED[2])


def paddle_x(frame: np.ndarray) -> float | None:
    """Centre x of the paddle in native pixels, or None when no paddle is drawn."""
    return paddle_centre(_red(frame[PADDLE_ROWS, PLAY_LEFT:PLAY_RIGHT + 1]))


def paddle_centre(paddle_colour: np.ndarray) -> float | None:
    """paddle_x from a (paddle rows, play-area columns) bool mask of the paddle's colour (RGB or classes)."""
    columns = np.flatnonzero(paddle_colour.any(axis=0)) + PLAY_LEFT
    if columns.size == 0:
        return None
    runs = np.split(columns, np.flatnonzero(np.diff(columns) > 1) + 1)  # a ball passing by is a separate run
    paddle = max(runs, key=len)
    left, right = int(paddle[0]), int(paddle[-1])
    if right == PLAY_RIGHT and right - left + 1 < PADDLE_WIDTH:
        return left + (PADDLE_WIDTH - 1) / 2  # partly under the right wall
    return (left + right) / 2


def _balls(frame: np.ndarray) -> list[tuple[float, float, int]]:
    """(centre x, centre y, area) of every ball-sized red component in the playfield."""
    mask = _red(frame[PLAY_TOP:PLAY_BOTTOM + 1, PLAY_LEFT:PLAY_RIGHT + 1]).astype(np.uint8)
    count, _, stats, centroids = cv2.connectedComponentsWithStats(mask, connectivity=8)
    return [(float(centroids[label][0] + PLAY_LEFT), float(centroids[label][1] + PLAY_TOP), int(stats[label][4]))
            for label in range(1, count) if stats[label][2] <= BALL_MAX_W and stats[label][3] <= BALL_MAX_H]


def ball_xy(frame: np.ndarray) -> tuple[float, float] | None:
    """Centre (x, y) of the ball in native pixels, or None when it is not visible on its own."""
    balls = _balls(frame)
    if not balls:
        return None
    x, y, _ = max(balls, key=lambda ball: ball[2])  # the first of the largest
    return x, y


def ball_count(frame: np.ndarray) -> int:
    """How many balls are visible on their own: 1 is a ball in play, more is a drawing error."""
    return len(_balls(frame))


def brick_mask(frame: np.ndarray) -> np.ndarray:
    """(6, 18) bool, top row first: which bricks of the wall are there."""
    wall = frame[BRICK_TOP:BRICK_TOP + BRICK_ROWS * BRICK_H, PLAY_LEFT:PLAY_RIGHT + 1].any(axis=-1)
    return wall.reshape(BRICK_ROWS, BRICK_H, BRICK_COLUMNS, BRICK_W).mean(axis=(1, 3)) > 0.5


_GLYPH_DIGITS = {np.array([[c == "#" for c in row] for row in glyph.split("/")]).tobytes(): digit
                 for digit, glyph in enumerate(DIGIT_GLYPHS)}


def _digit(frame: np.ndarray, x: int) -> int | None:
    """The digit drawn at column x of the top line, or None when its blocks match no glyph."""
    lit = frame[DIGIT_TOP:DIGIT_TOP + DIGIT_H, x:x + DIGIT_W].any(axis=-1)
    blocks = lit.reshape(5, DIGIT_H // 5, 3, DIGIT_W // 3).mean(axis=(1, 3)) >= 0.5
    return _GLYPH_DIGITS.get(blocks.tobytes())


def score(frame: np.ndarray) -> int | None:
    """The score drawn at the top left, or None when a digit is unreadable."""
    shown = [_digit(frame, x) for x in SCORE_X]
    return None if None in shown else 100 * shown[0] + 10 * shown[1] + shown[2]


def lives(frame: np.ndarray) -> int | None:
    """The lives left drawn at the top, or None when the digit is unreadable."""
    return _digit(frame, LIVES_X)


def digits(frame: np.ndarray) -> tuple[int | None, ...]:
    """Every digit of the top line (score, then lives), each None when unreadable: to spot any change."""
    return tuple(_digit(frame, x) for x in (*SCORE_X, LIVES_X))


def ram_positions(ram: np.ndarray) -> tuple[float, tuple[float, float] | None]:
    """(paddle centre x, ball centre (x, y) or None) in native pixels, from Breakout's RAM.

    The ball is None when no ball is in play (y byte 0) or it has dropped below the visible screen.
    """
    paddle = float(ram[RAM_PADDLE]) + PADDLE_OFFSET
    y = float(ram[RAM_BALL_Y]) + BALL_Y_OFFSET
    if ram[RAM_BALL_Y] == 0 or y > PLAY_BOTTOM:
        return paddle, None
    return paddle, (float(ram[RAM_BALL_X]) + BALL_X_OFFSET, y)


def _brick_bit(row: int, column: int) -> tuple[int, int]:
    """(RAM byte, bit) of a brick. The wall is drawn as the console's playfield: 40 blocks of 4 px
    across the screen, each half from registers PF0 (bits 4-7, left to right), PF1 (bits 7-0) and
    PF2 (bits 0-7); a brick is two blocks, both bits set while it stands. The 36 bytes from RAM 0
    hold six bytes per register, in the order right PF2, PF1, PF0, left PF2, PF1, PF0, and within
    each six the bottom row first."""
    block = 2 + 2 * column  # the brick's left block; the wall's first block is at x 8
    half, offset = divmod(block, 20)
    register, bit = (0, 4 + offset) if offset < 4 else (1, 11 - offset) if offset < 12 else (2, offset - 12)
    return 6 * (5 - 3 * half - register) + BRICK_ROWS - 1 - row, bit


_BRICK_BYTES, _BRICK_BITS = np.array([[_brick_bit(r, c) for c in range(BRICK_COLUMNS)]
                                      for r in range(BRICK_ROWS)]).transpose(2, 0, 1)


def ram_bricks(ram: np.ndarray) -> np.ndarray:
    """(6, 18) bool, top row first: the bricks standing, from Breakout's RAM."""
    return (np.asarray(ram)[_BRICK_BYTES] >> _BRICK_BITS & 1).astype(bool)


def ram_score(ram: np.ndarray) -> int:
    """The score from Breakout's RAM (three binary-coded decimal digits)."""
    hundreds, rest = int(ram[RAM_SCORE_HUNDREDS]), int(ram[RAM_SCORE_TENS_ONES])
    return 100 * (hundreds & 15) + 10 * (rest >> 4) + (rest & 15)
