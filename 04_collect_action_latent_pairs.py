"""Stage 4: label every recorded transition with the latent action that the Stage 3 encoder infers.

For transition i of an episode (frame i -> frame i+1, made by actions[i]) the encoder sees the
k context frames i-k+1 .. i (frame 0 repeated before the start, as in Stage 3's training pairs)
and frame i+1, and returns the latent code. The (action, latent code) pairs are what Stage 5
learns from. With a random event latent, each pair also carries the event class the posterior reads
off frame i+1 (`event`) and the world model's prior over it (`event_prior`, log-probabilities), which
sees the frames and the action code but not the key: Stage 5 learns what the key adds (FIRE serves),
and `since_ball`, the steps since a frame last showed a ball in play (FIRE serves once the lives digit
has dropped, some steps after the ball left). It also finds what the event classes mean for the ball: the classes that serve (from a frame with no ball
in play, the next frame shows one on at least half of their transitions: `serve_events`) and those that
send the ball back at the paddle (from a frame with a ball just above the paddle, the next frame still
has a ball in play on at least half: `keep_events`), and where the serves landed (the ball a game that
waited for a serve showed next, counted per place: `serve_places`). The game draws those balls for sure,
its serves at those places (common/ball_sampler.py).
Writes data/actions/action_latent_pairs.json (one record per line) and, beside it,
action_latent_stats.json: action frequencies and the latent-code distribution per action.
"""
from __future__ import annotations

import argparse
import json
from collections import Counter
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from common.action_pairs import WAITING_STEPS
from common.action_to_latent import file_fingerprint, past_frame_indices
from common.ball_sampler import AT_PADDLE, SINCE_BALL_CAP, ball_in_play, serve_place, steps_since_ball
from common.cli import pick_device, positive_int, run_main, set_threads
from common.dataset import ACTION_NAMES, level_files, read_level, require_dataset
from common.detectors import RED
from common.frame_cache import load_frame_cache
from common.io import atomic_write_bytes, atomic_write_json
from common.latent_action import load_latent_action_model
from common.metrics import perplexity
from common.paths import latent_checkpoint, pair_stats_path, pairs_path



def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default="data", help="Stage 2 data set (input) and actions/ (output)")
    parser.add_argument("--checkpoint-dir", default="checkpoints", help="checkpoint root holding latent_action/")
    parser.add_argument("--which", choices=("best", "latest"), default="best", help="which Stage 3 checkpoint")
    parser.add_argument("--batch-size", type=positive_int, default=16,
                        help="transitions per encoder call (a small batch keeps the first layer's input in cache)")
    parser.add_argument("--device", default=None, help="cpu, cuda, mps (default: the best available)")
    parser.add_argument("--threads", type=positive_int, default=None,
                        help="CPU threads (default: every core; 1 can be faster when other jobs share the cores; "
                             "part4.md)")
    return parser.parse_args()


def class_lookup(model, cache_palette: list) -> torch.Tensor:
    """Cache colour class -> the model's colour class (the same table unless the palettes differ)."""
    rgb = torch.tensor([list(c) for c in cache_palette], dtype=torch.uint8)
    return model.to_index(rgb).long()


def encode_episode(model, frames: np.ndarray, lookup: torch.Tensor, batch_size: int, device: torch.device,
                   progress: tqdm) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
    """Latent codes (num_frames - 1, code_positions) for every transition of one episode and, with a
    random event latent, the posterior's event classes (num_frames - 1,) and the prior's log-probabilities
    (num_frames - 1, event_classes) given the past frames and the inferred code; else None, None.

    `frames` are the episode's palette classes from Stage 3's frame cache, so no PNG is decoded
    and every frame is converted once, not once per transition that sees it.
    """
    k, num_frames = model.context_frames, len(frames)
    codes, events, priors = [], [], []
    for start in range(0, num_frames - 1, batch_size):
        stop = min(start + batch_size, num_frames - 1)  # transitions start .. stop-1
        first = max(0, start - k + 1)
        classes = lookup[torch.from_numpy(np.array(frames[first:stop + 1])).long()].to(torch.uint8)
        past_index = torch.tensor([past_frame_indices(i, k) for i in range(start, stop)]) - first
        next_index = torch.arange(start, stop) + 1 - first
        with torch.inference_mode():
            past = classes[past_index].to(device)
            batch_codes, batch_events = model.infer_latents(past, classes[next_index].to(device))
            if batch_events is not None:
                events.append(batch_events.cpu().numpy())
                priors.append(torch.log_softmax(model.event_prior(past, batch_codes).float(), -1).cpu().numpy())
        codes.append(batch_codes.cpu().numpy().astype(np.int64))
        progress.update(stop - start)
    codes = np.concatenate(codes).reshape(num_frames - 1, -1)
    if not events:
        return codes, None, None
    return codes, np.concatenate(events), np.concatenate(priors)


OUTCOME_SHARE = 0.5     # a class serves (sends the ball back) when at least this share of its transitions do,
OUTCOME_LIFT = 2.0      # ... or this many times the share over all classes, where that is less
OUTCOME_MIN_COUNT = 5   # ... over at least this many transitions from a frame without a ball (with one at the paddle)


def ball_outcomes(happened: np.ndarray, cases: np.ndarray) -> tuple[list[int], dict[str, float]]:
    """happened[c] of cases[c] transitions of event class c showed the outcome -> (the classes that show it,
    each class's share).

    The lift matters for serves: a random player presses FIRE on few of the steps a game waits, so a class
    that means "a ball may come" serves on fewer than half of its transitions there (a quick run's world
    model put its serves in one class that served on 44% of them, 2.9 times the overall share of 15%, and
    the half alone found no serve class, so the game never served)."""
    share = {str(c): round(float(happened[c] / cases[c]), 4) for c in range(len(cases)) if cases[c]}
    overall = happened.sum() / max(cases.sum(), 1)
    needed = min(OUTCOME_SHARE, OUTCOME_LIFT * overall)
    return [c for c in range(len(cases))
            if cases[c] >= OUTCOME_MIN_COUNT and happened[c] >= needed * cases[c]], share


def action_names(data_dir: str | Path) -> list[str]:
    for path in level_files(data_dir).values():
        names = read_level(path).get("action_meanings")
        if names:
            return list(names)
    return list(ACTION_NAMES)


def code_statistics(records: list[dict], names: list[str]) -> dict:
    """Action frequencies and, per action, how its latent codes are spread.

    `majority_share` is the share of an action's transitions that carry its most common full
    code: what a map from the action alone can get right at best.
    """
    by_action: dict[int, list[tuple[int, ...]]] = {}
    for record in records:
        by_action.setdefault(record["action"], []).append(tuple(record["latent_code"]))
    total = len(records)
    stats = {"transitions": total, "actions": {}}
    best_total = 0
    for action in sorted(by_action):
        codes = by_action[action]
        full = Counter(codes)
        per_position = Counter(c for code in codes for c in code)
        best_total += full.most_common(1)[0][1]
        stats["actions"][names[action] if action < len(names) else str(action)] = {
            "count": len(codes),
            "share": round(len(codes) / total, 5),
            "distinct_codes": len(full),
            "majority_share": round(full.most_common(1)[0][1] / len(codes), 5),
            "top_codes": [[list(code), count] for code, count in full.most_common(5)],
            "code_histogram": {str(c): n for c, n in sorted(per_position.items())},
        }
    stats["action_only_ceiling"] = round(best_total / total, 5) if total else None
    stats.update(code_usage([c for record in records for c in record["latent_code"]]))
    return stats


def code_usage(codes: list[int]) -> dict:
    """How many codes the latent model really uses, and the perplexity (exp entropy) of their histogram."""
    counts = np.bincount(np.asarray(codes, dtype=np.int64))
    return {"codes_used": int((counts > 0).sum()), "code_perplexity": round(perplexity(counts), 3)}


def short_code(code: list[int]) -> str:
    """7 or [3,3,9,...] for a grid of codes: the table stays one line per action."""
    if len(code) == 1:
        return str(code[0])
    return "[" + ",".join(map(str, code[:4])) + (",...]" if len(code) > 4 else "]")


def print_statistics(stats: dict) -> None:
    print(f"\n{stats['transitions']} transitions; {stats['codes_used']} latent codes used (perplexity "
          f"{stats['code_perplexity']}); a map from the action alone can be right on at most "
          f"{100 * (stats['action_only_ceiling'] or 0):.1f}% of them")
    if stats["codes_used"] <= 1:
        print("warning: every transition got the same latent code (the latent model collapsed): an action->latent "
              "map is then trivially exact and says nothing about control; re-train 03_train_latent_action.py")
    print(f"{'action':<8s} {'count':>8s} {'share':>7s} {'codes':>6s} {'top':>6s}  most common latent codes")
    for name, row in stats["actions"].items():
        top = ", ".join(f"{short_code(code)}:{100 * n / row['count']:.0f}%" for code, n in row["top_codes"][:3])
        print(f"{name:<8s} {row['count']:>8d} {100 * row['share']:>6.1f}% {row['distinct_codes']:>6d} "
              f"{100 * row['majority_share']:>5.1f}%  {top}")


def write_pairs(path: Path, meta: dict, records: list[dict]) -> None:
    """One transition per line: readable, diffable, and about 3x smaller than indented JSON."""
    lines = ",\n".join(json.dumps(record, separators=(",", ":")) for record in records)
    text = '{"meta": ' + json.dumps(meta) + ',\n"pairs": [\n' + lines + "\n]}\n"
    atomic_write_bytes(path, text.encode())


def main() -> None:
    args = parse_args()
    set_threads(args.threads)
    device = pick_device(args.device)
    episodes = require_dataset(args.data_dir)
    model = load_latent_action_model(args.checkpoint_dir, device=device, which=args.which).eval()
    cache = load_frame_cache(args.data_dir)
    cached = {(e.level, e.index): e for e in cache.episodes}
    lookup = class_lookup(model, cache.palette)
    names = action_names(args.data_dir)

    records = []
    palette = [tuple(c) for c in cache.palette]
    red = palette.index(RED) if RED in palette else None
    # per event class: transitions from a frame without a ball in play and how many showed one next; from a
    # frame with a ball at the paddle and how many still had one
    waiting, served, at_paddle, sent_back = (np.zeros(model.event_classes) for _ in range(4))
    serve_places = Counter()   # (row, column) of the ball a game that waited for a serve showed next
    total = sum(e.num_frames - 1 for e in episodes)
    with tqdm(total=total, desc="encoding transitions", unit="tr") as progress:
        for episode in episodes:
            frames = cache.episode_frames(cached[(episode.level, episode.index)])
            codes, events, priors = encode_episode(model, frames, lookup, args.batch_size, device, progress)
            folder = f"{episode.folder.parent.name}/{episode.folder.name}"
            since_ball = np.full(len(frames), SINCE_BALL_CAP)
            if events is not None and red is not None:
                classes = torch.from_numpy(np.array(frames))   # a writable copy of the read-only cache
                ball, near = ball_in_play(classes, red).numpy(), ball_in_play(classes, red, AT_PADDLE).numpy()
                since_ball = steps_since_ball(ball)
                np.add.at(waiting, events[~ball[:-1]], 1)
                np.add.at(served, events[~ball[:-1] & ball[1:]], 1)
                np.add.at(at_paddle, events[near[:-1]], 1)
                np.add.at(sent_back, events[near[:-1] & ball[1:]], 1)
                for t in np.nonzero((since_ball[:-1] >= WAITING_STEPS) & ball[1:])[0]:
                    place = serve_place(classes[t + 1].numpy(), red)
                    if place is not None:
                        serve_places[place] += 1
            for i, (action, code) in enumerate(zip(episode.actions, codes.tolist())):
                record = {"level": episode.level, "episode": episode.index, "folder": folder, "frame": i,
                          "split": episode.split, "action": int(action), "latent_code": code}
                if events is not None:
                    record["event"] = int(events[i])
                    record["event_prior"] = [round(float(v), 2) for v in np.maximum(priors[i], -30.0)]
                    record["since_ball"] = int(since_ball[i])
                records.append(record)

    meta = {
        "latent_checkpoint": str(latent_checkpoint(args.checkpoint_dir, args.which)),
        "latent_fingerprint": file_fingerprint(latent_checkpoint(args.checkpoint_dir, args.which)),
        "context_frames": int(model.context_frames), "num_codes": int(model.num_codes),
        "code_positions": int(model.code_positions), "event_classes": int(model.event_classes),
        "action_meanings": names,
        "padding": "frames before 0 repeat frame 0", "transitions": len(records),
    }
    outcome_stats = {}
    if model.event_classes:
        meta["serve_events"], serve_share = ball_outcomes(served, waiting)
        meta["keep_events"], keep_share = ball_outcomes(sent_back, at_paddle)
        meta["serve_places"] = [[row, column, count] for (row, column), count in serve_places.most_common()]
        outcome_stats = {"serve_share_without_ball": serve_share, "transitions_without_ball": waiting.astype(int).tolist(),
                         "ball_kept_share_at_paddle": keep_share, "transitions_at_paddle": at_paddle.astype(int).tolist()}
    write_pairs(pairs_path(args.data_dir), meta, records)
    stats = code_statistics(records, names)
    atomic_write_json(pair_stats_path(args.data_dir), {"meta": meta, **stats, **outcome_stats})
    print_statistics(stats)
    if model.event_classes:
        print(f"event classes that serve (a ball after none on >= {OUTCOME_SHARE:.0%} of their transitions, or "
              f"{OUTCOME_LIFT:g}x the share over all classes): "
              f"{meta['serve_events'] or 'none'}; that send the ball back at the paddle: {meta['keep_events'] or 'none'}")
        print(f"serves landed at {len(meta['serve_places'])} places, {sum(serve_places.values())} serves in all")
    print(f"\nwrote {pairs_path(args.data_dir)} ({len(records)} pairs) and {pair_stats_path(args.data_dir)}")


if __name__ == "__main__":
    run_main(main)
