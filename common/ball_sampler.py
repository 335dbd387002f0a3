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

A ball in flight stays in play: when the previous frame showed one whole ball anywhere from the top
wall down to far enough above the paddle that no step can take it off the screen (among the bricks
too), the next frame shows one too, at the heaviest peak of the model's mass within a step's reach of
it (however thin that mass): the step's random event was the draw, and a second draw among the peaks
put the ball off the real one's path more often (part5.md). So does a ball nearer the paddle that is
rising, or whose last move, made again, leaves it above the paddle: a ball crosses those rows in up to
four steps, and only the step that takes it to the paddle may lose it.
Breakout never removes a ball there, but a per-pixel decoder unsure of the ball's exact next place
spreads its probability so thin that the expected count above is a poor chance of a ball: on the
steps where the ball was lost, the decoder had put a median of 0.2 ball of mass off its argmax
(part5.md). Whether the ball gets past the paddle is still the model's call.

At the paddle the ball may come back or be missed, and the step's random event says which: a ball
just above the paddle stays in play when the event is one of the classes that send it back (Stage 4
finds them in the data) and the paddle is within reach of it, placed the same way within reach; after
any other class, or with the paddle too far away, the expected count decides, as anywhere else. In the
emulator the ball came back off the paddle from at most 20 px of the paddle's centre (bench/paddle_returns.py);
without the paddle's reach the event sent balls back from bare floor.

A serve serves: when the step's random event is one of the classes that serve (Stage 4 finds them in the
data) and the previous frame had no ball in play, the next frame shows one. It lands at one of the places
where the recorded games' serves landed, in their proportions (Stage 4 counts them: `serve_places`),
whatever the decoder drew: the world model knows that a ball comes, not where. Given a serve class the
decoder expected only 0.2-0.57 of a ball after a lost life, and where a quick run's model drew its serves
their x was 0.42 in total variation from the emulator's (part5.md). Without serve places (a map from
before they were counted) the ball lands at a peak of the model's ball mass between the bricks and the
paddle.

The committer works on the rows above the paddle: the paddle has the ball's colour, so a ball touching
it is found on its own there, and what happens beside and below the paddle is left to the decoder,
but for one thing: where the ball above is kept (in flight, or sent back), a ball-sized blob beside
the paddle is a second ball, which no step can have brought there, and it is cleared.

Broken bricks stay broken (commit_wall): a brick the previous frame did not show is cleared from the next,
unless the whole wall was gone (Breakout then draws a new one). The decoder redrew a few bricks in long play
(3 in the long-play games of a quick run's model), and a brick that comes back is one a player breaks twice.

The paddle stays too (commit_paddle): where the ball met the paddle the decoder sometimes smeared the
paddle into specks, and a frame without one is fed back, so the paddle never came back (2 of 8 neural
games of 300 steps lost it for good). A frame whose paddle rows show none of the paddle's colour gets a
whole paddle where that colour's probability peaks, or where the previous frame had it.
"""
from __future__ import annotations

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from typing import Callable

from common.detectors import (BALL_MAX_H, BALL_MAX_W, BRICK_COLUMNS, BRICK_H, BRICK_ROWS, BRICK_TOP, BRICK_W,
                              PADDLE_ROWS, PADDLE_WIDTH, PLAY_BOTTOM, PLAY_LEFT, PLAY_RIGHT, PLAY_TOP, paddle_centre)

BALL_H, BALL_W = 4, 2           # the ball as the emulator draws it at frame skip 4
BALL_AREA = BALL_H * BALL_W
WHOLE_BALL_PX = 6               # a red blob of ball size with at least this many pixels is a ball
# a red blob up to this size that is not ball-sized is a smear of the ball over two places (the decoder
# unsure where it went); the committer clears it like a speck, so that the ball it draws does not touch it
# (a single red brick is 8 px wide)
SMEAR_MAX_W, SMEAR_MAX_H = 2 * BALL_W + 2, 2 * BALL_H + 2
MASS_FLOOR = 0.02               # ball-colour probabilities below this are noise, not a possible ball
STEP_REACH = 16                 # pixels a ball can move in one agent step (4 frames), with margin
PADDLE_REACH = PADDLE_WIDTH // 2 + STEP_REACH   # ball centre to paddle centre, in x, for the paddle to send it back
# a ball whose top row is in these rows is still in play a step later (from the top wall, among the bricks)
FLIGHT_ROWS = (PLAY_TOP, PADDLE_ROWS.start - STEP_REACH)
BELOW_BRICKS = slice(BRICK_TOP + BRICK_ROWS * BRICK_H, PADDLE_ROWS.start)   # where a ball in play is, bar one among the bricks
AT_PADDLE = slice(FLIGHT_ROWS[1], PADDLE_ROWS.start)      # a ball here is sent back or missed on the next step
ABOVE_PADDLE = slice(PLAY_TOP, PADDLE_ROWS.start)         # the rows the committer works on
BESIDE_PADDLE = slice(PADDLE_ROWS.start, PLAY_BOTTOM + 1)  # a missed ball passes here
WALL_ROWS = slice(BRICK_TOP, BRICK_TOP + BRICK_ROWS * BRICK_H)
WALL_COLUMNS = slice(PLAY_LEFT, PLAY_LEFT + BRICK_COLUMNS * BRICK_W)


def ball_in_play(classes: torch.Tensor, ball_class: int, rows: slice = BELOW_BRICKS) -> torch.Tensor:
    """(N,) bool for frames (N, 210, 160) of colour classes: a ball-colour pixel between the bricks and the
    paddle (the red bricks and the paddle share the ball's colour, so the rows above and below do not count),
    or in `rows` of those (AT_PADDLE: a ball about to be sent back or missed)."""
    return (classes[:, rows, PLAY_LEFT:PLAY_RIGHT + 1] == ball_class).flatten(1).any(1)


SINCE_BALL_CAP = 15   # steps since a ball was last in play are counted up to this; the cap also stands for "never"


def steps_since_ball(in_play: np.ndarray | torch.Tensor, start: int = SINCE_BALL_CAP) -> np.ndarray:
    """Per frame of a game, (N,) bool ball in play (ball_in_play) -> (N,) int64: the steps since a frame last
    showed a ball in play (0 on a frame that shows one), capped at SINCE_BALL_CAP; `start` before the first.

    FIRE serves only once the lives digit has dropped, 4-5 steps after the ball left the screen; the frames
    of those steps look like the frames of a player waiting to serve, so the map's event head reads this count.
    """
    out, since = np.empty(len(in_play), np.int64), int(start)
    for i, shown in enumerate(np.asarray(in_play)):
        out[i] = since = count_since_ball(since, shown)
    return out


def count_since_ball(since: np.ndarray | int, in_play: np.ndarray | bool) -> np.ndarray:
    """One step of steps_since_ball for one count or many: 0 where the new frame shows a ball in play, else
    one more, up to the cap."""
    return np.where(in_play, 0, np.minimum(np.asarray(since) + 1, SINCE_BALL_CAP))


def _ball_blobs(red: np.ndarray, max_w: int = BALL_MAX_W, max_h: int = BALL_MAX_H) -> list[tuple[np.ndarray, int, bool]]:
    """(pixel mask, area, ball-sized) of every red component of a (H, W) bool mask within max_w x max_h."""
    count, labels, stats, _ = cv2.connectedComponentsWithStats(red.astype(np.uint8), connectivity=8)
    return [(labels == label, int(stats[label][4]), bool(stats[label][2] <= BALL_MAX_W and stats[label][3] <= BALL_MAX_H))
            for label in range(1, count) if stats[label][2] <= max_w and stats[label][3] <= max_h]


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


def _paddle_within_reach(frame: np.ndarray, ball_class: int, ball_x: float) -> bool:
    """Whether the paddle of a (210, 160) frame of colour classes is within PADDLE_REACH of a ball's centre x."""
    paddle = paddle_centre(frame[PADDLE_ROWS, PLAY_LEFT:PLAY_RIGHT + 1] == ball_class)
    return paddle is not None and abs(ball_x - paddle) <= PADDLE_REACH


def _whole_ball_top_left(frame: np.ndarray, ball_class: int, rows: slice = ABOVE_PADDLE) -> tuple[int, int] | None:
    """(row, column) from the top-left of `rows` x the play area's columns of the one whole ball there in a
    (210, 160) frame of colour classes (by default above the paddle, whose first row is the play area's),
    or None where there is none, or more than one."""
    area = frame[rows, PLAY_LEFT:PLAY_RIGHT + 1] == ball_class
    whole = [mask for mask, size, _ in _ball_blobs(area) if size >= WHOLE_BALL_PX]
    return _top_left(whole[0]) if len(whole) == 1 else None


def serve_place(frame: np.ndarray, ball_class: int) -> tuple[int, int] | None:
    """(row, column) on the screen of the top-left pixel of the one whole ball between the bricks and the
    paddle of a (210, 160) frame of colour classes (where a ball after none was served), or None where there
    is none, or more than one."""
    ball = _whole_ball_top_left(frame, ball_class, BELOW_BRICKS)
    return None if ball is None else (ball[0] + BELOW_BRICKS.start, ball[1] + PLAY_LEFT)


def draw_serve_place(places: torch.Tensor, temperature: float = 1.0,
                     generator: torch.Generator | None = None) -> tuple[int, int]:
    """One (row, column) of places (N, 3) int64 rows of (row, column, count): in proportion to the counts
    sharpened by 1 / temperature; temperature 0 takes the commonest."""
    counts = places[:, 2].double()
    if temperature == 0:
        chosen = int(counts.argmax())
    else:
        weights = (counts / counts.max()) ** (1.0 / temperature)
        chosen = int(torch.multinomial(weights / weights.sum(), 1, generator=generator))
    return int(places[chosen, 0]), int(places[chosen, 1])


def wall_cells(classes: torch.Tensor, background_class: int) -> torch.Tensor:
    """(B, 6, 18) bool for frames (B, 210, 160) of colour classes: the bricks there, top row first (a cell
    more than half drawn, as the detector counts them)."""
    drawn = classes[:, WALL_ROWS, WALL_COLUMNS] != background_class
    return drawn.view(-1, BRICK_ROWS, BRICK_H, BRICK_COLUMNS, BRICK_W).sum(dim=(2, 4)) > BRICK_H * BRICK_W // 2


def commit_wall(classes: torch.Tensor, previous: torch.Tensor, background_class: int) -> torch.Tensor:
    """classes (B, 210, 160) the next frames, previous (B, 210, 160) the frames before -> the next frames
    with every brick that the frame before did not show cleared (a copy), unless that frame showed no
    brick at all (a new wall)."""
    before, now = wall_cells(previous, background_class), wall_cells(classes, background_class)
    back = now & ~before & before.flatten(1).any(dim=1)[:, None, None]
    if not bool(back.any()):
        return classes
    out = classes.clone()
    cleared = back.repeat_interleave(BRICK_H, dim=1).repeat_interleave(BRICK_W, dim=2)
    wall = out[:, WALL_ROWS, WALL_COLUMNS]
    wall[cleared] = background_class
    return out


def balls_to_keep(classes: torch.Tensor, ball_class: int, events: torch.Tensor | None = None,
                  keep_events: torch.Tensor | None = None, in_flight: bool = True,
                  at_paddle: bool = True, before: torch.Tensor | None = None) -> list[tuple[int, int, int] | None]:
    """For the previous frames (B, 210, 160) of colour classes: (row, column, heading) of the top-left pixel
    of the one whole ball that the next frames keep, or None. A ball in FLIGHT_ROWS is kept (in_flight); a
    ball in AT_PADDLE is kept when the step's event class (events (B,)) is one of keep_events and the paddle
    is within PADDLE_REACH of it (at_paddle).

    With the frames `before` those (B, 210, 160), the ball's last move says more (in_flight): a rising
    ball is kept, and so is a falling one whose next move at the same speed leaves it above the paddle.
    A ball crosses AT_PADDLE in up to four steps (4-8 px a step in the emulator); without its speed,
    every one of those steps was a draw of the event that could miss it, where the game has one.
    Such a ball keeps its heading, 1 down or -1 up (0: either way): near the paddle nothing else turns it,
    and a falling ball sent back up there would bounce off bare floor."""
    found = []
    for b, frame in enumerate(classes.numpy()):
        ball = _whole_ball_top_left(frame, ball_class)
        place = None
        if ball is not None:
            y, x = ball
            top = y + PLAY_TOP
            flying = in_flight and FLIGHT_ROWS[0] <= top < FLIGHT_ROWS[1]
            heading = 0
            if in_flight and not flying and before is not None:
                last = _whole_ball_top_left(before[b].numpy(), ball_class)
                flying = last is not None and top + (y - last[0]) + BALL_H <= PADDLE_ROWS.start
                heading = int(np.sign(y - last[0])) if flying else 0
            sent_back = (at_paddle and top >= AT_PADDLE.start and events is not None and keep_events is not None
                         and bool(torch.isin(events[b:b + 1].cpu(), keep_events))
                         and _paddle_within_reach(frame, ball_class, x + PLAY_LEFT + (BALL_W - 1) / 2))
            place = (top, x + PLAY_LEFT, heading) if flying or sent_back else None
        found.append(place)
    return found


PEAK_KERNEL = np.ones((2 * BALL_H - 1, 2 * BALL_W - 1), np.uint8)   # a placement's neighbours, centred


def ball_placements(mass: torch.Tensor) -> torch.Tensor:
    """(H, W) float32 ball-colour mass -> (H - BALL_H + 1, W - BALL_W + 1): the mass a ball whose top-left
    pixel is there would cover. OpenCV's box filter: the same sums as an average pooling, over 10x faster."""
    sums = cv2.boxFilter(mass.numpy(), -1, (BALL_W, BALL_H), normalize=False, anchor=(0, 0),
                         borderType=cv2.BORDER_CONSTANT)
    return torch.from_numpy(sums[:mass.shape[0] - BALL_H + 1, :mass.shape[1] - BALL_W + 1])


def commit_ball(classes: torch.Tensor, ball_prob: Callable[[int], torch.Tensor], ball_class: int,
                background_class: int, temperature: float = 1.0,
                generator: torch.Generator | None = None,
                keep: list[tuple[int, int, int] | None] | None = None,
                serve: list[bool] | None = None, serve_places: torch.Tensor | None = None) -> torch.Tensor:
    """classes (B, 210, 160) uint8 argmax frames, ball_prob(b) the ball colour's probability in frame b
    (210, 160), asked for only where a frame shows no whole ball -> the frames with the ball committed
    (a copy; in frames that show a whole ball only the specks are cleared). keep[b]: the previous frame's
    ball (balls_to_keep: row, column and heading), which frame b then keeps, or None.
    serve[b]: frame b is a serve, which shows a ball between the bricks and the paddle, at one of
    serve_places (N, 3) (draw_serve_place) where given, else where the model's mass peaks. Only the rows
    above the paddle are read and drawn, and where a ball is kept, a ball-sized blob beside the paddle is
    cleared."""
    out = classes.clone()
    rows, cols = ABOVE_PADDLE, slice(PLAY_LEFT, PLAY_RIGHT + 1)
    for b in range(len(classes)):
        area = out[b, rows, cols].numpy()
        last = keep[b] if keep is not None else None
        last_here, heading = (None, 0) if last is None else ((last[0] - PLAY_TOP, last[1] - PLAY_LEFT), last[2])
        blobs = _ball_blobs(area == ball_class, SMEAR_MAX_W, SMEAR_MAX_H)
        whole = [(mask, size) for mask, size, ball_sized in blobs if ball_sized and size >= WHOLE_BALL_PX]
        # Breakout has one ball: the one nearest the ball kept, else the largest
        kept = min(whole, key=lambda blob: (_distance(blob[0], last_here), -blob[1]))[0] if whole else None
        for mask, _, _ in blobs:     # specks (a fading ball, a trace beside the ball), smears and extra balls are
            if mask is not kept:     # cleared; their probability still counts
                area[mask] = background_class
        if last is not None:   # Breakout has one ball, and the one kept is above the paddle
            beside = out[b, BESIDE_PADDLE, cols].numpy()
            for mask, _, _ in _ball_blobs(beside == ball_class):
                beside[mask] = background_class
        serving = last is None and serve is not None and serve[b]
        if serving and serve_places is not None and len(serve_places):
            if kept is not None:
                area[kept] = background_class
            y, x = draw_serve_place(serve_places, temperature, generator)
            area[y - PLAY_TOP:y - PLAY_TOP + BALL_H, x - PLAY_LEFT:x - PLAY_LEFT + BALL_W] = ball_class
            continue
        if kept is not None:
            continue
        mass = ball_prob(b)[rows, cols].float() * torch.from_numpy(area != ball_class)
        if last is None and not serving:     # a ball kept or served is placed by whatever mass there is
            mass = torch.where(mass >= MASS_FLOOR, mass, torch.zeros(()))
        expected = float(mass.sum()) / BALL_AREA
        placement = ball_placements(mass)
        # only the placements that cover more than their neighbours: a ball where the mass peaks, not beside it
        peak = torch.from_numpy(cv2.dilate(placement.numpy(), PEAK_KERNEL, borderType=cv2.BORDER_CONSTANT,
                                           borderValue=float("-inf")))
        placement = torch.where(placement >= peak, placement, torch.zeros(()))
        if last is not None:   # within a step's reach of the ball kept, which stays in play
            near = torch.zeros_like(placement)
            top, left = last_here
            near[max(0, top - STEP_REACH):top + STEP_REACH + 1, max(0, left - STEP_REACH):left + STEP_REACH + 1] = 1
            if heading > 0:    # still falling: not above where it was
                near[:top] = 0
            elif heading < 0:  # still rising
                near[top + 1:] = 0
            placement = placement * near
        if serving:            # between the bricks and the paddle, where Breakout serves
            near = torch.zeros_like(placement)
            near[BELOW_BRICKS.start - PLAY_TOP:] = 1
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
            if last is not None:   # a ball kept goes where the model most expects it: the event was the draw
                corner = int(weights.argmax())
            else:
                corner = int(torch.multinomial(weights / weights.sum(), 1, generator=generator))
        y, x = divmod(corner, placement.shape[1])
        area[y:y + BALL_H, x:x + BALL_W] = ball_class
    return out


def commit_paddle(classes: torch.Tensor, ball_prob: Callable[[int], torch.Tensor], ball_class: int,
                  previous: torch.Tensor) -> torch.Tensor:
    """classes (B, 210, 160) frames after commit_ball, ball_prob(b) the ball colour's (= the paddle's)
    probability in frame b, previous (B, 210, 160) the frames before -> the frames with a whole paddle
    drawn where none is left (a copy; frames that show any paddle are left alone)."""
    out = classes.clone()
    cols = slice(PLAY_LEFT, PLAY_RIGHT + 1)
    for b in range(len(classes)):
        if bool((out[b, PADDLE_ROWS, cols] == ball_class).any()):
            continue
        mass = ball_prob(b)[PADDLE_ROWS, cols].float().sum(0)                       # per column
        window = F.avg_pool1d(mass[None, None], PADDLE_WIDTH, stride=1)[0, 0] * PADDLE_WIDTH   # per left edge
        if float(window.max()) >= PADDLE_WIDTH / 2:         # an eighth of a paddle's colour mass: a faint paddle
            left = int(window.argmax()) + PLAY_LEFT
        else:
            centre = paddle_centre((previous[b, PADDLE_ROWS, cols] == ball_class).numpy())
            if centre is None:
                continue
            left = int(round(centre - (PADDLE_WIDTH - 1) / 2))
        left = min(max(left, PLAY_LEFT), PLAY_RIGHT + 1 - PADDLE_WIDTH)
        out[b, PADDLE_ROWS, left:left + PADDLE_WIDTH] = ball_class
    return out
