"""Where 02 puts what it records: one level's episodes on disk plus its JSON (LevelStore), the parallel
episode runner, and the per-level summary (data/actions/summary.json)."""
from __future__ import annotations

import argparse
import multiprocessing
import os
import shutil
import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

from common import dataset as ds, paths
from common.errors import UserError
from common.io import atomic_write_json
from common.recorder import choose_split, episode_seed, record_episode, worker_init


class LevelStore:
    """One level's episodes on disk plus its JSON; the only code that moves episodes into place."""

    COMPATIBLE = ("game", "frame_skip", "action_meanings", "policy", "checkpoint")

    def __init__(self, data_dir: Path, header: dict, mode: str):
        self.data_dir, self.header, self.mode = data_dir, header, mode
        self.level = header["level"]
        self.json_path = paths.actions_path(data_dir, self.level)
        self.frames_dir = paths.level_frames_dir(data_dir, self.level)
        self.videos_dir = paths.video_path(data_dir, self.level, 0).parent
        doc = ds.read_level(self.json_path) if self.json_path.exists() else {"episodes": []}
        self.old = doc["episodes"]
        if self.old and mode != "replace":
            clash = [key for key in self.COMPATIBLE if doc.get(key) != header[key]]
            if clash:
                raise UserError(f"level {self.level} in {self.json_path} was recorded with different "
                                f"{', '.join(clash)}; use --replace to re-record it")
        self.new: list[dict] = []
        self.remove_orphans()
        used = [record["index"] for record in self.old]
        self.next_index = max(used) + 1 if used else 0
        # a replaced level is recorded as a new one would be: seeds and splits follow the episode's place in
        # the new recording (its folders are numbered after the old ones, which stay until it is complete)
        self.first_new_index = self.next_index if mode == "replace" else 0

    def remove_orphans(self) -> None:
        """Temporary folders and episodes no JSON lists (left by a killed run) are not data: delete them."""
        listed = {paths.episode_dir_name(record["index"]) for record in self.old}
        for folder in (self.frames_dir, self.videos_dir):
            if not folder.is_dir():
                continue
            for path in folder.iterdir():
                if path.name.startswith(".tmp_") or (path.stem.startswith("episode_") and path.stem not in listed):
                    shutil.rmtree(path) if path.is_dir() else path.unlink()

    def existing_count(self) -> int:
        return 0 if self.mode == "replace" else len(self.old)

    def job(self, index: int, args: argparse.Namespace, plan: dict) -> dict:
        name, place = paths.episode_dir_name(index), index - self.first_new_index
        return {"level": self.level, "index": index, "seed": episode_seed(args.seed, self.level, place),
                "split": choose_split(args.seed, self.level, place), "policy": plan["policy"],
                "checkpoint": str(plan["checkpoint"]) if plan["checkpoint"] else None,
                "checkpoint_name": plan["checkpoint"].name if plan["checkpoint"] else None,
                "random_fraction": plan["random_fraction"], "frame_skip": self.header["frame_skip"],
                "env_config": self.header["env_config"], "max_steps": args.max_steps,
                "folder": f"raw_gameplay/{paths.level_name(self.level)}/{name}",
                "tmp_dir": str(self.frames_dir / f".tmp_{name}"),
                "video_tmp": None if args.no_video else str(self.videos_dir / f".tmp_{name}.mp4")}

    def add(self, record: dict, job: dict) -> None:
        """Move a finished episode into place, then list it (replace mode lists it only at finish())."""
        if job["video_tmp"]:
            os.replace(job["video_tmp"], paths.video_path(self.data_dir, self.level, record["index"]))
        os.replace(job["tmp_dir"], self.data_dir / record["folder"])
        self.new.append(record)
        if self.mode != "replace":
            self.write(self.old + self.new)

    def finish(self) -> None:
        """Replace mode: swap the level's JSON to the new episodes, then delete the old ones."""
        if self.mode != "replace":
            return
        self.write(self.new)
        for record in self.old:
            shutil.rmtree(self.data_dir / record["folder"], ignore_errors=True)
            paths.video_path(self.data_dir, self.level, record["index"]).unlink(missing_ok=True)

    def abandon(self) -> None:
        """After an interruption: drop temporary files and (replace mode) the unlisted new episodes."""
        self.old = ds.read_level(self.json_path)["episodes"] if self.json_path.exists() else []
        self.remove_orphans()

    def write(self, episodes: list[dict]) -> None:
        header = {k: v for k, v in self.header.items() if k != "env_config"}
        atomic_write_json(self.json_path, {**header, "episodes": sorted(episodes, key=lambda r: r["index"])})


def run_jobs(jobs: list[tuple[LevelStore, dict]], workers: int) -> tuple[int, float]:
    """Play every job (in parallel), moving each finished episode into place; returns frames and seconds."""
    by_folder = {job["folder"]: (store, job) for store, job in jobs}
    start, frames = time.perf_counter(), 0
    bar = tqdm(total=len(jobs), unit="ep", desc="recording", dynamic_ncols=True)

    def done(record: dict) -> None:
        nonlocal frames
        store, job = by_folder[record["folder"]]
        store.add(record, job)
        frames += record["num_frames"]
        bar.update(1)
        bar.set_postfix(frames=frames, fps=f"{frames / (time.perf_counter() - start):.0f}",
                        score=f"{record['score']:g}")

    try:
        if workers == 1:
            for _, job in jobs:
                done(record_episode(job))
        else:
            with multiprocessing.get_context("spawn").Pool(workers, initializer=worker_init) as pool:
                for record in pool.imap_unordered(record_episode, [job for _, job in jobs]):
                    done(record)
    finally:
        bar.close()
    return frames, time.perf_counter() - start


def lives_lost(lives: list[int]) -> int:
    """How many times the lives counter drops over an episode."""
    return int(sum(later < earlier for earlier, later in zip(lives, lives[1:])))


def summarize(data_dir: Path) -> dict:
    """Per level: episodes, frames, splits, scores, action histogram, share of changed actions."""
    levels = {}
    for level, path in ds.level_files(data_dir).items():
        doc = ds.read_level(path)
        episodes = doc["episodes"]
        if not episodes:
            continue
        scores = np.array([e["score"] for e in episodes], dtype=float)
        actions = [np.asarray(e["actions"]) for e in episodes]
        all_actions = np.concatenate(actions)
        changed = sum(int((a[1:] != a[:-1]).sum()) for a in actions)
        pairs = sum(max(len(a) - 1, 0) for a in actions)
        meanings = doc.get("action_meanings") or []
        histogram = np.bincount(all_actions, minlength=len(meanings)) / max(len(all_actions), 1)
        levels[str(level)] = {
            "policy": doc.get("policy"), "checkpoint": (doc.get("checkpoint") or {}).get("name"),
            "checkpoint_eval_score": (doc.get("checkpoint") or {}).get("eval_score"),
            "threshold": (doc.get("checkpoint") or {}).get("threshold"),
            "threshold_reached": (doc.get("checkpoint") or {}).get("threshold_reached"),
            "frame_skip": doc.get("frame_skip"), "episodes": len(episodes),
            "frames": int(sum(e["num_frames"] for e in episodes)),
            "splits": {s: sum(e["split"] == s for e in episodes) for s in ds.SPLITS},
            "score_mean": float(scores.mean()), "score_std": float(scores.std()),
            "score_min": float(scores.min()), "score_max": float(scores.max()),
            "mean_length": float(np.mean([e["num_frames"] for e in episodes])),
            # a rally: the frames one life lasts (frames per lost life; the last life of a cut game counts too)
            "frames_per_life": float(sum(e["num_frames"] for e in episodes) / max(sum(
                lives_lost(e["lives"]) + bool(e.get("truncated")) for e in episodes), 1)),
            "truncated": int(sum(bool(e.get("truncated")) for e in episodes)),
            "random_action_share": float(sum(e.get("random_steps", 0) for e in episodes) / max(len(all_actions), 1)),
            "action_histogram": {name: float(h) for name, h in zip(meanings, histogram)},
            "action_changed_share": changed / max(pairs, 1),
        }
    return {"levels": levels, "total_episodes": sum(v["episodes"] for v in levels.values()),
            "total_frames": sum(v["frames"] for v in levels.values())}


def print_summary(summary: dict) -> None:
    print(f"\n{'level':>5} {'policy':>6} {'eps':>4} {'frames':>7} {'tr/va/te':>9} {'score mean±std':>15} "
          f"{'min':>5} {'max':>5} {'len':>6} {'life':>5} {'rand':>5} {'chg':>5}  actions")
    for level, s in summary["levels"].items():
        splits = "/".join(str(s["splits"][k]) for k in ds.SPLITS)
        hist = " ".join(f"{name}:{share:.0%}" for name, share in s["action_histogram"].items())
        print(f"{level:>5} {s['policy']:>6} {s['episodes']:>4} {s['frames']:>7} {splits:>9} "
              f"{s['score_mean']:>8.1f}±{s['score_std']:<6.1f} {s['score_min']:>5g} {s['score_max']:>5g} "
              f"{s['mean_length']:>6.0f} {s['frames_per_life']:>5.0f} {s['random_action_share']:>5.0%} "
              f"{s['action_changed_share']:>5.0%}  {hist}")
    print(f"total: {summary['total_episodes']} episodes, {summary['total_frames']} frames "
          f"(life = frames per lost life, rand = share of random actions, chg = share of steps whose action "
          f"differs from the previous)")
