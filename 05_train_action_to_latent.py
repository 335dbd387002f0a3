"""Stage 5: learn which latent action a real action produces (the key press -> latent map used to play).

Two variants (--variant): `action`, the seeds' MLP on the one-hot action; and `frames` (default),
which also sees the newest context frames, because in Breakout the latent a key produces depends
on the state (paddle inertia carries the previous action into this transition, LEFT against the
wall does nothing, FIRE only matters without a ball in play), and the paddle knob's position, the
hidden state ALE's paddle controller keeps (common/action_to_latent.py). Cross-entropy over every latent
position, Adam, the best checkpoint by validation per-transition accuracy, then a report on the
held-out test episodes: per-transition and per-position accuracy and a per-action confusion table.
The frames variant also learns its event head (common/action_to_latent.py): cross-entropy of the
world model's prior plus the head's correction against the event class each transition shows, reported
as the event's negative log-likelihood per action with and without the correction.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from common.action_pairs import PAIRS_STAGE, PairInputs, build_inputs, load_pairs, recorded_frame_skip
from common.action_to_latent import KIND, VARIANTS, ActionToLatent, cross_entropy, event_nll, transition_metrics
from common.cli import (add_preset_arg, apply_preset, non_negative_float, non_negative_int, pick_device,
                        positive_float, positive_int, refuse_to_replace, run_main, set_threads)
from common.dataset import require_dataset
from common.errors import UserError
from common.io import atomic_write_json, check_writable, load_checkpoint, save_checkpoint
from common.paths import action_to_latent_checkpoint, action_to_latent_metrics_path, latent_dir
from common.plots import plot_action_confusion

PRESETS = {
    "smoke": {"epochs": 3, "time_budget": 0.5, "batch_size": 64, "hidden": 64},
    "quick": {"epochs": 30, "time_budget": 5.0, "batch_size": 128, "hidden": 128},
    "full": {"epochs": 100, "time_budget": 30.0, "batch_size": 256, "hidden": 256},
}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_preset_arg(parser)
    parser.add_argument("--data-dir", default="data", help="holds actions/action_latent_pairs.json (Stage 4)")
    parser.add_argument("--checkpoint-dir", default="checkpoints", help="checkpoint root; writes latent_action/")
    parser.add_argument("--fresh", action="store_true",
                        help="train although latent_action/ holds a trained map (it is replaced)")
    parser.add_argument("--variant", choices=VARIANTS, default="frames",
                        help="action: the action alone (seeds' MLP); frames: action + newest context frames")
    parser.add_argument("--frames-used", type=positive_int, default=3,
                        help="newest context frames the frames variant sees (capped at the latent model's k)")
    parser.add_argument("--previous-actions", type=non_negative_int, default=4,
                        help="earlier actions the frames variant also sees (0: none); a paddle pushed into a wall hides "
                             "how long it was pushed, and that decides what LEFT or RIGHT does next")
    parser.add_argument("--knob", action=argparse.BooleanOptionalAction, default=True,
                        help="the frames variant also reads the paddle knob's position, the clamped sum of every "
                             "action since the game began (ALE's paddle controller; --no-knob: it does not)")
    parser.add_argument("--epochs", type=positive_int, default=None, help="passes over the training pairs")
    parser.add_argument("--time-budget", type=positive_float, default=None, help="wall-clock limit in minutes")
    parser.add_argument("--batch-size", type=positive_int, default=None)
    parser.add_argument("--hidden", type=positive_int, default=None, help="width of the MLP")
    parser.add_argument("--lr", type=positive_float, default=1e-3, help="Adam learning rate")
    parser.add_argument("--weight-decay", type=non_negative_float, default=0.0)
    parser.add_argument("--device", default=None, help="cpu, cuda, mps (default: the best available)")
    parser.add_argument("--threads", type=positive_int, default=1,
                        help="CPU threads; the model is tiny, and 1 thread is the fastest (part4.md)")
    parser.add_argument("--seed", type=int, default=0)
    return apply_preset(parser.parse_args(), PRESETS)


@torch.no_grad()
def predict(model: ActionToLatent, inputs: PairInputs, rows: np.ndarray, device: torch.device,
            batch_size: int = 1024) -> torch.Tensor:
    """Logits (len(rows), code_positions, num_codes) for the given pair rows, in batches."""
    model.eval()
    out = [inputs.logits(model, torch.from_numpy(rows[start:start + batch_size]), device).cpu()
           for start in range(0, len(rows), batch_size)]
    model.train()
    return torch.cat(out) if out else torch.empty(0, model.code_positions, model.num_codes)


def evaluate(model, pairs, inputs: PairInputs, rows, device, names) -> dict:
    logits = predict(model, inputs, rows, device)
    target = pairs["codes"][torch.from_numpy(rows)]
    metrics = transition_metrics(logits.argmax(-1), target, pairs["actions"][torch.from_numpy(rows)], names)
    metrics["loss"] = float(cross_entropy(logits, target)) if len(rows) else float("nan")
    return metrics


def event_logits(model: ActionToLatent, pairs: dict, inputs: PairInputs, rows: torch.Tensor,
                 device: torch.device) -> torch.Tensor:
    """The world model's prior plus the map's correction for the rows: the logits play draws events from."""
    return pairs["event_prior"][rows].to(device) + inputs.event_correction(model, rows, device)


def event_loss(model: ActionToLatent, pairs: dict, inputs: PairInputs, rows: torch.Tensor,
               device: torch.device) -> torch.Tensor:
    """event_nll of (prior + correction) on the rows, one value per row."""
    return event_nll(event_logits(model, pairs, inputs, rows, device), pairs["events"][rows].to(device),
                     pairs["served"][rows].to(device), model.config.get("serve_events", []))


@torch.no_grad()
def event_metrics(model: ActionToLatent, pairs: dict, inputs: PairInputs, rows: np.ndarray, device: torch.device,
                  names: list[str]) -> dict:
    """The events' negative log-likelihood (nats, event_nll) under the world model's prior alone and with the
    map's correction, overall and per action; and per action where no ball was in play, the share of steps
    that served beside the serve classes' mean probability under each: there the key decides."""
    model.eval()
    rows_t = torch.from_numpy(rows)
    corrected_logits = torch.cat([event_logits(model, pairs, inputs, rows_t[i:i + 1024], device).cpu()
                                  for i in range(0, len(rows_t), 1024)])
    model.train()
    prior_logits, events, served = pairs["event_prior"][rows_t], pairs["events"][rows_t], pairs["served"][rows_t]
    serve_events = model.config.get("serve_events", [])
    prior, corrected = (event_nll(logits, events, served, serve_events) for logits in (prior_logits, corrected_logits))
    actions = pairs["actions"][rows_t]
    result = {"prior_nll": float(prior.mean()), "corrected_nll": float(corrected.mean()), "per_action": {}}
    for action, name in enumerate(names):
        mask = actions == action
        if not mask.any():
            continue
        row = {"count": int(mask.sum()), "prior_nll": round(float(prior[mask].mean()), 4),
               "corrected_nll": round(float(corrected[mask].mean()), 4)}
        waiting = mask & (served >= 0)
        if waiting.any() and serve_events:
            row["without_ball"] = {
                "count": int(waiting.sum()), "served": round(float((served[waiting] == 1).float().mean()), 4),
                **{f"{side}_serve_probability": round(float(logits[waiting].softmax(-1)[:, serve_events].sum(-1).mean()), 4)
                   for side, logits in (("prior", prior_logits), ("corrected", corrected_logits))}}
        result["per_action"][name] = row
    return result


def majority_baseline(pairs: dict, train_rows: np.ndarray, rows: np.ndarray) -> float:
    """Accuracy of the best action-only lookup table (fitted on train): the ceiling without frames."""
    table = {}
    for action in pairs["actions"][train_rows].unique().tolist():
        codes = pairs["codes"][train_rows][pairs["actions"][train_rows] == action]
        uniq, counts = torch.unique(codes, dim=0, return_counts=True)
        table[action] = uniq[counts.argmax()]
    if not len(rows):
        return float("nan")
    right = [bool(torch.equal(table[a], c)) if a in table else False
             for a, c in zip(pairs["actions"][rows].tolist(), pairs["codes"][rows])]
    return float(np.mean(right))


def train(model: ActionToLatent, config: dict, pairs: dict, inputs: PairInputs, split_rows: dict, select_split: str,
          names: list[str], args: argparse.Namespace, device: torch.device, out_path: Path) -> tuple[dict, int]:
    """Adam on cross-entropy for --epochs or --time-budget; after each epoch the best model on the
    selection split (per-transition accuracy, ties by loss) is saved. Ctrl-C keeps the best so far."""
    rng = np.random.default_rng(args.seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    deadline = time.monotonic() + 60 * args.time_budget
    best = {"accuracy": -1.0, "loss": float("inf"), "epoch": 0}
    train_rows = split_rows["train"]
    batches_per_epoch = max(1, len(train_rows) // args.batch_size)
    steps = 0
    try:
        for epoch in range(1, args.epochs + 1):
            order = rng.permutation(train_rows)
            bar = tqdm(range(batches_per_epoch), desc=f"epoch {epoch}/{args.epochs}", unit="batch", leave=False)
            for b in bar:
                batch = torch.from_numpy(order[b * args.batch_size:(b + 1) * args.batch_size])
                logits = inputs.logits(model, batch, device)
                loss = cross_entropy(logits, pairs["codes"][batch].to(device))
                if model.event_classes:
                    loss = loss + event_loss(model, pairs, inputs, batch, device).mean()
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                steps += 1
                bar.set_postfix(loss=f"{loss.item():.4f}")
                if time.monotonic() > deadline:
                    break
            selection = evaluate(model, pairs, inputs, split_rows[select_split], device, names)
            improved = (selection["transition_accuracy"], -selection["loss"]) > (best["accuracy"], -best["loss"])
            if improved:
                best = {"accuracy": selection["transition_accuracy"], "loss": selection["loss"], "epoch": epoch}
                save_checkpoint(out_path, KIND, config=config, model=model.state_dict(), epoch=epoch, steps=steps,
                                metrics={f"{select_split}_transition_accuracy": selection["transition_accuracy"]})
            print(f"epoch {epoch}: train loss {loss.item():.4f}, {select_split} loss {selection['loss']:.4f}, "
                  f"{select_split} transition accuracy {100 * selection['transition_accuracy']:.2f}%"
                  + (" (best)" if improved else ""))
            if time.monotonic() > deadline:
                print(f"time budget of {args.time_budget} min reached")
                break
    except KeyboardInterrupt:
        print("\ninterrupted: reporting on the best checkpoint so far")
        if best["epoch"] == 0:
            raise
    return best, steps


def step_latency_ms(model: ActionToLatent, repeats: int = 200) -> dict:
    """Milliseconds one play step spends in the map (batch 1, CPU, frames included): p50 and p95."""
    model = model.cpu().eval()
    past = torch.zeros(1, model.context_frames, 210, 160, 3, dtype=torch.uint8) if model.uses_frames else None
    previous = torch.zeros(1, model.previous_actions, dtype=torch.int64) if model.previous_actions else None
    knob = torch.full((1,), 0.5) if model.uses_knob else None
    action, times = torch.tensor([2]), []
    for _ in range(repeats + 10):
        start = time.perf_counter()
        model.sample(action, past, previous=previous, knob=knob)
        times.append(1000 * (time.perf_counter() - start))
    times = np.array(times[10:])
    return {"p50": round(float(np.percentile(times, 50)), 3), "p95": round(float(np.percentile(times, 95)), 3)}


def main() -> None:
    args = parse_args()
    set_threads(args.threads)
    torch.manual_seed(args.seed)
    device = pick_device(args.device)

    refuse_to_replace(action_to_latent_checkpoint(args.checkpoint_dir), resume=False, fresh=args.fresh, can_resume=False)
    check_writable(action_to_latent_checkpoint(args.checkpoint_dir).parent)
    pairs = load_pairs(args.data_dir, args.checkpoint_dir)
    meta = pairs["meta"]
    names = list(meta["action_meanings"])
    config = {"num_actions": len(names), "num_codes": meta["num_codes"], "code_positions": meta["code_positions"],
              "context_frames": meta["context_frames"], "variant": args.variant,
              "frames_used": min(args.frames_used, meta["context_frames"]), "hidden": args.hidden,
              "previous_actions": args.previous_actions if args.variant == "frames" else 0,
              "knob_frame_skip": recorded_frame_skip(args.data_dir) if args.variant == "frames" and args.knob else 0,
              "action_meanings": names, "latent_fingerprint": meta["latent_fingerprint"],
              "event_classes": int(meta.get("event_classes", 0)) if args.variant == "frames" else 0,
              "serve_events": list(meta.get("serve_events", [])), "keep_events": list(meta.get("keep_events", [])),
              "serve_places": [list(place) for place in meta.get("serve_places", [])]}
    model = ActionToLatent(config).to(device)
    episodes = {(e.level, e.index): e for e in require_dataset(args.data_dir)}
    inputs = build_inputs(args.data_dir, model, pairs, episodes)

    split_rows = {s: np.flatnonzero(pairs["split"] == s) for s in ("train", "val", "test")}
    if not len(split_rows["train"]):
        raise UserError(f"no training pairs (no episode in the train split): record more episodes with "
                        f"02_record_videos.py, then re-run {PAIRS_STAGE}")
    select_split = "val" if len(split_rows["val"]) else "train"
    report_split = "test" if len(split_rows["test"]) else select_split
    print("pairs: " + ", ".join(f"{s} {len(r)}" for s, r in split_rows.items())
          + f"; model selection on {select_split}, report on {report_split}; variant {args.variant}, "
            f"{sum(p.numel() for p in model.parameters())} parameters")

    out_path = action_to_latent_checkpoint(args.checkpoint_dir)
    best, steps = train(model, config, pairs, inputs, split_rows, select_split, names, args, device, out_path)

    payload = load_checkpoint(out_path, KIND)
    model.load_state_dict(payload["model"])
    report = evaluate(model, pairs, inputs, split_rows[report_split], device, names)
    metrics = {
        "variant": args.variant,
        "report_split": report_split,
        f"{report_split}_transition_accuracy": report["transition_accuracy"],
        f"{report_split}_position_accuracy": report["position_accuracy"],
        f"{select_split}_best_transition_accuracy": best["accuracy"],
        "action_only_table_accuracy": majority_baseline(pairs, split_rows["train"], split_rows[report_split]),
        "best_epoch": best["epoch"],
        "train_steps": steps,
        "num_codes": config["num_codes"], "code_positions": config["code_positions"],
        "context_frames": config["context_frames"], "frames_used": model.frames_used,
        "previous_actions": model.previous_actions,
        "knob": model.uses_knob,
        "pairs": {s: int(len(r)) for s, r in split_rows.items()},
        "latent_codes_used": int(len(pairs["codes"].unique())),
        "step_latency_ms": step_latency_ms(model),
        "report": report,
    }
    if model.event_classes:
        metrics["events"] = event_metrics(model, pairs, inputs, split_rows[report_split], device, names)
    fields = {key: value for key, value in payload.items() if key not in ("kind", "format")}
    save_checkpoint(out_path, KIND, **{**fields, "metrics": metrics})
    atomic_write_json(action_to_latent_metrics_path(args.checkpoint_dir), metrics)
    plot_action_confusion(metrics, latent_dir(args.checkpoint_dir) / "action_to_latent_confusion.png")
    print_report(metrics, names)
    print(f"wrote {out_path} and {action_to_latent_metrics_path(args.checkpoint_dir)}")


def print_report(metrics: dict, names: list[str]) -> None:
    split, report = metrics["report_split"], metrics["report"]
    print(f"\n{split} episodes, {report['transitions']} transitions, variant {metrics['variant']}:")
    print(f"  per-transition accuracy {100 * report['transition_accuracy']:.2f}%, "
          f"per-position accuracy {100 * report['position_accuracy']:.2f}% "
          f"(best action-only lookup table: {100 * metrics['action_only_table_accuracy']:.2f}%)")
    if metrics["latent_codes_used"] <= 1:
        print("  warning: the pairs use a single latent code (collapsed latent model): this accuracy is trivial "
              "and says nothing about control; re-train 03_train_latent_action.py")
    print(f"  one play step in the map: p50 {metrics['step_latency_ms']['p50']} ms, "
          f"p95 {metrics['step_latency_ms']['p95']} ms (CPU, {torch.get_num_threads()} thread(s))")
    if "events" in metrics:
        events = metrics["events"]
        print(f"  random events, negative log-likelihood (nats) under the world model's prior alone -> with the "
              f"map's correction: {events['prior_nll']:.3f} -> {events['corrected_nll']:.3f}; "
              + ", ".join(f"{name} {row['prior_nll']:.3f} -> {row['corrected_nll']:.3f}"
                          for name, row in events["per_action"].items()))
        waiting = {name: row["without_ball"] for name, row in events["per_action"].items() if "without_ball" in row}
        if waiting:
            print("  without a ball in play, served / serve probability under the prior -> with the correction: "
                  + ", ".join(f"{name} {w['served']:.2f} / {w['prior_serve_probability']:.2f} -> "
                              f"{w['corrected_serve_probability']:.2f}" for name, w in waiting.items()))
    for name, row in report["per_action"].items():
        worst = sorted(((n, t, p) for t, preds in row["confusion_true_to_predicted"].items()
                        for p, n in preds.items() if p != t), reverse=True)[:3]
        errors = ", ".join(f"{t}->{p} x{n}" for n, t, p in worst) or "none"
        print(f"  {name:<6s} n={row['count']:<6d} transition acc {100 * row['transition_accuracy']:6.2f}%  "
              f"errors (true->predicted code): {errors}")


if __name__ == "__main__":
    run_main(main)
