"""Map a real game action (and optionally the recent frames) onto the latent action of Stage 3.

Stage 3 learns latent actions from video alone; to play, a key press must become a latent
code. The seeds' map looks at the action only. That cannot be exact in Breakout: the paddle
has inertia (a transition's motion mixes the current and the previous action), LEFT against
the wall does nothing, FIRE only matters without a ball in play. So the default variant also
sees the newest context frames, through a compact "frame view" an MLP reads directly: the
paddle's rows at full horizontal resolution (its position and motion to the pixel) and the
whole frame max-pooled 8x8 (ball, bricks). A CNN over the frames was far slower to train on a
CPU (part4.md); the view is cheap per play step and keeps every object visible.

It can also see the previous few actions and the position of the paddle's knob. ALE plays Breakout's
paddle controller, a knob, with discrete actions: every emulator frame LEFT turns it one way and RIGHT
the other by a fixed amount, and the knob stops at its ends, which lie past the walls. With the paddle
pushed into a wall, the picture no longer shows how far past the wall the knob is, and that decides
whether LEFT moves the paddle this step. The knob is a clamped sum of every action since the game
began, so it is known exactly wherever the actions are (recordings, control measures, play).

The frames variant also corrects the world model's random events. The world model's prior over a
step's random event sees the frames and the action code, and the action code cannot tell FIRE from
NOOP (neither moves the paddle), so the prior serves a ball at the same rate whichever key is pressed.
The map sees the key: its event head adds a correction to the prior's logits, learned from the event
classes the world model's posterior reads off the real next frames (Stage 4). It starts at zero, so
an untrained head leaves the prior as it is.
"""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from common.ball_sampler import SINCE_BALL_CAP
from common.errors import UserError
from common.io import load_checkpoint
from common.latent_action import past_frame_rows
from common.paths import action_to_latent_checkpoint

KIND = "action_to_latent"
STAGE_HINT = "05_train_action_to_latent.py"
VARIANTS = ("action", "frames")


def previous_action_rows(actions: Sequence[int] | np.ndarray, t: np.ndarray, n: int) -> np.ndarray:
    """(len(t), n) int64: the n actions before transitions t of one episode, oldest first.

    Before the episode's first step the paddle was at rest: NOOP, as the frames before it repeat frame 0.
    """
    padded = np.concatenate([np.zeros(n, np.int64), np.asarray(actions, dtype=np.int64)])
    return padded[np.asarray(t)[:, None] + np.arange(n)]


def past_frame_indices(transition: int, context_frames: int) -> list[int]:
    """Frames seen before transition i (frame i -> i+1): i-k+1 .. i, repeating frame 0 at the start."""
    return past_frame_rows(np.array([transition]), context_frames)[0].tolist()


# ALE's paddle emulation (ale_state.hpp): PADDLE_DELTA 23000 per frame, knob range PADDLE_MIN 27450 ..
# PADDLE_MAX 790196, reset to the middle. LEFT turns the knob up, RIGHT down (Breakout's minimal set).
KNOB_TURN_PER_FRAME = 23000 / (790196 - 27450)
KNOB_START = 0.5
KNOB_BINS = 64  # the map reads the knob as one of 64 positions (a turn per 4-frame step is ~8 of them)
KNOB_DIRECTION = (0, 0, -1, 1)  # NOOP, FIRE, RIGHT, LEFT


def knob_positions(actions: Sequence[int] | np.ndarray, frame_skip: int, start: float = KNOB_START) -> np.ndarray:
    """(len(actions) + 1,) float32 in [0, 1]: the paddle knob before each transition of a game, then after its last.

    A step is frame_skip emulator frames of one action; clamping once per step equals clamping every
    frame, as the knob only moves one way within a step.
    """
    turn = KNOB_TURN_PER_FRAME * frame_skip
    knob = np.empty(len(actions) + 1, dtype=np.float32)
    knob[0] = value = start
    for i, action in enumerate(actions):
        value = min(1.0, max(0.0, value + turn * KNOB_DIRECTION[int(action)]))
        knob[i + 1] = value
    return knob


def knob_bins(knob: torch.Tensor) -> torch.Tensor:
    """Knob positions in [0, 1] -> int64 bins 0 .. KNOB_BINS - 1."""
    return (knob.float().clamp(0, 1) * (KNOB_BINS - 1)).round().long()


PADDLE_ROWS = slice(189, 195)  # Breakout's paddle; every colour but the black background has red >= 66
VIEW_SIZE = 160 + 26 * 20  # bytes per frame


def frame_view(frames: torch.Tensor) -> torch.Tensor:
    """(..., 210, 160, 3) uint8 -> (..., 680) uint8: the paddle rows' red maximum per column
    (160), then the red channel max-pooled over 8x8 blocks (26 x 20).

    Max (not stride) pooling keeps the 2-px ball and the thin lines on odd rows.
    """
    return red_view(frames[..., 0])


def red_view(red: torch.Tensor) -> torch.Tensor:
    """frame_view from the red channel alone, (..., 210, 160) uint8 (e.g. from palette classes)."""
    band = red[..., PADDLE_ROWS, :].amax(-2)
    coarse = red[..., :208, :]
    for _ in range(3):  # three 2x2 halvings = 8x8 blocks
        coarse = torch.maximum(coarse[..., 0::2, :], coarse[..., 1::2, :])
        coarse = torch.maximum(coarse[..., 0::2], coarse[..., 1::2])
    return torch.cat([band, coarse.flatten(-2)], -1)


def file_fingerprint(path: str | Path) -> str:
    """sha1 of a file: ties the pairs and the map to the exact latent checkpoint they came from."""
    digest = hashlib.sha1()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class ActionToLatent(nn.Module):
    """Logits over the latent code at every position, from an action (and the recent frames).

    config keys: num_actions, num_codes, code_positions, context_frames (the latent model's k),
    variant ("action" | "frames"), frames_used (how many of the newest context frames it sees),
    previous_actions (how many earlier actions it sees, 0 = none), knob_frame_skip (the data's frame
    skip when it reads the paddle knob, 0 = it does not), hidden, event_classes (the world model's random
    event classes the event head corrects; 0 or absent = no event head). The action, each previous
    action and the knob's bin enter as embeddings (= linear layers on one-hot inputs) added to the
    linear map of the frame views, then an MLP head. The event head has its own action embedding, frame
    map and MLP, so its loss leaves the latent code's map as it is; it also reads the prior's
    log-probabilities, which say from the full frames whether a key could serve at all (part4.md).
    """

    def __init__(self, config: dict):
        super().__init__()
        self.config = dict(config)
        self.num_actions = int(config["num_actions"])
        self.num_codes = int(config["num_codes"])
        self.code_positions = int(config["code_positions"])
        self.context_frames = int(config["context_frames"])
        self.uses_frames = config["variant"] == "frames"
        self.frames_used = min(int(config.get("frames_used", 1)), self.context_frames) if self.uses_frames else 0
        self.previous_actions = int(config.get("previous_actions", 0))
        self.knob_frame_skip = int(config.get("knob_frame_skip", 0))
        hidden = int(config["hidden"])

        self.action_embed = nn.Embedding(self.num_actions, hidden)
        if self.previous_actions:  # one table per position: "RIGHT two steps ago" is its own input
            self.previous_embed = nn.Embedding(self.previous_actions * self.num_actions, hidden)
        if self.knob_frame_skip:
            self.knob_embed = nn.Embedding(KNOB_BINS, hidden)
        if self.uses_frames:
            self.frame_in = nn.Linear(self.frames_used * VIEW_SIZE, hidden)
        self.head = nn.Sequential(
            nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(),
            nn.Linear(hidden, self.code_positions * self.num_codes),
        )
        self.event_classes = int(config.get("event_classes", 0)) if self.uses_frames else 0
        if self.event_classes:
            self.event_action = nn.Embedding(self.num_actions, hidden)
            self.event_frames = nn.Linear(self.frames_used * VIEW_SIZE, hidden)
            self.event_prior_in = nn.Linear(self.event_classes, hidden)
            self.event_since = nn.Embedding(SINCE_BALL_CAP + 1, hidden)
            self.event_head = nn.Sequential(nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(),
                                            nn.Linear(hidden, self.event_classes))
            nn.init.zeros_(self.event_head[-1].weight)   # starts as no correction: the prior alone
            nn.init.zeros_(self.event_head[-1].bias)

    @property
    def uses_knob(self) -> bool:
        return self.knob_frame_skip > 0

    def features_from_views(self, actions: torch.Tensor, views: torch.Tensor | None,
                            previous: torch.Tensor | None = None, knob: torch.Tensor | None = None) -> torch.Tensor:
        """actions (B,) int64, views (B, frames_used, VIEW_SIZE) uint8 (see frame_view), previous
        (B, previous_actions) int64 oldest first, knob (B,) float in [0, 1] (see knob_positions) -> logits."""
        hidden = self.action_embed(actions)
        if self.previous_actions:
            if previous is None or previous.shape != (len(actions), self.previous_actions):
                got = "None" if previous is None else tuple(previous.shape)
                raise ValueError(f"this model needs the previous actions (B, {self.previous_actions}), got {got}")
            slots = torch.arange(self.previous_actions, device=previous.device) * self.num_actions
            hidden = hidden + self.previous_embed(previous.long() + slots).sum(1)
        if self.uses_knob:
            if knob is None or knob.shape != (len(actions),):
                got = "None" if knob is None else tuple(knob.shape)
                raise ValueError(f"this model needs the paddle knob positions ({len(actions)},), got {got}")
            hidden = hidden + self.knob_embed(knob_bins(knob))
        if self.uses_frames:
            if views is None:
                raise ValueError("this action->latent model needs the recent frames (past=...)")
            hidden = hidden + self.frame_in(views.flatten(1).float() / 255.0)
        return self.head(hidden).view(-1, self.code_positions, self.num_codes)

    def event_correction_from_views(self, actions: torch.Tensor, views: torch.Tensor,
                                    prior_logits: torch.Tensor, since_ball: torch.Tensor) -> torch.Tensor:
        """actions (B,) int64, views (B, frames_used, VIEW_SIZE) uint8, the world model's event prior logits
        (B, event_classes), the steps since a ball was in play (B,) int64 (steps_since_ball) ->
        (B, event_classes), added to those logits."""
        hidden = (self.event_action(actions) + self.event_frames(views.flatten(1).float() / 255.0)
                  + self.event_prior_in(torch.log_softmax(prior_logits.float(), -1))
                  + self.event_since(since_ball.long().clamp(0, SINCE_BALL_CAP)))
        return self.event_head(hidden)

    @torch.no_grad()
    def event_correction(self, actions: torch.Tensor, past: torch.Tensor | None, prior_logits: torch.Tensor,
                         since_ball: torch.Tensor, views: torch.Tensor | None = None) -> torch.Tensor:
        """actions (B,), past (B, k, 210, 160, 3) uint8, prior logits (B, event_classes), steps since a ball
        was in play (B,) -> the correction (B, event_classes) to the prior's logits. `views` (B, frames_used,
        VIEW_SIZE), when given, are past's views (views_from_past) and past is not read."""
        device = self.action_embed.weight.device
        views = (self.views_from_past(None if past is None else torch.as_tensor(past)) if views is None
                 else views).to(device)
        return self.event_correction_from_views(torch.as_tensor(actions, device=device).long(), views,
                                                prior_logits.to(device), torch.as_tensor(since_ball).to(device))

    def views_from_past(self, past: torch.Tensor | None) -> torch.Tensor:
        """past (B, k, 210, 160, 3) uint8, oldest first -> the newest frames_used views."""
        if past is None or past.dim() != 5 or past.shape[1] < self.frames_used:
            got = "None" if past is None else tuple(past.shape)
            raise ValueError(f"this model needs past (B, k>={self.frames_used}, 210, 160, 3) uint8, got {got}")
        return frame_view(past[:, past.shape[1] - self.frames_used:])

    def logits(self, actions: torch.Tensor, past: torch.Tensor | None = None,
               previous: torch.Tensor | None = None, knob: torch.Tensor | None = None,
               views: torch.Tensor | None = None) -> torch.Tensor:
        """actions (B,) int64; past (B, k, 210, 160, 3) uint8 (tensor or numpy) or None; previous
        (B, previous_actions) int64 or None; knob (B,) float or None -> (B, code_positions, num_codes).
        Only the newest frames_used frames of past are read, or their views when `views` is given
        (the game keeps them from step to step: each frame's view is computed once)."""
        device = self.action_embed.weight.device
        if not self.uses_frames:
            views = None
        else:
            views = (self.views_from_past(None if past is None else torch.as_tensor(past)) if views is None
                     else views).to(device)
        if previous is not None:
            previous = torch.as_tensor(previous, device=device).long()
        if knob is not None:
            knob = torch.as_tensor(knob, device=device).float()
        return self.features_from_views(torch.as_tensor(actions, device=device).long(), views, previous, knob)

    def forward(self, actions: torch.Tensor, past: torch.Tensor | None = None,
                previous: torch.Tensor | None = None, knob: torch.Tensor | None = None) -> torch.Tensor:
        return self.logits(actions, past, previous, knob)

    @torch.no_grad()
    def sample(self, actions: torch.Tensor, past: torch.Tensor | None = None, temperature: float = 0.0,
               generator: torch.Generator | None = None, previous: torch.Tensor | None = None,
               knob: torch.Tensor | None = None, views: torch.Tensor | None = None) -> torch.Tensor:
        """(B, code_positions) int64 codes; temperature 0 = the most likely code (deterministic)."""
        logits = self.logits(actions, past, previous, knob, views)
        if temperature <= 0:
            return logits.argmax(-1)
        probs = torch.softmax(logits.float() / temperature, dim=-1).view(-1, self.num_codes)
        codes = torch.multinomial(probs, 1, generator=generator)
        return codes.view(logits.shape[0], self.code_positions)


def load_action_to_latent(checkpoint_root: str | Path = "checkpoints", device: str | torch.device = "cpu"
                          ) -> ActionToLatent:
    """The best action->latent map saved by Stage 5, in eval mode; a missing file names 05."""
    path = action_to_latent_checkpoint(checkpoint_root)
    payload = load_checkpoint(path, KIND, STAGE_HINT)
    try:
        model = ActionToLatent(payload["config"])
        model.load_state_dict(payload["model"])
    except (KeyError, RuntimeError, ValueError, TypeError) as err:
        raise UserError(f"{path} does not match this code ({type(err).__name__}): re-run {STAGE_HINT}") from None
    model.metrics = payload.get("metrics", {})
    model.latent_fingerprint = payload["config"].get("latent_fingerprint")   # the latent checkpoint it was fit to
    return model.to(device).eval()


def check_compatible(action_to_latent: ActionToLatent, latent_model) -> None:
    """Raise a UserError when the map was trained for a different latent model layout."""
    mine = (action_to_latent.num_codes, action_to_latent.code_positions, action_to_latent.context_frames)
    theirs = (latent_model.num_codes, latent_model.code_positions, latent_model.context_frames)
    if mine != theirs:
        raise UserError(f"the action->latent map (codes, positions, context) = {mine} does not match the "
                        f"latent model's {theirs}: re-run 04_collect_action_latent_pairs.py and {STAGE_HINT}")


def transition_metrics(predicted: torch.Tensor, target: torch.Tensor, actions: torch.Tensor,
                       action_names: list[str]) -> dict:
    """Per-transition (all positions right) and per-position accuracy, overall and per action,
    with a per-action confusion table of true code -> predicted code (summed over positions)."""
    right = predicted == target
    transition_right = right.all(dim=1)
    result = {
        "transitions": int(target.shape[0]),
        "transition_accuracy": float(transition_right.float().mean()) if len(target) else float("nan"),
        "position_accuracy": float(right.float().mean()) if len(target) else float("nan"),
        "per_position_accuracy": [round(float(v), 5) for v in right.float().mean(0)] if len(target) else [],
        "per_action": {},
    }
    for action, name in enumerate(action_names):
        mask = actions == action
        if not mask.any():
            continue
        confusion: dict[str, dict[str, int]] = {}
        pairs = torch.stack([target[mask].reshape(-1), predicted[mask].reshape(-1)], 1)
        keys, counts = torch.unique(pairs, dim=0, return_counts=True)
        for (true_code, pred_code), count in zip(keys.tolist(), counts.tolist()):
            confusion.setdefault(str(true_code), {})[str(pred_code)] = count
        result["per_action"][name] = {
            "count": int(mask.sum()),
            "transition_accuracy": round(float(transition_right[mask].float().mean()), 5),
            "position_accuracy": round(float(right[mask].float().mean()), 5),
            "confusion_true_to_predicted": confusion,
        }
    return result


def cross_entropy(logits: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy over every latent position: logits (B,P,C), codes (B,P)."""
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), codes.reshape(-1))


def event_nll(logits: torch.Tensor, events: torch.Tensor, served: torch.Tensor | None = None,
              serve_events: Sequence[int] = ()) -> torch.Tensor:
    """Per row, the negative log-likelihood of what the transition showed under event logits (B, classes):
    the event class (B,) the latent model inferred, except where no ball was in play (served (B,) >= 0), where
    it is what happened instead, the serve classes together when a ball came next (served 1) and the others
    when none came (0).

    Why: the inferred class of such a step serves only most of the time (Stage 4's shares), and its other
    transitions, trained as they are labelled, teach the event head to serve without FIRE."""
    loss = F.cross_entropy(logits, events, reduction="none")
    if served is None or not len(serve_events):
        return loss
    is_serve = torch.zeros(logits.shape[-1], dtype=torch.bool, device=logits.device)
    is_serve[list(serve_events)] = True
    happened = torch.where(served[:, None] == 1, is_serve[None], ~is_serve[None])
    outcome = -torch.logsumexp(torch.log_softmax(logits.float(), -1).masked_fill(~happened, float("-inf")), -1)
    return torch.where(served >= 0, outcome, loss)
