"""Game-level measures: does the neural game play Breakout like the emulator, from the same states, same policy?

Start states are made by the emulator itself (the recorder's env, frame skip 4, no-op starts drawn
from a seed), so no recording is needed and both games start from identical frames: the emulator
restores its saved state, the neural game gets its last k frames and every action since the game began.
- game_start: a new game after a few NOOPs, no ball in play yet;
- after_lost_life: FIRE, then random moves (never FIRE) until the emulator takes a life: the ball is
  gone and the next one not yet served;
- ball_in_play: ball-following play for a few dozen steps after FIRE, ending with one ball on screen.

The measures, neural game beside the emulator:
- serve: from the no-ball starts, FIRE then NOOPs: the share of starts with a ball in play within 10
  steps, and the total-variation distance between the x of the first served ball in the two games
  (8 equal bins over the play area's columns 8-151); beside it the control, 10 NOOPs without FIRE,
  after which the emulator shows no ball: a ball there is a serve nobody asked for;
- ball kept: 30-step windows from ball-in-play starts, the ball-following policy choosing from the
  emulator's frames and the neural game fed the same actions open loop: the share of steps on which
  the emulator shows a ball and the neural frame exactly one (for the emulator itself: exactly one);
  also teacher-forced, with the random events the latent model infers from the emulator's frames;
- ball within 4 px (Euclidean; absent in both = match) on the same windows, up to the emulator's
  first random event: before it the frames determine where the ball goes, after it they do not;
- long play: the ball-following policy plays each game closed loop on its own frames (and again a player
  pressing random keys, who misses most balls: the neural game must lose and serve balls as often): steps with
  exactly one ball, serves, bricks broken and bricks back, balls sent back up where the paddle was out
  of reach (the emulator: never), steps without a paddle, lives lost and score gained (read from the digits), and digit changes
  with no brick broken and no ball lost just before.

A random event is what the world model samples rather than reads off the frames: a serve (a ball
where none was in play) or a change of the ball's direction (the sign of its x or y step flips),
taken from the emulator's RAM. A bounce late in a step shows on the next step.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np
import torch
from tqdm import tqdm

from common.action_to_latent import knob_positions, previous_action_rows
from common.ball_sampler import AT_PADDLE, PADDLE_REACH
from common.control_eval import ball_match
from common.dataset import FIRE, LEFT, NOOP, RIGHT
from common.detectors import (PLAY_LEFT, PLAY_RIGHT, ball_count, ball_xy, brick_mask, digits, lives, paddle_x,
                              ram_positions, score)
from common.recorder import make_env

RANDOM_SHARE = 0.15        # the policy's uniformly random actions
FOLLOW_DEADBAND_PX = 4.0   # the policy leaves the paddle where it is when the ball is this close in x
SERVE_ACTIONS = (FIRE,) + (NOOP,) * 9
NOOP_ACTIONS = (NOOP,) * 10   # the control: without FIRE the emulator serves no ball
SERVE_BINS = 8
# In long play a serve is a ball appearing after 2+ steps without one, between the wall and the paddle
# (the emulator serves at y ~135); a ball hidden by a red brick or the paddle for 1-3 steps reappears next to them.
SERVE_GAP, SERVE_ROWS = 2, (115.0, 175.0)
# The score can show a hit one step late; the lives digit drops 3-7 steps after the ball leaves the screen.
BRICK_LAG, BALL_LOST_LAG = 1, 10


@dataclass
class Start:
    """An emulator state both games start from."""
    frames: np.ndarray   # (k, 210, 160, 3) uint8: the last k frames, oldest first
    rams: np.ndarray     # (2, 128) uint8: the RAM after the last two frames (the ball's last step)
    actions: list[int]   # every action since the game began (the reset's no-ops are not actions)
    state: Any           # ale.cloneState() after the last frame


class Emulator:
    """The recorder's Breakout env as one game being played, keeping its frames, RAM and actions."""

    def __init__(self):
        self.env = make_env("breakout", frame_skip=4, noop_max=30)
        self.env.reset()  # gymnasium steps only a reset env, also after restoreState()
        self.ale = self.env.unwrapped.ale

    def new_game(self, rng: np.random.Generator) -> None:
        """A new game; rng draws the reset's no-ops, which decide among other things where balls are served."""
        self.env.unwrapped.np_random = rng
        self.env.reset()
        self.frames, self.rams = [self.ale.getScreenRGB()], [self.ale.getRAM().copy()]
        self.actions, self.over = [], False

    def restore(self, start: Start) -> None:
        """Back to a start; the lists go on from its last frame."""
        self.ale.restoreState(start.state)
        self.frames, self.rams = [start.frames[-1]], [start.rams[-1]]
        self.actions, self.over = list(start.actions), False

    def step(self, action: int) -> np.ndarray:
        _, _, terminated, truncated, _ = self.env.step(action)
        self.frames.append(self.ale.getScreenRGB())
        self.rams.append(self.ale.getRAM().copy())
        self.actions.append(int(action))
        self.over = terminated or truncated
        return self.frames[-1]

    def start(self, context_frames: int) -> Start:
        """The game as it stands; before k frames exist the first one repeats, as in the recordings."""
        frames = [self.frames[0]] * max(0, context_frames - len(self.frames)) + self.frames[-context_frames:]
        rams = ([self.rams[0]] + self.rams)[-2:]
        return Start(np.stack(frames), np.stack(rams), list(self.actions), self.ale.cloneState())


def follow_ball(frame: np.ndarray, rng: np.random.Generator, random_share: float = RANDOM_SHARE) -> int:
    """Move the paddle toward the ball's x, FIRE when no ball is in play; a random action at `random_share`."""
    if rng.random() < random_share:
        return int(rng.integers(4))
    ball, paddle = ball_xy(frame), paddle_x(frame)
    if ball is None:
        return FIRE
    if paddle is None or abs(ball[0] - paddle) <= FOLLOW_DEADBAND_PX:
        return NOOP
    return RIGHT if ball[0] > paddle else LEFT


def game_start(emulator: Emulator, context_frames: int, rng: np.random.Generator) -> Start:
    """A new game after 2-9 NOOPs: no ball in play yet."""
    emulator.new_game(rng)
    for _ in range(int(rng.integers(2, 10))):
        emulator.step(NOOP)
    return emulator.start(context_frames)


def after_lost_life(emulator: Emulator, context_frames: int, rng: np.random.Generator) -> Start:
    """The step on which the emulator takes a life: FIRE, then random moves without FIRE, so none is served."""
    emulator.new_game(rng)
    emulator.step(FIRE)
    lives_before = emulator.ale.lives()
    while emulator.ale.lives() == lives_before:
        emulator.step(int(rng.choice((NOOP, RIGHT, LEFT))))
    return emulator.start(context_frames)


def ball_in_play(emulator: Emulator, context_frames: int, rng: np.random.Generator) -> Start:
    """20-59 steps of ball-following play from a new game, then on until exactly one ball is on screen."""
    emulator.new_game(rng)
    for _ in range(int(rng.integers(20, 60))):
        emulator.step(follow_ball(emulator.frames[-1], rng))
    while ball_count(emulator.frames[-1]) != 1:
        emulator.step(follow_ball(emulator.frames[-1], rng))
    return emulator.start(context_frames)


START_MAKERS = {"game_start": game_start, "after_lost_life": after_lost_life, "ball_in_play": ball_in_play}


def make_starts(context_frames: int, count: int, seed: int = 0) -> dict[str, list[Start]]:
    """`count` starts of each kind; start n of kind i depends only on (seed, i, n)."""
    emulator = Emulator()
    return {kind: [make(emulator, context_frames, np.random.default_rng([seed, i, n]))
                   for n in tqdm(range(count), desc=f"starts: {kind}", unit="start", leave=False)]
            for i, (kind, make) in enumerate(START_MAKERS.items())}


def random_events(balls: Sequence[tuple[float, float] | None]) -> np.ndarray:
    """(len(balls),) bool: a serve (a ball after none) or a change of direction (the sign of the x or y
    step differs from the previous step's, where that was not 0) on each step; the first has nothing before it."""
    events = np.zeros(len(balls), bool)
    for t in range(1, len(balls)):
        if balls[t] is None:
            continue
        if balls[t - 1] is None:
            events[t] = True
        elif t >= 2 and balls[t - 2] is not None:
            before, now = np.subtract(balls[t - 1], balls[t - 2]), np.subtract(balls[t], balls[t - 1])
            events[t] = bool(np.any((before != 0) & (np.sign(now) != np.sign(before))))
    return events


def first_event(start: Start, rams: Sequence[np.ndarray]) -> int:
    """The step (1-based) of the emulator's first random event after `start`, or len(rams) + 1 without one."""
    events = random_events([ram_positions(ram)[1] for ram in (*start.rams, *rams)])[len(start.rams):]
    return int(events.argmax()) + 1 if events.any() else len(rams) + 1


def _play(step: Callable[[int], np.ndarray], frame: np.ndarray, steps: int, choose: Callable[[np.ndarray], int],
          over: Callable[[], bool] = lambda: False) -> list[np.ndarray]:
    """Up to `steps` frames, each action chosen from the newest frame (closed loop); stops when the game is over."""
    frames = []
    for _ in range(steps):
        if over():
            break
        frame = step(choose(frame))
        frames.append(frame)
    return frames


# ----- serve -----

def first_ball(frames: Sequence[np.ndarray]) -> tuple[int | None, float | None]:
    """(step, x) of the first frame with a ball in play, or (None, None)."""
    for step, frame in enumerate(frames, 1):
        ball = ball_xy(frame)
        if ball is not None:
            return step, ball[0]
    return None, None


def serve_x_counts(xs: Sequence[float]) -> np.ndarray:
    """Counts of served balls' x in 8 equal bins over the play area's columns."""
    return np.histogram(xs, bins=SERVE_BINS, range=(PLAY_LEFT, PLAY_RIGHT + 1))[0]


def total_variation(p: np.ndarray, q: np.ndarray) -> float | None:
    """Total-variation distance between two histograms' distributions; None when one is empty."""
    if p.sum() == 0 or q.sum() == 0:
        return None
    return float(0.5 * np.abs(p / p.sum() - q / q.sum()).sum())


def _mean(values: Sequence[float]) -> float | None:
    return float(np.mean(values)) if len(values) else None


def serve_summary(neural: Sequence[tuple], emulator: Sequence[tuple]) -> dict[str, Any]:
    """Serve figures from (step, x) of each start's first ball in both games."""
    sides = {"neural": neural, "emulator": emulator}
    counts = {side: serve_x_counts([x for _, x in balls if x is not None]) for side, balls in sides.items()}
    return {
        "starts": len(emulator),
        "served_within_10_steps": {side: _mean([s is not None for s, _ in balls]) for side, balls in sides.items()},
        "first_ball_step_mean": {side: _mean([s for s, _ in balls if s is not None]) for side, balls in sides.items()},
        "serve_x_tv": total_variation(counts["neural"], counts["emulator"]),
        "serve_x_counts": {side: c.tolist() for side, c in counts.items()},
    }


def serve_first_balls(game: Any, emulator: Emulator, starts: Sequence[Start], event_temperature: float = 1.0,
                      actions: Sequence[int] = SERVE_ACTIONS, batch_size: int = 16) -> tuple[list[tuple], list[tuple]]:
    """(step, x) of the first ball after `actions` (FIRE then NOOPs) from each start: (neural, emulator)."""
    generated = neural_games(game, starts, len(actions), lambda n, s, frame: actions[s], event_temperature,
                             batch_size=batch_size, desc="serves")
    real = []
    for start in starts:
        emulator.restore(start)
        real.append(first_ball([emulator.step(a) for a in actions]))
    return [first_ball(frames) for frames in generated], real


# ----- ball in play: windows -----

@dataclass
class Window:
    """The emulator's side of one rollout: its frames, the actions the policy chose and its first random event."""
    start: Start
    frames: np.ndarray   # (T, 210, 160, 3)
    actions: np.ndarray  # (T,) int64
    first_event: int     # the step (1-based) of the emulator's first random event, T + 1 without one


def emulator_windows(emulator: Emulator, starts: Sequence[Start], steps: int, seed: int = 0) -> list[Window]:
    """The ball-following policy playing `steps` steps in the emulator from each start."""
    windows = []
    for n, start in enumerate(tqdm(starts, desc="emulator windows", unit="window", leave=False)):
        rng = np.random.default_rng([seed, 3, n])  # streams 0-2 made the starts
        emulator.restore(start)
        _play(emulator.step, start.frames[-1], steps, lambda frame: follow_ball(frame, rng))
        windows.append(Window(start, np.stack(emulator.frames[1:]),
                              np.array(emulator.actions[len(start.actions):], dtype=np.int64),
                              first_event(start, emulator.rams[1:])))
    return windows


def neural_games(game: Any, starts: Sequence[Start], steps: int, choose: Callable[[int, int, np.ndarray], int],
                 event_temperature: float = 1.0, real: np.ndarray | None = None, batch_size: int = 8,
                 desc: str = "neural games") -> np.ndarray:
    """(N, steps, 210, 160, 3): the neural game played `steps` steps from each start, `batch_size` games
    in one batch (step_batch), each keeping its own actions, knob and steps since a ball, as step() does.

    choose(n, s, frame) is game n's action at step s after its newest frame: fixed actions (open loop)
    or a policy reading the frame (closed loop). With `real` (N, k + steps, 210, 160, 3), the emulator's
    frames from each start, each step's random event is the one the latent model infers from them
    (teacher forcing) instead of a draw from the prior.
    """
    k, out = game.context_frames, []
    counts = hasattr(game, "next_since_ball")   # the steps since a ball, counted on as the game does
    progress = tqdm(total=len(starts) * steps, desc=desc, unit="step", leave=False)
    for first in range(0, len(starts), batch_size):
        chunk = starts[first:first + batch_size]
        past = torch.from_numpy(np.stack([start.frames for start in chunk]))
        histories = [list(start.actions) for start in chunk]
        knob = ([float(knob_positions(h, game.knob_frame_skip)[-1]) for h in histories]
                if game.knob_frame_skip else None)
        truth = None if real is None else torch.from_numpy(real[first:first + batch_size])
        with torch.inference_mode():
            since_ball = game.since_ball_in(game.latent_model.to_index(past)) if counts else None
        generated = []
        for s in range(steps):
            actions = [choose(first + b, s, frame) for b, frame in enumerate(past[:, -1].numpy())]
            previous = np.concatenate([previous_action_rows(h, [len(h)], game.previous_count) for h in histories])
            with torch.inference_mode():
                events = (game.latent_model.encode_event(truth[:, s:s + k], truth[:, s + k])
                          if truth is not None else None)
                nxt = game.step_batch(past, torch.tensor(actions), temperature=0.0,
                                      previous=torch.from_numpy(previous),
                                      knob=None if knob is None else torch.tensor(knob),
                                      event_temperature=event_temperature, events=events,
                                      **({"since_ball": since_ball} if counts else {}))
                if counts:
                    since_ball = game.next_since_ball(since_ball, game.latent_model.to_index(nxt))
            past = torch.cat([past[:, 1:], nxt[:, None]], dim=1)
            for h, action in zip(histories, actions):
                h.append(int(action))
            if knob is not None:
                knob = [float(knob_positions([a], game.knob_frame_skip, start=v)[-1]) for a, v in zip(actions, knob)]
            generated.append(nxt.numpy())
            progress.update(len(chunk))
        out.append(np.stack(generated, axis=1))
    progress.close()
    return np.concatenate(out)


def neural_windows(game: Any, windows: Sequence[Window], teacher_forced: bool = False, event_temperature: float = 1.0,
                   batch_size: int = 8) -> np.ndarray:
    """(N, T, 210, 160, 3): the neural game fed each window's actions open loop (on its own frames).

    Teacher-forced, each step's random event is the one the latent model infers from the emulator's
    real frames instead of a draw from the prior.
    """
    real = np.stack([np.concatenate([w.start.frames, w.frames]) for w in windows]) if teacher_forced else None
    return neural_games(game, [w.start for w in windows], len(windows[0].actions),
                        lambda n, s, frame: int(windows[n].actions[s]), event_temperature, real, batch_size,
                        desc="neural windows")


def _ball_counts(frames: Sequence[np.ndarray]) -> np.ndarray:
    return np.array([ball_count(f) for f in frames])


def window_scores(generated: np.ndarray, windows: Sequence[Window]) -> dict[str, float | None]:
    """Ball kept and ball within 4 px (all steps, and before the emulator's first random event) of the neural frames."""
    real_ball = np.stack([_ball_counts(w.frames) >= 1 for w in windows])
    one_ball = np.stack([_ball_counts(g) == 1 for g in generated])
    match = np.array([[ball_match(g, r) for g, r in zip(gen, w.frames)] for gen, w in zip(generated, windows)])
    before = np.arange(1, match.shape[1] + 1)[None] < np.array([w.first_event for w in windows])[:, None]
    return {
        "ball_kept": float((real_ball & one_ball).mean()),
        "ball_kept_when_emulator_ball": _mean(one_ball[real_ball]),
        "ball_within_4px_before_first_event": _mean(match[before]),
        "ball_within_4px": float(match.mean()),
    }


def emulator_window_figures(windows: Sequence[Window]) -> dict[str, Any]:
    """The emulator's own figures on the windows: exactly one ball, and where its first random event falls."""
    first, steps = np.array([w.first_event for w in windows]), len(windows[0].frames)
    return {
        "ball_kept": float(np.mean([_ball_counts(w.frames) == 1 for w in windows])),
        "first_event_step_mean": float(first.mean()),
        "windows_without_event": int((first > steps).sum()),
        "steps_before_first_event": int(np.minimum(first - 1, steps).sum()),
    }


# ----- long play -----

def _recent(happened: np.ndarray, lag: int) -> np.ndarray:
    """For each step: did it happen on this step or one of the `lag` steps before?"""
    return np.array([happened[max(0, t - lag):t + 1].any() for t in range(len(happened))], bool)


def paddle_returns(balls: Sequence[tuple[float, float] | None], paddles: Sequence[float | None]) -> list[float]:
    """For every step on which a ball falling to the paddle's height (from AT_PADDLE down) went back up: the
    x distance from the ball's centre to the paddle's (inf without a paddle). Ball centres (x, y) and paddle
    centres per frame, None where not seen."""
    distances = []
    for before, ball, after, paddle in zip(balls, balls[1:], balls[2:], paddles[1:]):
        if None in (before, ball, after) or ball[1] - 2 < AT_PADDLE.start:
            continue
        if before[1] < ball[1] > after[1]:
            distances.append(float("inf") if paddle is None else abs(ball[0] - paddle))
    return distances


def returns_without_paddle(balls: Sequence[tuple[float, float] | None], paddles: Sequence[float | None]) -> int:
    """Returns (paddle_returns) with the paddle's centre farther than PADDLE_REACH: bounces off bare floor."""
    return sum(distance > PADDLE_REACH for distance in paddle_returns(balls, paddles))


def game_stats(frames: Sequence[np.ndarray]) -> dict[str, Any]:
    """Game-level counts over a played game, read off its frames; frames[0] is the start frame."""
    balls = [(ball_count(f), ball_xy(f)) for f in frames]
    paddles = [paddle_x(f) for f in frames]
    in_play = np.array([count >= 1 for count, _ in balls])
    serves = sum(1 for t in range(1, len(frames)) if in_play[t] and not in_play[max(0, t - SERVE_GAP):t].any()
                 and SERVE_ROWS[0] <= balls[t][1][1] <= SERVE_ROWS[1])
    walls = np.stack([brick_mask(f) for f in frames])
    broken = (walls[:-1] & ~walls[1:]).sum(axis=(1, 2))               # per step 1..T
    back = (~walls[:-1] & walls[1:]).sum(axis=(1, 2)) * walls[:-1].any(axis=(1, 2))  # a cleared wall refills
    shown = [digits(f) for f in frames]
    changed = np.array([a != b for a, b in zip(shown[:-1], shown[1:])], bool)
    cause = _recent(broken > 0, BRICK_LAG) | _recent(in_play[:-1] & ~in_play[1:], BALL_LOST_LAG)
    lives_first, lives_last = lives(frames[0]), lives(frames[-1])
    score_first, score_last = score(frames[0]), score(frames[-1])
    return {
        "steps": len(frames) - 1,
        "one_ball_share": _mean([count == 1 for count, _ in balls[1:]]),
        "serves": serves,
        "bricks_broken": int(broken.sum()),
        "bricks_back": int(back.sum()),
        "returns_without_paddle": returns_without_paddle([xy for _, xy in balls], paddles),
        "steps_without_paddle": sum(p is None for p in paddles[1:]),
        "lives_lost": None if None in (lives_first, lives_last) else lives_first - lives_last,
        "score_gained": None if None in (score_first, score_last) else score_last - score_first,
        "digit_changes_without_cause": int((changed & ~cause).sum()),
    }


def total_stats(games: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Sums over games (unreadable lives or score left out), the one-ball share over all their steps."""
    total = {key: sum(g[key] for g in games if g[key] is not None) for key in games[0] if key != "one_ball_share"}
    steps = [g["steps"] for g in games]
    shares = [g["one_ball_share"] or 0.0 for g in games]  # None only for a game of 0 steps
    total["one_ball_share"] = float(np.dot(shares, steps) / sum(steps)) if sum(steps) else None
    return total


def long_play(game: Any, emulator: Emulator, starts: Sequence[Start], steps: int = 400, seed: int = 0,
              event_temperature: float = 1.0, random_share: float = RANDOM_SHARE) -> dict[str, Any]:
    """The ball-following policy plays `steps` steps from each start in both games, each on its own frames;
    random_share 1 is a player pressing random keys, who misses most balls.

    The emulator's game stops early when it is over (its last lost life never shows on the lives
    digit); the neural game has no end.
    """
    label = "random keys" if random_share >= 1.0 else "long play"
    rngs = [np.random.default_rng([seed, 4, n]) for n in range(len(starts))]
    neural = neural_games(game, starts, steps, lambda n, s, frame: follow_ball(frame, rngs[n], random_share),
                          event_temperature, batch_size=len(starts), desc=f"{label}, neural")
    per_game = []
    for n, start in enumerate(tqdm(starts, desc=f"{label}, emulator", unit="game", leave=False)):
        rng = np.random.default_rng([seed, 4, n])  # the same draws for the emulator's game
        emulator.restore(start)
        real = _play(emulator.step, start.frames[-1], steps, lambda frame: follow_ball(frame, rng, random_share),
                     lambda: emulator.over)
        per_game.append({"neural": game_stats([start.frames[-1], *neural[n]]),
                         "emulator": game_stats([start.frames[-1], *real])})
    return {"games": len(per_game), "steps": steps, "per_game": per_game,
            "total": {side: total_stats([g[side] for g in per_game]) for side in ("neural", "emulator")}}


# ----- all together -----

def evaluate_game(game: Any, starts: dict[str, list[Start]] | None = None, n_starts: int = 16,
                  window_steps: int = 30, games: int = 6, game_steps: int = 400, seed: int = 0,
                  batch_size: int = 8, event_temperature: float = 1.0) -> dict[str, Any]:
    """Every game-level measure of the neural game beside the emulator, as a JSON-able dict.

    `game` is a NeuralBreakout (or anything with its interface); the latent action is taken at
    temperature 0 and random events drawn at `event_temperature`. Without `starts`, `n_starts` of
    each kind are made (at least `games`); long play starts from the first `games` game starts.
    """
    k = game.context_frames
    starts = starts or make_starts(k, max(n_starts, games), seed)
    if any(s.frames.shape[0] != k for kind in starts.values() for s in kind):
        raise ValueError(f"the starts were made for another context length than the game's {k} frames")
    if len(starts["game_start"]) < games:
        raise ValueError(f"long play needs {games} game starts, got {len(starts['game_start'])}")
    emulator = Emulator()

    first_balls = {kind: serve_first_balls(game, emulator, starts[kind], event_temperature)
                   for kind in ("game_start", "after_lost_life")}
    serve = {kind: serve_summary(neural, real) for kind, (neural, real) in first_balls.items()}
    serve["all"] = serve_summary([b for neural, _ in first_balls.values() for b in neural],
                                 [b for _, real in first_balls.values() for b in real])
    no_fire = [serve_first_balls(game, emulator, starts[kind], event_temperature, NOOP_ACTIONS)
               for kind in ("game_start", "after_lost_life")]
    serve["noop_only"] = {side: _mean([s is not None for pair in no_fire for s, _ in pair[i]])
                          for i, side in enumerate(("neural", "emulator"))}

    windows = emulator_windows(emulator, starts["ball_in_play"], window_steps, seed)
    teacher = bool(getattr(getattr(game, "latent_model", None), "event_classes", 0))
    in_play = {
        "windows": len(windows), "steps": window_steps,
        "emulator": emulator_window_figures(windows),
        "open_loop": window_scores(neural_windows(game, windows, False, event_temperature, batch_size), windows),
        "teacher_forced": (window_scores(neural_windows(game, windows, True, event_temperature, batch_size), windows)
                           if teacher else None),  # needs the random event latent
    }
    return {
        "context_frames": k,
        "starts": {kind: len(s) for kind, s in starts.items()},
        "temperature": 0.0,
        "event_temperature": event_temperature,
        "serve": serve,
        "ball_in_play": in_play,
        "long_play": long_play(game, emulator, starts["game_start"][:games], game_steps, seed, event_temperature),
        "random_keys": long_play(game, emulator, starts["game_start"][:games], game_steps, seed, event_temperature,
                                 random_share=1.0),
        "rules": "a ball in play: a ball-sized red blob in the play area (exactly one for 'one ball'); serve: FIRE "
                 "then 9 NOOPs, served x in 8 bins over columns 8-151; ball within 4 px: Euclidean, absent in "
                 "both = match, before the emulator's first random event (a serve or a flip of the ball's x or "
                 "y direction, from RAM); bricks back: a brick there that was not the step before (a refill "
                 "of a cleared wall excepted); a digit change has a cause when a brick broke on this step or "
                 "the one before, or a ball left play within the last 10 steps",
    }


def percent(share: float | None) -> str:
    return "n/a" if share is None else f"{share:.1%}"


def game_headline(measures: dict) -> dict:
    """The game measures' headline figures (neural game; the emulator's where they differ from a constant)."""
    serve, in_play, long_play = measures["serve"], measures["ball_in_play"], measures["long_play"]["total"]
    return {
        "serve_within_10_steps_game_start": serve["game_start"]["served_within_10_steps"]["neural"],
        "serve_within_10_steps_after_lost_life": serve["after_lost_life"]["served_within_10_steps"]["neural"],
        "serve_x_tv_distance": serve["all"]["serve_x_tv"],
        "serve_within_10_noops_without_fire": serve["noop_only"]["neural"],
        "ball_kept": in_play["open_loop"]["ball_kept_when_emulator_ball"],
        "ball_within_4px_before_first_random_event": in_play["open_loop"]["ball_within_4px_before_first_event"],
        "long_play_one_ball_share": long_play["neural"]["one_ball_share"],
        "long_play_one_ball_share_emulator": long_play["emulator"]["one_ball_share"],
        "long_play_bricks_back": long_play["neural"]["bricks_back"],
        "long_play_returns_without_paddle": long_play["neural"]["returns_without_paddle"],
        "long_play_steps_without_paddle": long_play["neural"]["steps_without_paddle"],
        "random_keys_serves_per_100_steps": serves_per_100_steps(measures["random_keys"]["total"]["neural"]),
        "random_keys_serves_per_100_steps_emulator": serves_per_100_steps(measures["random_keys"]["total"]["emulator"]),
        "random_keys_returns_without_paddle": measures["random_keys"]["total"]["neural"]["returns_without_paddle"],
    }


def print_game_measures(measures: dict) -> None:
    serve, in_play = measures["serve"], measures["ball_in_play"]
    for kind in ("game_start", "after_lost_life"):
        s = serve[kind]
        print(f"serve ({kind.replace('_', ' ')}, {s['starts']} emulator states, FIRE then NOOPs): ball within 10 "
              f"steps {percent(s['served_within_10_steps']['neural'])} (emulator "
              f"{percent(s['served_within_10_steps']['emulator'])}); served x TV distance "
              f"{'n/a' if s['serve_x_tv'] is None else format(s['serve_x_tv'], '.2f')}")
    print(f"10 NOOPs without FIRE: a ball within 10 steps {percent(serve['noop_only']['neural'])} "
          f"(emulator {percent(serve['noop_only']['emulator'])})")
    for mode in ("open_loop", "teacher_forced"):
        scores = in_play[mode]
        if scores:
            print(f"ball in play, {in_play['windows']} windows of {in_play['steps']} steps, events "
                  f"{'drawn from the prior' if mode == 'open_loop' else 'inferred from the real frames'}: "
                  f"ball kept {percent(scores['ball_kept_when_emulator_ball'])}, within 4 px before the first "
                  f"random event {percent(scores['ball_within_4px_before_first_event'])} (overall "
                  f"{percent(scores['ball_within_4px'])})")
    for policy, games in (("long play", measures["long_play"]), ("random keys", measures["random_keys"])):
        for side in ("neural", "emulator"):
            print_long_play(policy, games, side)


def serves_per_100_steps(total: dict) -> float | None:
    """Serves per 100 steps played: the emulator's games can end early, the neural game's never do."""
    return 100.0 * total["serves"] / total["steps"] if total["steps"] else None


def print_long_play(policy: str, games: dict, side: str) -> None:
    total = games["total"][side]
    rate = serves_per_100_steps(total)
    print(f"{policy}, {games['games']} games of {games['steps']} steps, {side}: one ball in play "
          f"{percent(total['one_ball_share'])}, serves {total['serves']} ({'n/a' if rate is None else f'{rate:.1f}'} "
          f"per 100 steps), bricks broken {total['bricks_broken']}, bricks back {total['bricks_back']}, sent back "
          f"without the paddle {total['returns_without_paddle']}, steps without a paddle "
          f"{total['steps_without_paddle']}, lives lost {total['lives_lost']}, "
          f"score {total['score_gained']}, digit changes without cause {total['digit_changes_without_cause']}")
