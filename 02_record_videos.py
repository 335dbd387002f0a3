"""Stage 02: record gameplay at every skill level as the world model's data set.

For level 0 a uniformly random player (fresh action every step: the data the world model needs to
learn what the player chose); for every checkpoints/dqn/skill_level_k.pt (k >= 1) the DQN agent.
Writes one native 210x160 RGB PNG per agent step, data/actions/skill_level_k_actions.json, an MP4
per episode and data/actions/summary.json. Games run in parallel; each
episode lands in a temporary folder that is renamed when complete, and the JSON is rewritten
atomically after every episode, so Ctrl-C or a crash leaves only complete episodes.

    python 02_record_videos.py                          # level 0 random + every DQN skill level
    python 02_record_videos.py --policy random --preset quick
    python 02_record_videos.py --bulk --total-videos 100 --percent-random 20
    python 02_record_videos.py --verify                 # check the data set against the contract
"""
from __future__ import annotations

import argparse
import os
import re
import sys
from pathlib import Path

import numpy as np

from common import dataset as ds
from common.action_to_latent import file_fingerprint
from common.cli import add_preset_arg, apply_preset, non_negative_int, positive_int, probability, run_main
from common.errors import UserError
from common.io import atomic_write_json, run_lock
from common.paths import dqn_dir, lock_path, summary_path
from common.level_store import LevelStore, print_summary, run_jobs, summarize
from common.recorder import RANDOM_ENV_CONFIG, gym_id

PRESETS = {
    "smoke": {"random_episodes": 4, "episodes": 2, "max_steps": 60},
    "quick": {"random_episodes": 130, "episodes": 23, "max_steps": 2000},
    "full": {"random_episodes": 50, "episodes": 50, "max_steps": 27_000},
}


def level_list(text: str) -> set[int]:
    try:
        levels = {int(part) for part in text.split(",") if part.strip()}
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of levels") from None
    if not levels or min(levels) < 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of levels")
    return levels


def parse_args() -> argparse.Namespace:
    presets = "\n".join(f"  {name:<6} " + ", ".join(f"--{k.replace('_', '-')} {v}" for k, v in values.items())
                         for name, values in PRESETS.items())
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="presets:\n" + presets)
    parser.add_argument("--data-dir", type=Path, default=Path("data"), help="where the data set is written")
    parser.add_argument("--checkpoint-dir", type=Path, default=Path("checkpoints"),
                        help="checkpoint root; DQN skill levels are read from <dir>/dqn/skill_level_k.pt")
    add_preset_arg(parser)
    parser.add_argument("--policy", choices=("auto", "random", "dqn"), default="auto",
                        help="auto: level 0 random + DQN levels >= 1; random: level 0 only, no checkpoint "
                             "needed; dqn: every skill_level_k.pt including the untrained level 0")
    parser.add_argument("--levels", type=level_list, default=None,
                        help="comma-separated skill levels to record, e.g. 0,2 (default all)")
    parser.add_argument("--episodes", type=positive_int, default=None, help="episodes per DQN level")
    parser.add_argument("--random-episodes", type=positive_int, default=None,
                        help="episodes for the random-policy level 0")
    parser.add_argument("--max-steps", type=positive_int, default=None,
                        help="agent steps after which a game is cut (recorded as truncated)")
    parser.add_argument("--frame-skip", type=positive_int, default=None,
                        help="emulator frames per agent step (default: the agent's, 4); a DQN plays worse "
                             "at a frame skip it was not trained on")
    parser.add_argument("--epsilon", type=probability, default=0.05,
                        help="chance of a uniformly random action at each DQN step (0.05 = Stage 01's evaluation)")
    parser.add_argument("--bulk", action="store_true",
                        help="add --total-videos episodes spread over the DQN levels, with "
                             "--percent-random random actions mixed in (fresh each step)")
    parser.add_argument("--total-videos", type=positive_int, default=100, help="episodes to add in --bulk mode")
    parser.add_argument("--percent-random", type=float, default=20.0,
                        help="percent of steps with a uniformly random action in --bulk mode")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--replace", action="store_true",
                      help="re-record the chosen levels; the old episodes are removed only once the new ones are complete")
    mode.add_argument("--add", action="store_true",
                      help="record the requested number of episodes on top of the existing ones "
                           "(default: top up each level to the requested number)")
    parser.add_argument("--no-video", action="store_true", help="skip the MP4s (PNGs and JSON only)")
    parser.add_argument("--workers", type=positive_int, default=min(os.cpu_count() or 1, 8),
                        help="games played in parallel (default: one per CPU core, at most 8)")
    parser.add_argument("--seed", type=non_negative_int, default=0,
                        help="episode seeds and splits follow from (seed, level, episode index)")
    parser.add_argument("--verify", action="store_true",
                        help="only check the existing data set (decodes every PNG) and exit non-zero on problems")
    args = parser.parse_args()
    if args.verify:
        return args
    args = apply_preset(args, PRESETS)
    if not 0.0 <= args.percent_random <= 100.0:
        parser.error("--percent-random must be between 0 and 100")
    return args


def find_checkpoints(checkpoint_dir: Path) -> dict[int, Path]:
    folder = dqn_dir(checkpoint_dir)
    found = {}
    if folder.is_dir():
        for path in folder.glob("skill_level_*.pt"):
            match = re.fullmatch(r"skill_level_(\d+)\.pt", path.name)
            if match:
                found[int(match.group(1))] = path
    return dict(sorted(found.items()))


def plan_levels(args: argparse.Namespace) -> list[dict]:
    """Which levels to record, with which policy and env settings, and how many episodes each."""
    wanted = args.levels
    checkpoints = find_checkpoints(args.checkpoint_dir) if args.policy != "random" else {}
    plans = []
    if args.bulk:
        levels = [k for k in checkpoints if k >= 1 and (wanted is None or k in wanted)]
        if not levels:
            raise UserError(f"--bulk needs trained DQN checkpoints (skill_level_k.pt, k >= 1) in "
                            f"{args.checkpoint_dir / 'dqn'}: run 01_train_dqn.py first")
        counts = np.bincount(np.arange(args.total_videos) % len(levels), minlength=len(levels))
        for level, count in zip(levels, counts):
            plans.append({"level": level, "policy": "dqn", "checkpoint": checkpoints[level],
                          "count": int(count), "random_fraction": args.percent_random / 100.0})
        return [p for p in plans if p["count"] > 0]
    if args.policy in ("auto", "random") and (wanted is None or 0 in wanted):
        plans.append({"level": 0, "policy": "random", "checkpoint": None, "count": args.random_episodes,
                      "random_fraction": 1.0})
    for level, path in checkpoints.items():
        if (level >= 1 or args.policy == "dqn") and (wanted is None or level in wanted):
            plans.append({"level": level, "policy": "dqn", "checkpoint": path, "count": args.episodes,
                          "random_fraction": args.epsilon})
    if args.policy == "auto" and not checkpoints:
        print(f"no DQN checkpoints in {args.checkpoint_dir / 'dqn'}: recording the random level 0 only "
              f"(run 01_train_dqn.py for the skill levels)")
    if args.policy == "dqn" and not plans:
        raise UserError(f"no skill_level_k.pt in {args.checkpoint_dir / 'dqn'}: run 01_train_dqn.py first "
                        f"(or record random play with --policy random)")
    if not plans:
        raise UserError(f"nothing to record for levels {sorted(wanted)} (checkpoints found: {sorted(checkpoints)})")
    return plans


def level_header(plan: dict, frame_skip: int | None) -> dict:
    """The per-level JSON header: what a reader needs to interpret the actions and frames."""
    if plan["policy"] == "random":
        env_config, checkpoint = dict(RANDOM_ENV_CONFIG), None
    else:
        from common.dqn import load_policy

        policy = load_policy(plan["checkpoint"], "cpu")
        env_config = dict(policy.env_config)
        checkpoint = {"name": plan["checkpoint"].name, "sha1": file_fingerprint(plan["checkpoint"]),
                      "step": policy.step, "eval_score": policy.eval_score, "threshold": policy.threshold,
                      "threshold_reached": policy.threshold_reached}
    env_config["frame_skip"] = frame_skip or env_config["frame_skip"]
    return {"format": ds.FORMAT, "game": env_config["game"], "env_id": gym_id(env_config["game"]),
            "level": plan["level"], "frame_skip": env_config["frame_skip"],
            "action_meanings": list(env_config["action_meanings"]), "frame_shape": list(ds.FRAME_SHAPE),
            "sticky_actions": 0.0, "noop_max": env_config["noop_max"], "stack": env_config["stack"],
            "policy": plan["policy"], "checkpoint": checkpoint, "env_config": env_config}


def verify(data_dir: Path) -> None:
    problems = ds.verify_dataset(data_dir, decode=True)
    if problems:
        print("\n".join(problems))
        raise UserError(f"{len(problems)} problem(s) in the data set under {data_dir}")
    episodes = ds.load_episodes(data_dir)
    print(f"ok: {len(episodes)} episodes, {sum(e.num_frames for e in episodes)} frames under {data_dir} "
          f"match the 02 contract")


def record(args: argparse.Namespace, plans: list[dict]) -> None:
    """Top up, add to or replace each planned level, moving every finished episode into place."""
    mode = "replace" if args.replace else "add" if (args.add or args.bulk) else "top-up"
    stores, jobs = [], []
    for plan in plans:
        store = LevelStore(args.data_dir, level_header(plan, args.frame_skip), mode)
        count = plan["count"] if mode != "top-up" else max(plan["count"] - store.existing_count(), 0)
        if count == 0:
            print(f"level {plan['level']}: already has {store.existing_count()} episodes "
                  f"(--add for more, --replace to re-record)")
        stores.append(store)
        jobs += [(store, store.job(store.next_index + i, args, plan)) for i in range(count)]
    if not jobs:
        return
    print(f"recording {len(jobs)} episodes over levels {[p['level'] for p in plans]} with {args.workers} "
          f"worker(s) into {args.data_dir} ({mode}, max {args.max_steps} steps per episode)")
    try:
        frames, seconds = run_jobs(jobs, args.workers)
    except BaseException:
        for store in stores:
            store.abandon()
        kept = sum(len(s.new) for s in stores if s.mode != "replace")
        print(f"stopped: {kept} complete episode(s) kept, partial ones removed", file=sys.stderr)
        raise
    for store in stores:
        store.finish()
    print(f"recorded {frames} frames in {seconds:.1f} s = {frames / max(seconds, 1e-9):.0f} frames/s")


def main() -> None:
    args = parse_args()
    if args.verify:
        verify(args.data_dir)
        return
    plans = plan_levels(args)
    with run_lock(lock_path(args.data_dir), "recording"):
        record(args, plans)
    summary = summarize(args.data_dir)
    atomic_write_json(summary_path(args.data_dir), summary)
    print_summary(summary)
    problems = ds.verify_dataset(args.data_dir, decode=False)
    if problems:
        raise UserError("the data set fails the contract check:\n  " + "\n  ".join(problems[:10]))


if __name__ == "__main__":
    run_main(main)
