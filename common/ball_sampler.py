"""Commit the ball as one object: draw it whole at one place the world model thinks it may be.

The decoder gives a colour distribution per pixel and a frame is its per-pixel most likely colour.
Where the model is unsure where the ball goes (a serve lands in one of three places, a bounce goes
one way or the other), the ball's probability is split between the outcomes and no pixel's most
likely colour is the ball's: the argmax draws no ball at all, and a ball once gone never comes back.

This sampler reads the ball colour's probability instead. When the drawn frame shows no whole ball,
the probability mass of the ball colour in the play area (pixels above a small floor) is the model's
expectation of balls: with that chance (capped at 1) one ball is drawn, at a 2x4-pixel placement
where the mass peaks, chosen among the peaks in proportion to the mass each covers. Remnants of a fading ball (red specks smaller than a
ball) are cleared first and their mass counts. Temperature 0 takes the most likely outcome: a ball
at the heaviest placement when at least half a ball is expected.
"""
from __future__ import annotations

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from typing import Callable

from common.detectors import BALL_MAX_H, BALL_MAX_W, PLAY_BOTTOM, PLAY_LEFT, PLAY_RIGHT, PLAY_TOP

BALL_H, BALL_W = 4, 2           # the ball as the emulator draws it at frame skip 4
BALL_AREA = BALL_H * BALL_W
WHOLE_BALL_PX = 6               # a red blob of ball size with at least this many pixels is a ball
MASS_FLOOR = 0.02               # ball-colour probabilities below this are noise, not a possible ball


def _ball_blobs(red: np.ndarray) -> list[tuple[np.ndarray, int]]:
    """(pixel mask, area) of every ball-sized red component of a (H, W) bool mask."""
    count, labels, stats, _ = cv2.connectedComponentsWithStats(red.astype(np.uint8), connectivity=8)
    return [(labels == label, int(stats[label][4])) for label in range(1, count)
            if stats[label][2] <= BALL_MAX_W and stats[label][3] <= BALL_MAX_H]


def commit_ball(classes: torch.Tensor, ball_prob: Callable[[int], torch.Tensor], ball_class: int,
                background_class: int, temperature: float = 1.0,
                generator: torch.Generator | None = None) -> torch.Tensor:
    """classes (B, 210, 160) uint8 argmax frames, ball_prob(b) the ball colour's probability in frame b
    (210, 160), asked for only where a frame shows no whole ball -> the frames with the ball committed
    (a copy; frames that show a whole ball are returned unchanged)."""
    out = classes.clone()
    rows, cols = slice(PLAY_TOP, PLAY_BOTTOM + 1), slice(PLAY_LEFT, PLAY_RIGHT + 1)
    for b in range(len(classes)):
        area = out[b, rows, cols].numpy()
        blobs = _ball_blobs(area == ball_class)
        if any(size >= WHOLE_BALL_PX for _, size in blobs):
            continue
        for mask, _ in blobs:        # specks of a fading ball: cleared, their probability still counts
            area[mask] = background_class
        mass = ball_prob(b)[rows, cols].float() * torch.from_numpy(area != ball_class)
        mass = torch.where(mass >= MASS_FLOOR, mass, torch.zeros(()))
        expected = float(mass.sum()) / BALL_AREA
        placement = F.avg_pool2d(mass[None, None], (BALL_H, BALL_W), stride=1)[0, 0] * BALL_AREA  # top-left corners
        # only the placements that cover more than their neighbours: a ball where the mass peaks, not beside it
        peak = F.max_pool2d(placement[None, None], (2 * BALL_H - 1, 2 * BALL_W - 1), stride=1,
                            padding=(BALL_H - 1, BALL_W - 1))[0, 0]
        placement = torch.where(placement >= peak, placement, torch.zeros(()))
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
