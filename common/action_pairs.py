"""Stage 4's (action, latent) pairs as the action->latent map's training inputs: the pairs themselves
(checked against the data set and the latent checkpoint they came from), each pair's frame views,
previous actions and paddle knob. 05_train_action_to_latent.py trains on them."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from common.action_to_latent import (ActionToLatent, file_fingerprint, knob_positions, past_frame_indices,
                                     previous_action_rows, red_view)
from common.dataset import level_files, read_level
from common.errors import UserError
from common.frame_cache import load_frame_cache
from common.io import read_json
from common.paths import latent_dir, pairs_path

PAIRS_STAGE = "04_collect_action_latent_pairs.py"


def load_pairs(data_dir: str | Path, checkpoint_root: str | Path) -> dict:
    """Stage 4's pairs as arrays; stale pairs (from another latent checkpoint) are a UserError."""
    doc = read_json(pairs_path(data_dir), PAIRS_STAGE)
    if not isinstance(doc, dict) or "meta" not in doc or not doc.get("pairs"):
        raise UserError(f"{pairs_path(data_dir)} holds no pairs: re-run {PAIRS_STAGE}")
    meta, pairs = doc["meta"], doc["pairs"]
    latent_file = latent_dir(checkpoint_root) / Path(meta["latent_checkpoint"]).name
    if latent_file.exists() and file_fingerprint(latent_file) != meta["latent_fingerprint"]:
        raise UserError(f"the pairs were made with another version of {latent_file}: re-run {PAIRS_STAGE}")
    loaded = {
        "meta": meta,
        "actions": torch.tensor([p["action"] for p in pairs], dtype=torch.int64),
        "codes": torch.tensor([p["latent_code"] for p in pairs], dtype=torch.int64),
        "split": np.array([p["split"] for p in pairs]),
        "episode": [(p["level"], p["episode"]) for p in pairs],
        "frame": np.array([p["frame"] for p in pairs]),
    }
    if meta.get("event_classes"):   # the random event each transition shows, and the world model's prior over it
        loaded["events"] = torch.tensor([p["event"] for p in pairs], dtype=torch.int64)
        loaded["event_prior"] = torch.tensor([p["event_prior"] for p in pairs], dtype=torch.float32)
        if "since_ball" not in pairs[0]:
            raise UserError(f"{pairs_path(data_dir)} was written by an older Stage 4: re-run {PAIRS_STAGE}")
        loaded["since_ball"] = torch.tensor([p["since_ball"] for p in pairs], dtype=torch.int64)
        loaded["served"] = served(pairs)
    return loaded


# A game waits for a serve only once its ball has been out of play this many steps: FIRE serves once the
# lives digit has dropped, 4-5 steps after the ball left; a shorter gap is a ball among the bricks or
# hidden by them, which comes back whatever the key (126 such "serves" after NOOP, LEFT or RIGHT in the
# quick data; from 5 steps on, 752 of 753 serves followed FIRE).
WAITING_STEPS = 5


def served(pairs: list[dict]) -> torch.Tensor:
    """(N,) int64 per pair: 1 where its game waits for a serve (no ball in play for WAITING_STEPS steps or
    more) and its next frame shows a ball in play, 0 where the next frame shows none either, -1 where the
    game is not waiting or the next frame has no pair (the game's end). Ball in play as Stage 4 counts it."""
    since = {(p["level"], p["episode"], p["frame"]): p["since_ball"] for p in pairs}
    out = []
    for p in pairs:
        after = since.get((p["level"], p["episode"], p["frame"] + 1))
        out.append(-1 if p["since_ball"] < WAITING_STEPS or after is None else int(after == 0))
    return torch.tensor(out, dtype=torch.int64)


def load_frame_views(data_dir: str | Path, pairs: dict, k: int, frames_used: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Every frame's view (N, VIEW_SIZE) uint8 and, per pair, the rows of its newest frames_used context frames.

    Frames come from Stage 3's palette-class cache (no PNG decoding); the red channel of a class is
    exact, so the views equal frame_view() of the RGB frames that play will feed.
    """
    cache = load_frame_cache(data_dir)
    red = torch.tensor([c[0] for c in cache.palette], dtype=torch.uint8)
    cached = {(e.level, e.index): e for e in cache.episodes}
    offsets, views, start = {}, [], 0
    for key in tqdm(sorted(set(pairs["episode"])), desc="frame views", unit="episode"):
        classes = torch.from_numpy(np.array(cache.episode_frames(cached[key]))).long()
        views.append(red_view(red[classes]))
        offsets[key] = start
        start += len(classes)
    index = np.empty((len(pairs["frame"]), frames_used), dtype=np.int64)
    for n, (key, frame) in enumerate(zip(pairs["episode"], pairs["frame"])):
        index[n] = np.asarray(past_frame_indices(int(frame), k)[-frames_used:]) + offsets[key]
    return torch.cat(views), torch.from_numpy(index)


def check_pairs_match_dataset(episodes: dict, pairs: dict) -> None:
    """One pair per transition, with the data set's actions: otherwise the pairs are stale."""
    seen: dict[tuple[int, int], list[int]] = {}
    for key, action in zip(pairs["episode"], pairs["actions"].tolist()):
        seen.setdefault(key, []).append(action)
    for key, actions in seen.items():
        if key not in episodes or episodes[key].actions != actions:
            raise UserError(f"the pairs of level {key[0]} episode {key[1]} do not match the data set: "
                            f"re-run {PAIRS_STAGE}")
    unlabelled = sorted(set(episodes) - set(seen))
    if unlabelled:
        raise UserError(f"{len(unlabelled)} recorded episode(s) have no pairs (e.g. level {unlabelled[0][0]} "
                        f"episode {unlabelled[0][1]}): re-run {PAIRS_STAGE}")


def load_previous_actions(episodes: dict, pairs: dict, n: int) -> torch.Tensor:
    """Per pair, the n actions before it in its episode (N, n) int64, oldest first (NOOP before the start)."""
    rows_of: dict[tuple[int, int], list[int]] = {}
    for row, key in enumerate(pairs["episode"]):
        rows_of.setdefault(key, []).append(row)
    previous = np.zeros((len(pairs["frame"]), n), dtype=np.int64)
    for key, rows in rows_of.items():
        previous[rows] = previous_action_rows(episodes[key].actions, pairs["frame"][rows], n)
    return torch.from_numpy(previous)


def recorded_frame_skip(data_dir: str | Path) -> int:
    """The emulator frames per recorded step, which the knob's turn per step depends on; one for all levels."""
    skips = {int(read_level(path).get("frame_skip", 4)) for path in level_files(data_dir).values()}
    if not skips:
        raise UserError(f"no recorded gameplay in {data_dir}/actions: run 02_record_videos.py first")
    if len(skips) != 1:
        raise UserError(f"the recorded levels use different frame skips {sorted(skips)}: the knob needs one; "
                        f"re-record them alike or pass --no-knob")
    return skips.pop()


def load_knob(episodes: dict, pairs: dict, frame_skip: int) -> torch.Tensor:
    """Per pair, the paddle knob's position before its transition (N,) float32."""
    knob_of = {key: knob_positions(episodes[key].actions, frame_skip) for key in set(pairs["episode"])}
    return torch.from_numpy(np.array([knob_of[key][frame] for key, frame in zip(pairs["episode"], pairs["frame"])],
                                     dtype=np.float32))


class PairInputs:
    """The map's inputs for any rows of the pairs: action, frame views, previous actions and knob (as used)."""

    def __init__(self, pairs: dict, views: torch.Tensor | None, view_index: torch.Tensor | None,
                 previous: torch.Tensor | None, knob: torch.Tensor | None):
        self.actions, self.views, self.view_index = pairs["actions"], views, view_index
        self.previous, self.knob = previous, knob
        self.event_prior = pairs.get("event_prior")   # the world model's prior, which the event head reads
        self.since_ball = pairs.get("since_ball")     # ... and the steps since a ball was in play

    def logits(self, model: ActionToLatent, rows: torch.Tensor, device: torch.device) -> torch.Tensor:
        views = self.views[self.view_index[rows]].to(device) if self.views is not None else None
        previous = self.previous[rows].to(device) if self.previous is not None else None
        knob = self.knob[rows].to(device) if self.knob is not None else None
        return model.features_from_views(self.actions[rows].to(device), views, previous, knob)

    def event_correction(self, model: ActionToLatent, rows: torch.Tensor, device: torch.device) -> torch.Tensor:
        """What the map adds to the world model's event prior logits for these rows (B, event_classes)."""
        return model.event_correction_from_views(self.actions[rows].to(device),
                                                 self.views[self.view_index[rows]].to(device),
                                                 self.event_prior[rows].to(device), self.since_ball[rows].to(device))


def build_inputs(data_dir: str | Path, model: ActionToLatent, pairs: dict, episodes: dict) -> PairInputs:
    """Everything the map sees for each pair, loaded once: frame views, previous actions, knob (as used)."""
    check_pairs_match_dataset(episodes, pairs)
    views = view_index = None
    if model.uses_frames:
        views, view_index = load_frame_views(data_dir, pairs, model.context_frames, model.frames_used)
    previous = load_previous_actions(episodes, pairs, model.previous_actions) if model.previous_actions else None
    knob = load_knob(episodes, pairs, model.knob_frame_skip) if model.uses_knob else None
    return PairInputs(pairs, views, view_index, previous, knob)
