"""The recorded gameplay data set (Stage 02's output): loading, verification, frame reading.

Layout under the data dir (the 02 -> 03 contract; the names are spelled in common/paths.py):

    raw_gameplay/skill_level_{k}/episode_{NNN}/frame_{NNNNN}.png   native 210x160 RGB, one per agent step
    actions/skill_level_{k}_actions.json                            per-level header + one record per episode
    videos/skill_level_{k}/episode_{NNN}.mp4                        for people, not read by later stages

Per episode, `actions[i]` turned frame i into frame i+1 and `rewards[i]` is what that step earned, so
both have num_frames - 1 entries; `lives[i]` is the lives counter shown in frame i (num_frames entries).
The JSON file is the source of truth: a folder that no JSON lists is not part of the data set.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from common.errors import UserError
from common.io import lock_owner
from common.paths import actions_path, frame_name, level_frames_dir, lock_path

FRAME_SHAPE = (210, 160, 3)
ACTION_NAMES = ("NOOP", "FIRE", "RIGHT", "LEFT")  # Breakout's minimal action set, in ALE's order
NOOP, FIRE, RIGHT, LEFT = range(len(ACTION_NAMES))
SPLITS = ("train", "val", "test")
FORMAT = 1
STAGE = "02_record_videos.py"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
PNG_TRAILER = b"IEND\xaeB`\x82"
_ACTIONS_FILE = re.compile(r"^skill_level_(\d+)_actions\.json$")
_EPISODE_DIR = re.compile(r"^episode_(\d+)$")


def recording_pid(data_dir: str | Path) -> int | None:
    """The pid of a live recording writing to data_dir, else None (no lock, or a stale one)."""
    return lock_owner(lock_path(data_dir))


@dataclass
class Episode:
    """One recorded game; `folder` is absolute, frames are read lazily with read_frames()."""
    level: int
    index: int
    folder: Path
    split: str
    actions: list[int]
    rewards: list[float]
    lives: list[int]
    score: float
    num_frames: int
    seed: int
    policy: str
    random_fraction: float = 0.0
    truncated: bool = False
    extra: dict = field(default_factory=dict, repr=False)

    def frame_path(self, i: int) -> Path:
        return self.folder / frame_name(i)


def level_files(data_dir: str | Path) -> dict[int, Path]:
    """{level: actions JSON path} for every level recorded under data_dir."""
    folder = Path(data_dir) / "actions"
    if not folder.is_dir():
        return {}
    found = {}
    for path in folder.iterdir():
        match = _ACTIONS_FILE.match(path.name)
        if match:
            found[int(match.group(1))] = path
    return dict(sorted(found.items()))


def read_level(path: Path) -> dict:
    """A level's JSON document; unreadable or malformed is a UserError naming Stage 02."""
    try:
        doc = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as err:
        raise UserError(f"{path} is unreadable or not valid JSON ({err}): re-run {STAGE}") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("episodes"), list):
        raise UserError(f"{path} is not a Stage 02 actions file (no 'episodes' list): re-run {STAGE}")
    return doc


def _episode_from_record(data_dir: Path, level: int, record: dict) -> Episode:
    known = {"index", "folder", "split", "actions", "rewards", "lives", "score", "num_frames",
             "seed", "policy", "random_fraction", "truncated"}
    return Episode(level=level, index=int(record["index"]), folder=(data_dir / record["folder"]).resolve(),
                   split=record["split"], actions=list(record["actions"]), rewards=list(record["rewards"]),
                   lives=list(record["lives"]), score=float(record["score"]),
                   num_frames=int(record["num_frames"]), seed=int(record["seed"]), policy=str(record["policy"]),
                   random_fraction=float(record.get("random_fraction", 0.0)),
                   truncated=bool(record.get("truncated", False)),
                   extra={k: v for k, v in record.items() if k not in known})


def load_episodes(data_dir: str | Path, splits: tuple[str, ...] | None = None) -> list[Episode]:
    """Every recorded episode of every level (ordered by level, then index), optionally only some splits."""
    data_dir = Path(data_dir)
    files = level_files(data_dir)
    if not files:
        raise UserError(f"no recorded gameplay in {data_dir}/actions: run {STAGE} first")
    if splits is not None:
        unknown = set(splits) - set(SPLITS)
        if unknown:
            raise UserError(f"unknown split(s) {sorted(unknown)}; expected some of {SPLITS}")
    episodes = []
    for level, path in files.items():
        for record in read_level(path)["episodes"]:
            try:
                episode = _episode_from_record(data_dir, level, record)
            except (KeyError, TypeError, ValueError) as err:
                raise UserError(f"{path}: malformed episode record ({err!r}): run {STAGE} --verify") from None
            if splits is None or episode.split in splits:
                episodes.append(episode)
    return sorted(episodes, key=lambda e: (e.level, e.index))


def _check_png_fast(path: Path) -> str | None:
    """Existence, non-empty, PNG signature and IEND trailer: catches missing and truncated files cheaply."""
    try:
        size = path.stat().st_size
        if size < len(PNG_SIGNATURE) + len(PNG_TRAILER):
            return f"{path}: truncated PNG ({size} bytes)"
        with open(path, "rb") as handle:
            head = handle.read(len(PNG_SIGNATURE))
            handle.seek(-len(PNG_TRAILER), 2)
            tail = handle.read()
    except OSError as err:
        return f"{path}: unreadable ({err.strerror})"
    if head != PNG_SIGNATURE:
        return f"{path}: not a PNG file"
    if tail != PNG_TRAILER:
        return f"{path}: truncated PNG (no IEND trailer)"
    return None


def _check_png_decode(path: Path) -> str | None:
    image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if image is None:
        return f"{path}: unreadable PNG"
    if image.shape != FRAME_SHAPE or image.dtype != np.uint8:
        return f"{path}: shape {image.shape} {image.dtype}, expected {FRAME_SHAPE} uint8"
    return None


def _verify_record(data_dir: Path, level: int, record: dict, num_actions: int, decode: bool) -> list[str]:
    where = f"level {level} episode {record.get('index', '?')}"
    required = ("index", "folder", "split", "actions", "rewards", "lives", "score", "num_frames", "seed", "policy")
    missing = [key for key in required if key not in record]
    if missing:
        return [f"{where}: record lacks {', '.join(missing)}"]
    problems = []
    n = record["num_frames"]
    if not isinstance(n, int) or n < 2:
        return [f"{where}: num_frames {n!r} is not an integer >= 2"]
    if record["split"] not in SPLITS:
        problems.append(f"{where}: unknown split {record['split']!r} (expected one of {SPLITS})")
    if len(record["actions"]) != n - 1:
        problems.append(f"{where}: {len(record['actions'])} actions for {n} frames (expected {n - 1})")
    if len(record["rewards"]) != n - 1:
        problems.append(f"{where}: {len(record['rewards'])} rewards for {n} frames (expected {n - 1})")
    if len(record["lives"]) != n:
        problems.append(f"{where}: {len(record['lives'])} lives entries for {n} frames (expected {n})")
    bad = [a for a in record["actions"] if not isinstance(a, int) or not 0 <= a < num_actions]
    if bad:
        problems.append(f"{where}: actions outside 0..{num_actions - 1}: {sorted(set(map(str, bad)))[:5]}")
    folder = data_dir / record["folder"]
    if not folder.is_dir():
        return problems + [f"{where}: frame folder {folder} is missing"]
    names = {p.name for p in folder.iterdir()}
    expected = {frame_name(i) for i in range(n)}
    missing_frames = sorted(expected - names)
    extra = sorted(names - expected)
    if missing_frames:
        problems.append(f"{where}: {len(missing_frames)} missing frame(s) in {folder}, e.g. {missing_frames[0]}")
    if extra:
        problems.append(f"{where}: {len(extra)} unexpected file(s) in {folder}, e.g. {extra[0]}")
    check = _check_png_decode if decode else _check_png_fast
    for name in sorted(expected & names):
        problem = check(folder / name)
        if problem:
            problems.append(f"{where}: {problem}")
    return problems


def verify_dataset(data_dir: str | Path, decode: bool = True) -> list[str]:
    """Every way the data set breaks the 02 contract, one readable line each (empty list = valid).

    decode=False is the fast check (names, counts, lengths, PNG signature and trailer);
    decode=True also decodes every PNG and checks its shape.
    """
    data_dir = Path(data_dir)
    files = level_files(data_dir)
    if not files:
        return [f"no recorded gameplay in {data_dir}/actions: run {STAGE} first"]
    problems = []
    recording = recording_pid(data_dir) is not None  # its next episode may sit renamed but not yet listed
    for level, path in files.items():
        try:
            doc = read_level(path)
        except UserError as err:
            problems.append(str(err))
            continue
        num_actions = len(doc.get("action_meanings") or []) or 1 << 30
        if list(doc.get("frame_shape", FRAME_SHAPE)) != list(FRAME_SHAPE):
            problems.append(f"{path}: frame_shape {doc.get('frame_shape')} is not {list(FRAME_SHAPE)}")
        listed, seen_index = set(), set()
        for record in doc["episodes"]:
            if not isinstance(record, dict):
                problems.append(f"{path}: episode entry {record!r} is not an object")
                continue
            if record.get("index") in seen_index:
                problems.append(f"level {level}: episode index {record.get('index')} listed twice")
            seen_index.add(record.get("index"))
            listed.add(Path(str(record.get("folder", ""))).name)
            problems.extend(_verify_record(data_dir, level, record, num_actions, decode))
        frames_dir = level_frames_dir(data_dir, level)
        if frames_dir.is_dir() and not recording:
            for extra in sorted(p.name for p in frames_dir.iterdir() if _EPISODE_DIR.match(p.name)):
                if extra not in listed:
                    problems.append(f"level {level}: folder {frames_dir / extra} is not listed in {path.name}")
    raw = data_dir / "raw_gameplay"
    if raw.is_dir() and not recording:
        for folder in sorted(raw.iterdir()):
            match = re.match(r"^skill_level_(\d+)$", folder.name)
            if match and int(match.group(1)) not in files:
                problems.append(f"{folder} has no actions file {actions_path(data_dir, int(match.group(1))).name}")
    return problems


def require_dataset(data_dir: str | Path, decode: bool = False) -> list[Episode]:
    """What later stages call first: the episodes, or a UserError listing the first problems (or naming
    the recording still writing to data_dir: its set is not complete yet)."""
    owner = recording_pid(data_dir)
    if owner is not None and owner != os.getpid():
        raise UserError(f"a recording (pid {owner}) is still writing to {data_dir}: wait for {STAGE} to finish "
                        f"(or stop it) and run this stage again")
    problems = verify_dataset(data_dir, decode=decode)
    if problems:
        shown = "\n  ".join(problems[:10])
        more = f"\n  ... and {len(problems) - 10} more" if len(problems) > 10 else ""
        raise UserError(f"the recorded data set in {data_dir} is not valid ({len(problems)} problem(s)):\n  "
                        f"{shown}{more}\nre-record with {STAGE} (e.g. --replace), "
                        f"or see the full list with {STAGE} --verify")
    return load_episodes(data_dir)


def read_frames(episode: Episode, start: int = 0, stop: int | None = None) -> np.ndarray:
    """Frames start..stop-1 of an episode as (T, 210, 160, 3) uint8 RGB."""
    stop = episode.num_frames if stop is None else stop
    if not 0 <= start <= stop <= episode.num_frames:
        raise ValueError(f"frame range {start}:{stop} outside 0:{episode.num_frames}")
    frames = np.empty((stop - start, *FRAME_SHAPE), dtype=np.uint8)
    for t, i in enumerate(range(start, stop)):
        image = cv2.imread(str(episode.frame_path(i)), cv2.IMREAD_COLOR)
        if image is None or image.shape != FRAME_SHAPE:
            raise UserError(f"{episode.frame_path(i)} is missing or unreadable: run {STAGE} --verify")
        cv2.cvtColor(image, cv2.COLOR_BGR2RGB, dst=frames[t])
    return frames


def dataset_fingerprint(data_dir: str | Path) -> str:
    """A short hash that changes whenever an episode is added, removed or replaced (for frame caches)."""
    data_dir = Path(data_dir)
    digest = hashlib.sha1()
    for level, path in level_files(data_dir).items():
        digest.update(f"{level}:{path.name}\n".encode())
        digest.update(path.read_bytes())
        frames_dir = level_frames_dir(data_dir, level)
        if frames_dir.is_dir():
            for folder in sorted(frames_dir.iterdir()):
                if _EPISODE_DIR.match(folder.name):
                    stat = folder.stat()  # a re-written folder is a new inode with a new change time
                    digest.update(f"{folder.name}:{stat.st_ino}:{stat.st_ctime_ns}:{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:16]
