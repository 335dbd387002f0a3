"""Commit the ball as one object: draw it whole at one place the world model thinks it may be.

The decoder gives a colour distribution per pixel and a frame is its per-pixel most likely colour.
Where the model is unsure where the ball goes (a serve lands in one of three places, a bounce goes
one way or the other), the ball's probability is split between the outcomes and no pixel's most
likely colour is the ball's: the argmax draws no ball at all, and a ball once gone never comes back.

This sampler reads the ball colour's probability instead. When the drawn frame shows no whole ball,
the probability mass of the ball colour in the play area (pixels above a small floor) is the model's
expectation of balls: with that chance (capped at 1) one ball is drawn, at a 2x4-pixel placement
where the mass peaks, chosen among the peaks in proportion to the mass each covers. Temperature 0
takes the most likely outcome: a ball at the heaviest placement when at least half a ball is expected.
Breakout shows one ball at most, so red specks smaller than a ball (a fading ball, a trace beside a
whole one) and extra whole balls are cleared in every frame; their mass counts.

A ball in flight stays in play: when the previous frame showed one whole ball between the bricks and
the paddle, far enough above the paddle that no step can take it off the screen, the next frame
shows one too, where the model's mass peaks within a step's reach of it (however thin that mass).
Breakout never removes a ball there, but a per-pixel decoder unsure of the ball's exact next place
spreads its probability so thin that the expected count above is a poor chance of a ball: on the
steps where the ball was lost, the decoder had put a median of 0.2 ball of mass off its argmax
(part5.md). Whether the ball gets past the paddle is still the model's call.

A serve serves: when the step's random event is one of the classes that serve (Stage 4 finds them in the
data) and the previous frame had no ball in play, the next frame shows one, at a peak of the model's
ball mass between the bricks and the paddle (however thin). Given a serve class the decoder expected
only 0.2-0.57 of a ball after a lost life (part5.md): it knows a ball comes, not where, and spreads it.
"""
from __future__ import annotations

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from typing import Callable

from common.detectors import (BALL_MAX_H, BALL_MAX_W, BRICK_H, BRICK_ROWS, BRICK_TOP, PADDLE_ROWS, PLAY_BOTTOM,
                              PLAY_LEFT, PLAY_RIGHT, PLAY_TOP)

BALL_H, BALL_W = 4, 2           # the ball as the emulator draws it at frame skip 4
BALL_AREA = BALL_H * BALL_W
WHOLE_BALL_PX = 6               # a red blob of ball size with at least this many pixels is a ball
MASS_FLOOR = 0.02               # ball-colour probabilities below this are noise, not a possible ball
STEP_REACH = 16                 # pixels a ball can move in one agent step (4 frames), with margin
# a ball whose top row is in these rows is still in play a step later
FLIGHT_ROWS = (BRICK_TOP + BRICK_ROWS * BRICK_H, PADDLE_ROWS.start - STEP_REACH)
BELOW_BRICKS = slice(FLIGHT_ROWS[0], PADDLE_ROWS.start)   # where a ball in play is, bar one among the bricks


def ball_in_play(classes: torch.Tensor, ball_class: int) -> torch.Tensor:
    """(N,) bool for frames (N, 210, 160) of colour classes: a ball-colour pixel between the bricks and the
    paddle (the red bricks and the paddle share the ball's colour, so the rows above and below do not count)."""
    return (classes[:, BELOW_BRICKS, PLAY_LEFT:PLAY_RIGHT + 1] == ball_class).flatten(1).any(1)


def _ball_blobs(red: np.ndarray) -> list[tuple[np.ndarray, int]]:
    """(pixel mask, area) of every ball-sized red component of a (H, W) bool mask."""
    count, labels, stats, _ = cv2.connectedComponentsWithStats(red.astype(np.uint8), connectivity=8)
    return [(labels == label, int(stats[label][4])) for label in range(1, count)
            if stats[label][2] <= BALL_MAX_W and stats[label][3] <= BALL_MAX_H]


def _top_left(mask: np.ndarray) -> tuple[int, int]:
    """(row, column) of a blob's top-left pixel."""
    ys, xs = np.nonzero(mask)
    return int(ys.min()), int(xs.min())


def _distance(mask: np.ndarray, place: tuple[int, int] | None) -> float:
    """Pixels from a blob's top-left to `place`, both in play-area coordinates; 0 without a place."""
    if place is None:
        return 0.0
    y, x = _top_left(mask)
    return float(np.hypot(y - place[0], x - place[1]))


def balls_in_flight(classes: torch.Tensor, ball_class: int) -> list[tuple[int, int] | None]:
    """For frames (B, 210, 160) of colour classes: the (row, column) of the top-left pixel of the one whole
    ball in FLIGHT_ROWS, or None where there is none (or more than one ball in the play area)."""
    found = []
    for frame in classes.numpy():
        area = frame[PLAY_TOP:PLAY_BOTTOM + 1, PLAY_LEFT:PLAY_RIGHT + 1] == ball_class
        whole = [mask for mask, size in _ball_blobs(area) if size >= WHOLE_BALL_PX]
        if len(whole) != 1:
            found.append(None)
            continue
        y, x = _top_left(whole[0])
        found.append((y + PLAY_TOP, x + PLAY_LEFT) if FLIGHT_ROWS[0] <= y + PLAY_TOP < FLIGHT_ROWS[1] else None)
    return found


def commit_ball(classes: torch.Tensor, ball_prob: Callable[[int], torch.Tensor], ball_class: int,
                background_class: int, temperature: float = 1.0,
                generator: torch.Generator | None = None,
                in_flight: list[tuple[int, int] | None] | None = None,
                serve: list[bool] | None = None) -> torch.Tensor:
    """classes (B, 210, 160) uint8 argmax frames, ball_prob(b) the ball colour's probability in frame b
    (210, 160), asked for only where a frame shows no whole ball -> the frames with the ball committed
    (a copy; in frames that show a whole ball only the specks are cleared). in_flight[b]: the previous frame's
    ball in flight (balls_in_flight), which frame b then keeps, or None. serve[b]: frame b is a serve, which
    shows a ball between the bricks and the paddle."""
    out = classes.clone()
    rows, cols = slice(PLAY_TOP, PLAY_BOTTOM + 1), slice(PLAY_LEFT, PLAY_RIGHT + 1)
    for b in range(len(classes)):
        area = out[b, rows, cols].numpy()
        last = in_flight[b] if in_flight is not None else None
        last_here = None if last is None else (last[0] - PLAY_TOP, last[1] - PLAY_LEFT)
        blobs = _ball_blobs(area == ball_class)
        whole = [(mask, size) for mask, size in blobs if size >= WHOLE_BALL_PX]
        # Breakout has one ball: the one nearest the ball in flight, else the largest
        kept = min(whole, key=lambda blob: (_distance(blob[0], last_here), -blob[1]))[0] if whole else None
        for mask, _ in blobs:        # specks (a fading ball, a trace beside the ball) and extra balls are
            if mask is not kept:     # cleared; their probability still counts
                area[mask] = background_class
        if kept is not None:
            continue
        serving = last is None and serve is not None and serve[b]
        mass = ball_prob(b)[rows, cols].float() * torch.from_numpy(area != ball_class)
        if last is None and not serving:     # a ball in flight or a serve is placed by whatever mass there is
            mass = torch.where(mass >= MASS_FLOOR, mass, torch.zeros(()))
        expected = float(mass.sum()) / BALL_AREA
        placement = F.avg_pool2d(mass[None, None], (BALL_H, BALL_W), stride=1)[0, 0] * BALL_AREA  # top-left corners
        # only the placements that cover more than their neighbours: a ball where the mass peaks, not beside it
        peak = F.max_pool2d(placement[None, None], (2 * BALL_H - 1, 2 * BALL_W - 1), stride=1,
                            padding=(BALL_H - 1, BALL_W - 1))[0, 0]
        placement = torch.where(placement >= peak, placement, torch.zeros(()))
        if last is not None:   # within a step's reach of the ball in flight, which stays in play
            near = torch.zeros_like(placement)
            top, left = last_here
            near[max(0, top - STEP_REACH):top + STEP_REACH + 1, max(0, left - STEP_REACH):left + STEP_REACH + 1] = 1
            placement = placement * near
        if serving:            # between the bricks and the paddle, where Breakout serves
            near = torch.zeros_like(placement)
            near[BELOW_BRICKS.start - PLAY_TOP:BELOW_BRICKS.stop - PLAY_TOP - BALL_H + 1] = 1
            placement = placement * near
        if last is not None or serving:
            expected = float("inf") if float(placement.sum()) > 0 else 0.0
        if temperature == 0:
            if expected < 0.5:
                continue
            corner = int(placement.flatten().argmax())
        else:
            if float(torch.rand((), generator=generator)) >= min(1.0, expected):
                continue
            weights = placement.flatten().clamp(min=0) ** (1.0 / temperature)
            if float(weights.sum()) <= 0:
                continue
            corner = int(torch.multinomial(weights / weights.sum(), 1, generator=generator))
        y, x = divmod(corner, placement.shape[1])
        area[y:y + BALL_H, x:x + BALL_W] = ball_class
    return out
