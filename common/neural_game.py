"""NeuralBreakout: Breakout played inside the learned world model, with no emulator in the loop.

One step: the action->latent model (Stages 4-5) turns the player's action, and the recent frames
when it uses them, into a latent action; the world model's prior (Stage 3), corrected by the map's
event head for the key pressed (FIRE serves, NOOP does not), draws the step's random event (where a
served ball appears, which way an uncertain bounce goes) with the game's own seeded generator; the
dynamics decoder turns the past frames plus both latents into the next frame. The
decoder picks one palette colour per pixel, so a generated frame is a valid Breakout image when it is
appended to the context: the game runs on its own output without blur piling up. The same seed and
the same actions replay the same game.

The window, the headless GIF writer, the control and game measures, the tests and the benchmark all
drive the model through this one object.
"""
from __future__ import annotations

import functools
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch

from common.action_to_latent import KNOB_START, frame_view, knob_positions
from common.ball_sampler import (SINCE_BALL_CAP, ball_in_play, balls_to_keep, commit_ball, commit_paddle,
                                  commit_wall, count_since_ball)
from common.dataset import ACTION_NAMES, FRAME_SHAPE
from common.detectors import RED



def check_frames(frames: Any, count: int) -> np.ndarray:
    """Return `frames` as a (count, 210, 160, 3) uint8 array, or raise a ValueError saying what is wrong."""
    if isinstance(frames, torch.Tensor):
        frames = frames.detach().cpu().numpy()
    if not isinstance(frames, np.ndarray):
        raise ValueError(f"frames must be a numpy array of shape ({count}, 210, 160, 3), got {type(frames).__name__}")
    if frames.shape != (count, *FRAME_SHAPE):
        raise ValueError(f"frames must have shape ({count}, 210, 160, 3) (the {count} most recent real RGB "
                         f"frames, oldest first), got {tuple(frames.shape)}")
    if frames.dtype != np.uint8:
        raise ValueError(f"frames must be uint8 RGB pixels, got dtype {frames.dtype}")
    return np.ascontiguousarray(frames)


def check_action(action: Any) -> int:
    """An int of the minimal action set (0 NOOP, 1 FIRE, 2 RIGHT, 3 LEFT), or a ValueError."""
    if isinstance(action, (bool, np.bool_)) or not isinstance(action, (int, np.integer)):
        raise ValueError(f"action must be an int in 0..3 ({', '.join(ACTION_NAMES)}), got {action!r}")
    if not 0 <= int(action) < len(ACTION_NAMES):
        raise ValueError(f"action must be in 0..3 ({', '.join(ACTION_NAMES)}), got {int(action)}")
    return int(action)


def as_tensor(frames: np.ndarray | torch.Tensor) -> torch.Tensor:
    """uint8 frames as a CPU tensor without copying (the models take torch tensors)."""
    return frames if isinstance(frames, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(frames))


class NeuralBreakout:
    """The playable neural game: reset() with k real frames, then step(action) -> next frame.

    Speed: the context is also kept as colour-class indices, the world model's own input, so a step
    converts no past frame back from RGB: the decoder gives the next frame's classes and one palette
    lookup its pixels. The result is exactly the world model's predict() (tested). The world model's
    weights are put in channels-last memory format, in which oneDNN runs its convolutions faster on a CPU
    (part5.md).
    """

    def __init__(self, latent_model: Any, action_model: Any, seed: int = 0):
        self.latent_model = latent_model.to(memory_format=torch.channels_last)
        self.action_model = action_model
        self.context_frames = int(latent_model.context_frames)  # how many real frames reset() needs
        self.previous_count = int(getattr(action_model, "previous_actions", 0))  # earlier actions the map reads
        self.knob_frame_skip = int(getattr(action_model, "knob_frame_skip", 0))   # > 0: the map reads the knob
        self.palette = latent_model.palette.rgb.to(latent_model.vq.codebook.device)  # (colours, 3) uint8
        colours = [tuple(c) for c in latent_model.palette.rgb.tolist()]
        self.ball_class = colours.index(RED) if RED in colours else None           # None: no ball to commit
        self.background_class = colours.index((0, 0, 0)) if (0, 0, 0) in colours else 0
        self.generator = torch.Generator().manual_seed(seed)
        self.keep_ball_in_flight = True   # a ball between the bricks and the paddle stays in play (ball_sampler.py)
        self.keep_ball_at_paddle = True   # ... and one at the paddle, when the random event sends it back
        self.keep_paddle = True           # a paddle the decoder dropped is drawn whole again
        # the random event classes that serve a ball and that send it back at the paddle (Stage 4), which
        # the game then draws for sure
        self.serve_events = torch.tensor(action_model.config.get("serve_events", []), dtype=torch.int64)
        self.keep_events = torch.tensor(action_model.config.get("keep_events", []), dtype=torch.int64)
        # where the recorded games' serves landed: (N, 3) rows of (row, column, count) (Stage 4)
        self.serve_places = torch.tensor(action_model.config.get("serve_places", []), dtype=torch.int64).view(-1, 3)
        self.keep_wall = True             # a broken brick stays broken
        self.frames: torch.Tensor | None = None   # (1, k, 210, 160, 3) uint8 RGB, oldest first
        self.indices: torch.Tensor | None = None  # (1, k, 210, 160) uint8 colour classes of the same frames
        self.views: torch.Tensor | None = None    # (1, frames_used, 680) uint8: the map's views of the newest frames
        self.previous = torch.zeros(1, self.previous_count, dtype=torch.int64)  # earlier actions, oldest first
        self.knob = KNOB_START  # the paddle knob's position (common/action_to_latent.py)
        self.since_ball = 0     # steps since a frame showed a ball in play (steps_since_ball), which FIRE's serve waits on
        self.steps = 0

    @classmethod
    def load(cls, checkpoint_root: str | Path = "checkpoints", device: str = "cpu", which: str = "best",
             seed: int = 0) -> "NeuralBreakout":
        """Load the Stage 3 world model and the Stage 5 action->latent model from the checkpoint root.

        A missing checkpoint is a UserError naming the stage to run (03 or 05), and so is a map that was
        fit to another world model than the one loaded.
        """
        from common.action_to_latent import check_compatible, file_fingerprint, load_action_to_latent
        from common.errors import UserError
        from common.latent_action import load_latent_action_model
        from common.paths import latent_checkpoint

        latent_model = load_latent_action_model(checkpoint_root, device=device, which=which)
        action_model = load_action_to_latent(checkpoint_root, device=device)
        check_compatible(action_model, latent_model)
        latent_file = latent_checkpoint(checkpoint_root, which)
        if action_model.latent_fingerprint and file_fingerprint(latent_file) != action_model.latent_fingerprint:
            raise UserError(f"the action->latent map was fit to another world model than {latent_file} (it was "
                            f"retrained or replaced since): re-run 04_collect_action_latent_pairs.py and "
                            f"05_train_action_to_latent.py")
        return cls(latent_model, action_model, seed=seed)

    def reset(self, frames: np.ndarray, previous_actions: Any = None, seed: int | None = None) -> None:
        """Start from `context_frames` real RGB frames, (k, 210, 160, 3) uint8, oldest first, and
        optionally the actions that led to them since the game began (oldest first). Missing ones count
        as NOOP, and the paddle knob then starts in the middle, where a new game puts it.
        A seed restarts the random events' generator (otherwise it carries on from the last game)."""
        if seed is not None:
            self.generator.manual_seed(seed)
        self.frames = torch.from_numpy(check_frames(frames, self.context_frames)[None].copy())
        self.previous = torch.zeros(1, self.previous_count, dtype=torch.int64)
        given = [] if previous_actions is None else [check_action(a) for a in previous_actions]
        if given and self.previous_count:
            recent = given[-self.previous_count:]
            self.previous[0, -len(recent):] = torch.tensor(recent)
        self.knob = float(knob_positions(given, self.knob_frame_skip)[-1]) if self.knob_frame_skip else KNOB_START
        with torch.inference_mode():
            self.indices = self.latent_model.to_index(self.frames).cpu()
        uses_frames = getattr(self.action_model, "uses_frames", False)
        self.views = self.action_model.views_from_past(self.frames) if uses_frames else None
        self.since_ball = int(self.since_ball_in(self.indices)[0])
        self.steps = 0

    def step(self, action: int, temperature: float = 0.0, event_temperature: float = 1.0) -> np.ndarray:
        """Advance one agent step (4 emulator frames) with `action`; return the new (210, 160, 3) uint8 frame.

        temperature 0 takes the most likely latent action (deterministic); > 0 samples from the
        action->latent model's distribution sharpened or flattened by the temperature.
        event_temperature 1 draws the random event from the world model's prior as learned; 0 takes its
        most likely class (a game without chance: a served ball always lands in the same place).
        """
        if self.frames is None:
            raise RuntimeError("call reset(frames) before step()")
        action = check_action(action)
        codes = self.latents(self.frames, torch.tensor([action]), temperature, self.previous, torch.tensor([self.knob]),
                             self.views)
        events = self.events(self.indices, codes, event_temperature, torch.tensor([action]), self.frames,
                             torch.tensor([self.since_ball]), self.views)
        rgb, index = self._decode(self.indices, codes, events, event_temperature)
        self.since_ball = int(self.next_since_ball(torch.tensor([self.since_ball]), index)[0])
        self.previous = torch.cat([self.previous[:, 1:], torch.tensor([[action]])], dim=1)
        if self.knob_frame_skip:
            self.knob = float(knob_positions([action], self.knob_frame_skip, start=self.knob)[-1])
        self.frames = torch.cat([self.frames[:, 1:], rgb[:, None]], dim=1)
        self.indices = torch.cat([self.indices[:, 1:], index[:, None]], dim=1)
        if self.views is not None:   # each frame's view is computed once, as it arrives
            self.views = torch.cat([self.views[:, 1:], frame_view(rgb)[:, None]], dim=1)
        self.steps += 1
        return rgb[0].numpy()

    def step_batch(self, past: np.ndarray | torch.Tensor, actions: np.ndarray | torch.Tensor,
                   temperature: float = 0.0, previous: np.ndarray | torch.Tensor | None = None,
                   knob: np.ndarray | torch.Tensor | None = None, event_temperature: float = 1.0,
                   events: torch.Tensor | None = None, since_ball: torch.Tensor | None = None) -> torch.Tensor:
        """Stateless step(): past (B, k, 210, 160, 3) uint8 RGB, actions (B,), previous actions
        (B, previous_count) or None, knob positions (B,) or None, steps since a ball was in play (B,) or
        None (counted within past) -> next frames (B, 210, 160, 3) uint8.

        The random events are drawn from the prior (the game's generator), or given as `events` (B,)
        classes, e.g. the posterior's from real frames (teacher forcing). The control measures roll
        out many start points at once with it.
        """
        codes = self.latents(past, actions, temperature, previous, knob)
        with torch.inference_mode():
            index = self.latent_model.to_index(as_tensor(past))
        if events is None:
            events = self.events(index, codes, event_temperature, torch.as_tensor(actions, dtype=torch.int64), past,
                                 since_ball)
        return self._decode(index, codes, events, event_temperature)[0]

    def since_ball_in(self, past_index: torch.Tensor) -> torch.Tensor:
        """(B,) int64: the steps since a ball was in play, counted within past frames (B, k, 210, 160) of
        colour classes; the cap (steps_since_ball) where none shows one, as before a game's first serve."""
        if self.ball_class is None:
            return torch.zeros(len(past_index), dtype=torch.int64)
        since_ball = torch.full((len(past_index),), SINCE_BALL_CAP, dtype=torch.int64)
        for t in range(past_index.shape[1]):
            since_ball = self.next_since_ball(since_ball, past_index[:, t])
        return since_ball

    def next_since_ball(self, since_ball: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        """The counts (B,) after a step whose new frames (B, 210, 160) of colour classes are `index`."""
        if self.ball_class is None:
            return since_ball
        return torch.from_numpy(count_since_ball(since_ball.numpy(), ball_in_play(index.cpu(), self.ball_class).numpy()))

    def events(self, past_index: torch.Tensor, codes: torch.Tensor, event_temperature: float = 1.0,
               actions: torch.Tensor | None = None, past: np.ndarray | torch.Tensor | None = None,
               since_ball: torch.Tensor | None = None, views: torch.Tensor | None = None) -> torch.Tensor | None:
        """The random event classes (B,) drawn from the world model's prior after past (class indices) and
        the action codes, plus the map's correction for the keys `actions` after `past` (RGB; or the map's
        views of it) and the steps since a ball was in play (None: counted within past) when the map has an
        event head, at `event_temperature` with the game's generator; None for a model without them."""
        if not math.isfinite(event_temperature) or event_temperature < 0:
            raise ValueError(f"event_temperature must be a number >= 0, got {event_temperature}")
        model = self.latent_model
        if not model.event_classes:
            return None
        device = model.vq.codebook.device
        with torch.inference_mode():
            logits = model.event_prior(past_index.to(device), codes.to(device)).float()
            if getattr(self.action_model, "event_classes", 0) and actions is not None:
                since_ball = self.since_ball_in(past_index.cpu()) if since_ball is None else since_ball
                logits = logits + self.action_model.event_correction(actions, as_tensor(past), logits,
                                                                     since_ball, views).to(device)
            return model.sample_event(logits, float(event_temperature), self.generator)

    def latents(self, past: np.ndarray | torch.Tensor, actions: np.ndarray | torch.Tensor,
                temperature: float = 0.0, previous: np.ndarray | torch.Tensor | None = None,
                knob: np.ndarray | torch.Tensor | None = None, views: torch.Tensor | None = None) -> torch.Tensor:
        """The latent action codes (B, P) int64 the action->latent model picks for `actions` after `past`.

        `previous` (B, previous_count) are the actions before, oldest first, and `knob` (B,) the paddle
        knob's positions (knob_positions); None means NOOPs and a knob in the middle, as at a game's start.
        `views`: the map's views of past's newest frames, when the caller keeps them (step does)."""
        if not math.isfinite(temperature) or temperature < 0:
            raise ValueError(f"temperature must be a number >= 0, got {temperature}")
        actions = torch.as_tensor(actions, dtype=torch.int64)
        if not self.previous_count:
            previous = None
        elif previous is None:
            previous = torch.zeros(len(actions), self.previous_count, dtype=torch.int64)
        if not self.knob_frame_skip:
            knob = None
        elif knob is None:
            knob = torch.full((len(actions),), KNOB_START)
        with torch.inference_mode():
            return self.action_model.sample(actions, as_tensor(past), temperature=float(temperature),
                                            generator=self.generator if temperature > 0 else None,
                                            previous=previous, knob=None if knob is None else torch.as_tensor(knob),
                                            views=views)

    def predict(self, past: np.ndarray | torch.Tensor, codes: torch.Tensor,
                events: torch.Tensor | None = None) -> torch.Tensor:
        """The world model's next frames (B, 210, 160, 3) uint8 for latent codes (and event classes; None:
        the prior's most likely) after `past` (RGB)."""
        with torch.inference_mode():
            index = self.latent_model.to_index(as_tensor(past))
        return self._decode(index, codes, events)[0]

    def _decode(self, past_index: torch.Tensor, codes: torch.Tensor, events: torch.Tensor | None = None,
                event_temperature: float | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(RGB (B, 210, 160, 3) uint8, class indices (B, 210, 160) uint8) of the next frame.

        With an event_temperature (play) the ball is committed as one object (common/ball_sampler.py)
        with the game's generator, a paddle the decoder dropped is drawn whole again and a brick it redrew is
        cleared; without, the frame is the decoder's per-pixel most likely colours."""
        model = self.latent_model
        device = model.vq.codebook.device
        commit = event_temperature is not None and self.ball_class is not None
        with torch.inference_mode():
            index, logits = model.predict_with_logits(past_index.to(device), codes.to(device),
                                                      None if events is None else events.to(device))
            if commit:
                last = past_index[:, -1].cpu()
                before = past_index[:, -2].cpu() if past_index.shape[1] > 1 else None
                keep = balls_to_keep(last, self.ball_class, events, self.keep_events, self.keep_ball_in_flight,
                                     self.keep_ball_at_paddle, before)
                serve = None
                if events is not None and len(self.serve_events):
                    serve = (torch.isin(events.cpu(), self.serve_events) & ~ball_in_play(last, self.ball_class)).tolist()

                @functools.cache   # commit_ball and commit_paddle may both ask for a frame
                def ball_prob(b: int) -> torch.Tensor:
                    return model.colour_probability(logits[b:b + 1], self.ball_class)[0].cpu()

                index = index.cpu()
                if self.keep_wall:
                    index = commit_wall(index, last, self.background_class)
                index = commit_ball(index, ball_prob, self.ball_class, self.background_class,
                                    event_temperature, self.generator, keep, serve, self.serve_places)
                if self.keep_paddle:
                    index = commit_paddle(index, ball_prob, self.ball_class, last)
                index = index.to(device)
            rgb = self.palette.index_select(0, index.reshape(-1).long()).view(*index.shape, 3)
        return rgb.cpu(), index.cpu()
