"""Decode the recorded PNGs once into a palette-index cache that training reads at memory speed.

Breakout draws with a handful of colours, so a frame is stored as one uint8 colour class per pixel
(210x160 bytes instead of 210x160x3). The cache lives in `{data_dir}/cache/` and records the data
set's fingerprint: when episodes are added, removed or replaced it is rebuilt, otherwise reused.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from common.dataset import Episode, dataset_fingerprint, read_frames, require_dataset
from common.io import atomic_write_json

CACHE_FORMAT = 1
MAX_COLOURS = 16
FRAME_H, FRAME_W = 210, 160


@dataclass
class CachedEpisode:
    level: int
    index: int
    split: str
    start: int          # row of frame 0 in the cache array
    num_frames: int
    actions: list[int]  # monitoring and evaluation only, never a training input


@dataclass
class FrameCache:
    frames: np.ndarray                      # (total_frames, 210, 160) uint8 colour classes
    palette: list[tuple[int, int, int]]     # class -> RGB
    episodes: list[CachedEpisode]
    fingerprint: str

    def episode_frames(self, episode: CachedEpisode) -> np.ndarray:
        return self.frames[episode.start:episode.start + episode.num_frames]

    def split(self, name: str) -> list[CachedEpisode]:
        return [e for e in self.episodes if e.split == name]


def cache_paths(data_dir: str | Path) -> tuple[Path, Path]:
    folder = Path(data_dir) / "cache"
    return folder / "latent_frames.npy", folder / "latent_frames.json"


class ColourClassifier:
    """RGB -> colour class through a 256^3 lookup table; new colours join the palette (up to MAX_COLOURS),
    beyond that a colour maps to its nearest palette entry."""

    UNSEEN = 255

    def __init__(self):
        self.palette: list[tuple[int, int, int]] = []
        self.lut = np.full((256, 256, 256), self.UNSEEN, dtype=np.uint8)

    def __call__(self, frames: np.ndarray) -> np.ndarray:
        """(..., 3) uint8 RGB -> (...) uint8 classes."""
        classes = self.lut[frames[..., 0], frames[..., 1], frames[..., 2]]
        unseen = classes == self.UNSEEN
        if unseen.any():
            pixels = frames[unseen].astype(np.int64)
            for key in np.unique((pixels[:, 0] << 16) | (pixels[:, 1] << 8) | pixels[:, 2]).tolist():
                r, g, b = key >> 16, (key >> 8) & 255, key & 255
                if len(self.palette) < MAX_COLOURS:
                    self.palette.append((r, g, b))
                    self.lut[r, g, b] = len(self.palette) - 1
                else:
                    nearest = ((np.array(self.palette) - np.array([r, g, b])) ** 2).sum(1).argmin()
                    self.lut[r, g, b] = nearest
            classes = self.lut[frames[..., 0], frames[..., 1], frames[..., 2]]
        return classes


def load_frame_cache(data_dir: str | Path, rebuild: bool = False) -> FrameCache:
    """The cache for the data set in data_dir, (re)built when missing or stale (fingerprint changed)."""
    episodes = require_dataset(data_dir)
    fingerprint = dataset_fingerprint(data_dir)
    array_path, meta_path = cache_paths(data_dir)
    if not rebuild and array_path.exists() and meta_path.exists():
        try:
            meta = json.loads(meta_path.read_text())
            if meta.get("format") == CACHE_FORMAT and meta.get("fingerprint") == fingerprint:
                frames = np.load(array_path, mmap_mode="r")
                if frames.shape[0] == meta["total_frames"]:
                    return _from_meta(meta, frames, episodes)
        except (OSError, ValueError, KeyError, json.JSONDecodeError):
            pass  # unreadable cache: rebuild it below
    return _build(data_dir, episodes, fingerprint, array_path, meta_path)


def _from_meta(meta: dict, frames: np.ndarray, episodes: list[Episode]) -> FrameCache:
    actions = {(e.level, e.index): e.actions for e in episodes}
    cached = [CachedEpisode(level=r["level"], index=r["index"], split=r["split"], start=r["start"],
                            num_frames=r["num_frames"], actions=actions[(r["level"], r["index"])])
              for r in meta["episodes"]]
    return FrameCache(frames=frames, palette=[tuple(c) for c in meta["palette"]], episodes=cached,
                      fingerprint=meta["fingerprint"])


def _build(data_dir: str | Path, episodes: list[Episode], fingerprint: str, array_path: Path,
           meta_path: Path) -> FrameCache:
    total = sum(e.num_frames for e in episodes)
    array_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = array_path.with_suffix(".tmp.npy")
    frames = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=(total, FRAME_H, FRAME_W))
    classify = ColourClassifier()
    records, start = [], 0
    with tqdm(total=total, desc="frame cache", unit="frame", leave=False) as bar:
        for episode in episodes:
            for chunk in range(0, episode.num_frames, 256):
                stop = min(chunk + 256, episode.num_frames)
                frames[start + chunk:start + stop] = classify(read_frames(episode, chunk, stop))
                bar.update(stop - chunk)
            records.append({"level": episode.level, "index": episode.index, "split": episode.split,
                            "start": start, "num_frames": episode.num_frames})
            start += episode.num_frames
    frames.flush()
    del frames
    tmp.replace(array_path)
    meta = {"format": CACHE_FORMAT, "fingerprint": fingerprint, "total_frames": total,
            "palette": [list(c) for c in classify.palette], "episodes": records}
    atomic_write_json(meta_path, meta)
    return _from_meta(meta, np.load(array_path, mmap_mode="r"), episodes)
