"""Stage 3: learn latent actions and a next-frame world model from the recorded videos alone.

Reads data/ (Stage 02), writes checkpoints/latent_action/{best,latest}.pt, metrics.json, PNG sheets
and a rollout GIF. The recorded real actions are never a training input: they only feed the
per-action code histogram that shows, while training runs, whether the codes discovered the controls.

    python 03_train_latent_action.py --preset quick           # ~25 min on a 2-core CPU
    python 03_train_latent_action.py --seeds-config           # the seeds' 5x7 grid of 256 codes
"""
from __future__ import annotations

import argparse
import csv
import json
import math
import time
from collections import deque
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from common.cli import (add_preset_arg, apply_preset, non_negative_float, non_negative_int, pick_device,
                        positive_float, positive_int, probability, refuse_to_replace, run_main, set_threads)
from common.errors import UserError
from common.frame_cache import FrameCache, load_frame_cache
from common.io import atomic_write_json, check_writable, load_checkpoint, save_checkpoint
from common.latent_action import (CHECKPOINT_KIND, DEFAULT_CONFIG, LatentActionModel, fold_cells,
                                   past_frame_rows)
from common.latent_action_eval import action_code_table, evaluate_world_model
from common.metrics import perplexity
from common.paths import latent_checkpoint, latent_dir, latent_metrics_path

PRESETS = {
    "smoke": {"time_budget": 0.15, "max_steps": 20, "batch_size": 4, "eval_every": 4.0, "val_batches": 1,
              "eval_episodes": 1, "rollout_steps": 6, "widths": "8,8,8", "encoder_width": 8,
              "collapse_check_after": 10**9, "vq_warmup": 5, "threads": 1},
    "quick": {"time_budget": 25.0, "max_steps": 10**9, "batch_size": 32, "eval_every": 120.0, "val_batches": 8,
              "eval_episodes": 4, "rollout_steps": 50, "widths": None, "encoder_width": None,
              "collapse_check_after": 1500, "vq_warmup": 150, "threads": None},
    "full": {"time_budget": 240.0, "max_steps": 10**9, "batch_size": 64, "eval_every": 300.0, "val_batches": 32,
             "eval_episodes": 32, "rollout_steps": 50, "widths": "128,192,256", "encoder_width": 96,
             "collapse_check_after": 3000, "vq_warmup": 1000, "threads": None},
}
SEEDS_CONFIG = {"context_frames": 1, "code_grid": [7, 5], "num_codes": 256, "code_dim": 128, "skips": False,
                "copy_bias": False, "event_classes": 0}


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-dir", default="data", help="Stage 02 output (raw_gameplay/, actions/)")
    p.add_argument("--checkpoint-dir", default="checkpoints", help="checkpoint root; writes latent_action/ under it")
    p.add_argument("--log-dir", default="runs", help="CSV + TensorBoard logs go to <log-dir>/latent_action")
    add_preset_arg(p)
    p.add_argument("--time-budget", type=positive_float, default=None, help="training minutes (wall clock)")
    p.add_argument("--max-steps", type=positive_int, default=None, help="stop after this many updates")
    p.add_argument("--batch-size", type=positive_int, default=None)
    p.add_argument("--lr", type=positive_float, default=2e-3, help="Adam learning rate (cosine decay to 5%%)")
    p.add_argument("--context-frames", type=positive_int, default=None, help="k past frames (default 3)")
    p.add_argument("--num-codes", type=positive_int, default=None, help="codebook size (default 8)")
    p.add_argument("--code-dim", type=positive_int, default=None, help="codebook vector size (default 16)")
    p.add_argument("--code-grid", default=None, help="ROWSxCOLS grid of codes instead of one (seeds: 7x5)")
    p.add_argument("--patch", type=int, choices=(4, 8), default=None,
                   help="pixels per side of the decoder's finest cell (default %d)" % DEFAULT_CONFIG["patch"])
    p.add_argument("--widths", default=None, help="decoder channels per level, comma-separated")
    p.add_argument("--encoder-width", type=positive_int, default=None)
    p.add_argument("--no-skips", action="store_true", help="decoder sees the past only through its bottleneck")
    p.add_argument("--event-classes", type=non_negative_int, default=None,
                   help="classes of the random event latent, drawn each step (default %d; 0: a deterministic "
                        "decoder that averages random events away)" % DEFAULT_CONFIG["event_classes"])
    p.add_argument("--event-kl-weight", type=non_negative_float, default=1.0,
                   help="price of one nat of event information, in units of one pixel's cross-entropy: keeps the "
                        "event posterior to what the prior cannot foresee")
    p.add_argument("--event-free-nats", type=non_negative_float, default=0.1,
                   help="event information per transition that costs nothing (free bits)")
    p.add_argument("--seeds-config", action="store_true",
                   help="the seeds' model: 1 past frame, 7x5 grid of 256 codes of dim 128, no skips")
    p.add_argument("--motion-weight", type=non_negative_float, default=20.0,
                   help="extra loss weight on pixel cells near motion in the past frames (ball, paddle)")
    p.add_argument("--appear-weight", type=non_negative_float, default=0.0,
                   help="extra loss weight on cells that change far from any past motion (a served ball); 20 serves "
                        "more surely but draws the ball and the digits worse (part2.md)")
    p.add_argument("--keep-static", type=probability, default=0.1,
                   help="share of motionless pixel cells scored per update (reweighted; saves CPU)")
    p.add_argument("--ema-decay", type=probability, default=None, help="codebook EMA decay (default 0.9)")
    p.add_argument("--dead-code-threshold", type=probability, default=0.01,
                   help="restart codes whose recent usage share is below this")
    p.add_argument("--vq-warmup", type=int, default=None,
                   help="updates that pass the encoder's continuous vector to the decoder before the codebook "
                        "is placed by k-means and quantization starts (0: quantize from the start)")
    p.add_argument("--restart-every", type=positive_int, default=50, help="updates between dead-code checks")
    p.add_argument("--collapse-check-after", type=positive_int, default=None,
                   help="updates after which a collapsed codebook (perplexity < 1.3) stops training")
    p.add_argument("--eval-every", type=positive_float, default=None, help="seconds between validation passes")
    p.add_argument("--val-batches", type=positive_int, default=None)
    p.add_argument("--eval-episodes", type=positive_int, default=None, help="test episodes per skill level for the final evaluation")
    p.add_argument("--rollout-steps", type=positive_int, default=None, help="longest rollout in the evaluation")
    p.add_argument("--resume", action="store_true", help="continue from latent_action/latest.pt")
    p.add_argument("--fresh", action="store_true",
                   help="start over although latent_action/ holds a trained model (it is replaced)")
    p.add_argument("--eval-only", action="store_true",
                   help="skip training: evaluate latent_action/best.pt on the test episodes and rewrite metrics.json")
    p.add_argument("--rebuild-cache", action="store_true", help="decode the PNGs again even if the cache is fresh")
    p.add_argument("--device", default=None, help="cpu, cuda, mps (default: best available)")
    p.add_argument("--threads", type=positive_int, default=None,
                   help="CPU threads (default: all cores; the smoke preset uses 1)")
    p.add_argument("--seed", type=int, default=0)
    args = apply_preset(p.parse_args(), PRESETS)
    return args


def model_config(args: argparse.Namespace, palette: list) -> dict:
    config = dict(DEFAULT_CONFIG, palette=[list(c) for c in palette])
    if args.seeds_config:
        config.update(SEEDS_CONFIG)
    for flag, key in (("context_frames", "context_frames"), ("num_codes", "num_codes"), ("code_dim", "code_dim"),
                      ("encoder_width", "encoder_width"), ("ema_decay", "ema_decay"), ("patch", "patch"),
                      ("event_classes", "event_classes")):
        if getattr(args, flag) is not None:
            config[key] = getattr(args, flag)
    if args.widths:
        try:
            config["widths"] = [int(w) for w in args.widths.split(",")]
        except ValueError:
            raise UserError(f"--widths must be comma-separated integers, got {args.widths!r}") from None
    if args.code_grid:
        try:
            config["code_grid"] = [int(v) for v in args.code_grid.lower().split("x")]
        except ValueError:
            raise UserError(f"--code-grid must look like 7x5, got {args.code_grid!r}") from None
    if args.no_skips:
        config["skips"] = False
    if args.code_grid and args.event_classes is None:
        config["event_classes"] = 0   # the event latent conditions the single code only
    return config


class TransitionSampler:
    """Random (k past frames, next frame) pairs from one split; never crosses an episode boundary.

    Early transitions repeat frame 0 as their missing past, as the downstream stages do.
    """

    def __init__(self, cache: FrameCache, split: str, k: int, seed: int):
        episodes = cache.split(split)
        if not episodes:
            raise UserError(f"the data set has no '{split}' episodes: record more episodes with 02_record_videos.py")
        self.frames, self.k = cache.frames, k
        self.start = np.concatenate([np.full(e.num_frames - 1, e.start) for e in episodes])
        self.t = np.concatenate([np.arange(e.num_frames - 1) for e in episodes])
        self.action = np.concatenate([np.asarray(e.actions, dtype=np.int64) for e in episodes])
        self.rng = np.random.default_rng(seed)

    def __len__(self) -> int:
        return len(self.t)

    def batch(self, rows: np.ndarray, extra: int = 0) -> tuple[torch.Tensor, torch.Tensor, np.ndarray]:
        """(k + extra past frames, next frame, real action) of transitions `rows`."""
        past_rows = self.start[rows, None] + past_frame_rows(self.t[rows], self.k + extra)
        next_rows = self.start[rows] + self.t[rows] + 1
        past = torch.from_numpy(self.frames[past_rows.ravel()].reshape(len(rows), self.k + extra, 210, 160))
        nxt = torch.from_numpy(self.frames[next_rows])
        return past, nxt, self.action[rows]

    def sample(self, batch_size: int, extra: int = 0):
        return self.batch(self.rng.integers(len(self), size=batch_size), extra)


def motion_cells(model: LatentActionModel, past_cells: torch.Tensor, reach_px: int = 8) -> torch.Tensor:
    """(B, h, w) bool: cells within `reach_px` of a pixel that changed between the past frames,
    from the past frames' cells (B, h, w, k, patch*patch) of fold_cells.

    The ball and the paddle are found there, and that is where the next frame is hard to predict.
    The mask depends on the inputs only, never on the target frame.
    """
    moved = (past_cells[..., :-1, :] != past_cells[..., -1:, :]).flatten(-2).any(-1)
    reach = -(-reach_px // model.patch)
    return F.max_pool2d(moved[:, None].float(), 2 * reach + 1, stride=1, padding=reach)[:, 0] > 0


def event_terms(model: LatentActionModel, past: torch.Tensor, quantized: torch.Tensor):
    """The random event latent in training: (decoder conditioning, rate KL(q || sg p), prior KL(sg q || p),
    posterior classes drawn).

    The class is drawn from the posterior q (it saw the next frame) and enters the decoder as a
    straight-through one-hot. The prior p sees the past frames and the action code (detached: the prior's
    loss must not reshape the action code) and learns to predict q; the rate pulls q toward what p can
    foresee, so the event carries only what the past and the player's choice leave open.
    """
    q = model.event_probs(model.event_posterior_logits(model.last_cells))
    p = model.event_probs(model.event_prior_logits(past, quantized.detach()))
    drawn = torch.multinomial(q.detach(), 1)[:, 0] if model.training else q.argmax(-1)  # validation: repeatable
    onehot = F.one_hot(drawn, model.event_classes).to(q.dtype)
    conditioning = torch.cat([quantized, model.event_vectors(onehot + q - q.detach()).to(quantized.dtype)], 1)
    rate = (q * (q.log() - p.detach().log())).sum(-1)
    prior_kl = (q.detach() * (q.detach().log() - p.log())).sum(-1)
    return conditioning, rate, prior_kl, drawn


def loss_terms(model: LatentActionModel, past: torch.Tensor, nxt: torch.Tensor, motion_weight: float,
               keep_static: float = 1.0, event_kl_weight: float = 1.0, free_nats: float = 0.1,
               appear_weight: float = 0.0):
    """Per-pixel colour cross-entropy, + the VQ loss, + the event latent's losses.

    Cells near motion in the past frames (motion_cells) weigh 1 + motion_weight: that is where the
    ball and the paddle are. The weight depends on the inputs only: weighting the pixels whose target
    differs from the last frame instead rewards predicting a change wherever one is possible, which
    draws a ball smeared over every place it might be.
    Cells with no motion nearby and none in the target are easy with the copy bias; only a random
    `keep_static` share of them is scored (weighted 1 / keep_static, so the loss stays unbiased),
    which saves most of the head and loss work on CPU.
    The event rate is priced per nat as one weight-1 pixel's cross-entropy (the reconstruction is a mean
    over weighted pixels, so the rate is divided by the weighted pixels per frame): a served ball (8
    pixels, ~1.1 nats of place) is worth its rate, a detail the prior can foresee is not.
    Returns (recon, vq + event loss, codes, (logits, target, last, weight), event stats).
    """
    quantized, codes, vq_loss = model.encode_indices(past, nxt)
    conditioning, stats = quantized, {}
    if model.event_classes:
        conditioning, rate, prior_kl, drawn = event_terms(model, past, quantized)
    past_cells = fold_cells(model.pad(past), model.patch)            # (B, h, w, k, patch*patch) uint8
    features = model.decode_cell_features(past_cells, conditioning)
    target = model.fold_pixels(model.pad(nxt[:, None])[:, 0])        # uint8; the padding is class P
    last = past_cells[..., -1, :]
    near = motion_cells(model, past_cells)
    changed = (target != last).any(-1)
    certain = near | changed
    keep = certain | (torch.rand(certain.shape, device=certain.device) < keep_static)
    extra = motion_weight * near.float() + appear_weight * (changed & ~near).float()
    cell_weight = (torch.where(certain, 1.0, 1.0 / keep_static) * (1.0 + extra))[keep]
    target, last = target[keep], last[keep]   # only the scored cells become int64 (saves copies on CPU)
    logits = model.cell_logits(features[keep], last)
    target, last = model.target_classes(target), model.target_classes(last)
    weight = (target >= 0).float() * cell_weight[:, None]
    ce = F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), target.reshape(-1), reduction="none",
                         ignore_index=-100)
    recon = (ce * weight.reshape(-1)).sum() / weight.sum()
    latent_loss = vq_loss
    if model.event_classes:
        pixels_per_frame = weight.sum().detach() / len(past)
        latent_loss = (vq_loss + event_kl_weight * rate.clamp(min=free_nats).mean() / pixels_per_frame
                       + prior_kl.mean())
        stats = {"event_rate": rate.mean().item(), "prior_kl": prior_kl.mean().item(), "drawn": drawn}
    return recon, latent_loss, codes, (logits, target, last, weight), stats


@torch.no_grad()
def validate(model: LatentActionModel, sampler: TransitionSampler, batches: list[np.ndarray], device,
             args: argparse.Namespace) -> dict:
    model.eval()
    totals, counts = {"recon": 0.0, "changed_acc": 0.0, "event_rate": 0.0, "prior_kl": 0.0}, 0
    codes_all, actions_all = [], []
    for rows in batches:
        past, nxt, actions = sampler.batch(rows)
        past, nxt = past.to(device), nxt.to(device)
        recon, _, codes, (logits, target, last, _), stats = loss_terms(model, past, nxt, args.motion_weight, 1.0,
                                                                        args.event_kl_weight, args.event_free_nats,
                                                                        args.appear_weight)
        changed = target != last
        correct = (logits.argmax(-1) == target) & changed
        totals["recon"] += recon.item()
        totals["changed_acc"] += (correct.sum() / changed.sum().clamp(min=1)).item()
        totals["event_rate"] += stats.get("event_rate", 0.0)
        totals["prior_kl"] += stats.get("prior_kl", 0.0)
        counts += 1
        codes_all.append(codes[:, 0].cpu().numpy())
        actions_all.append(actions)
    model.train()
    result = {key: value / counts for key, value in totals.items()}
    table = action_code_table(np.concatenate(actions_all), np.concatenate(codes_all), model.num_codes)
    result["code_purity"], result["code_separation"] = table["purity"], table["separation"]
    return result


def save(path: Path, model, optimizer, args, step: int, elapsed: float, best_val: float, fingerprint: str,
         rng: np.random.Generator) -> None:
    save_checkpoint(path, CHECKPOINT_KIND, model=model.state_dict(), config=model.config,
                    optimizer=optimizer.state_dict(), step=step, elapsed=elapsed, best_val=best_val,
                    data_fingerprint=fingerprint, args={k: v for k, v in vars(args).items()},
                    torch_rng=torch.get_rng_state(), numpy_rng=rng.bit_generator.state)


def main() -> None:
    args = parse_args()
    threads = set_threads(args.threads)
    device = pick_device(args.device)
    torch.manual_seed(args.seed)
    out_dir = latent_dir(args.checkpoint_dir)
    latest_path = latent_checkpoint(args.checkpoint_dir, "latest")
    best_path = latent_checkpoint(args.checkpoint_dir, "best")
    log_dir = Path(args.log_dir) / "latent_action"
    cache = load_frame_cache(args.data_dir, rebuild=args.rebuild_cache)
    if args.eval_only:
        previous = latent_metrics_path(args.checkpoint_dir)
        training = json.loads(previous.read_text()).get("training", {}) if previous.exists() else {}
        evaluate(args, cache, device, training)
        return

    refuse_to_replace(latest_path, args.resume, args.fresh)
    for folder in (out_dir, log_dir):
        check_writable(folder)
    config = model_config(args, cache.palette)
    try:
        model = LatentActionModel(config).to(device)
    except ValueError as err:
        raise UserError(str(err)) from None
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)
    step, elapsed_before, best_val = 0, 0.0, math.inf
    train = TransitionSampler(cache, "train", model.context_frames, args.seed)
    if args.resume:
        state = load_checkpoint(latest_path, CHECKPOINT_KIND, "03_train_latent_action.py (without --resume)")
        if state["config"] != config:
            raise UserError("--resume: latest.pt was trained with another model configuration; "
                            "use the same flags or start over without --resume")
        if state.get("data_fingerprint") != cache.fingerprint:
            raise UserError(f"--resume: {latest_path} was trained on another data set than {args.data_dir} "
                            f"(recorded again since?): resume on the same data, or start over with --fresh")
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        step, elapsed_before, best_val = state["step"], state["elapsed"], state["best_val"]
        torch.set_rng_state(state["torch_rng"])
        train.rng.bit_generator.state = state["numpy_rng"]
        if elapsed_before >= args.time_budget * 60 or step >= args.max_steps:
            raise UserError(f"--resume: latest.pt has spent its budget ({step} updates, {elapsed_before / 60:.1f} "
                            f"min): raise --time-budget or --max-steps to train on")
        print(f"resumed from step {step} ({elapsed_before / 60:.1f} min trained)")
    start_step = step
    val = TransitionSampler(cache, "val", model.context_frames, args.seed + 1)
    val_rng = np.random.default_rng(1234)
    val_batches = [val_rng.integers(len(val), size=args.batch_size) for _ in range(args.val_batches)]

    n_params = sum(p.numel() for p in model.parameters())
    print(f"latent action model: {n_params / 1e6:.2f}M parameters, k={model.context_frames}, "
          f"{model.num_codes} codes x {model.code_positions} position(s); {len(train)} train / {len(val)} val "
          f"transitions; device {device}, {threads} threads")
    log_dir.mkdir(parents=True, exist_ok=True)
    csv_path = log_dir / "train_log.csv"
    csv_file = open(csv_path, "a" if args.resume else "w", newline="")
    writer = csv.writer(csv_file)
    if not args.resume:
        writer.writerow(["step", "minutes", "samples_per_s", "lr", "recon", "vq", "perplexity", "codes_used", "restarts",
                         "train_code_purity", "train_code_separation", "event_rate", "prior_kl", "event_perplexity",
                         "val_recon", "val_changed_acc", "val_code_purity", "val_code_separation", "val_event_rate",
                         "val_prior_kl"])
    from torch.utils.tensorboard import SummaryWriter
    tb = SummaryWriter(str(log_dir / "tb"))

    budget_s = args.time_budget * 60
    use_amp = device.type == "cuda"
    window_codes, window_actions, window_events = [], [], []
    recent_z: deque[torch.Tensor] = deque(maxlen=max(10, 1024 // args.batch_size))
    model.vq.bypass = step < args.vq_warmup
    restarts_total = 0
    start = time.time()
    last_eval, last_log, samples_since = start, start, 0
    recent = {"recon": 0.0, "vq": 0.0, "event_rate": 0.0, "prior_kl": 0.0, "n": 0}
    bar = tqdm(total=args.max_steps if args.max_steps < 10**8 else None, initial=step, desc="03 latent", unit="step")
    stop_reason = "budget"
    try:
        while True:
            elapsed = elapsed_before + time.time() - start
            progress = max(elapsed / budget_s, step / args.max_steps)
            if progress >= 1:
                break
            lr = args.lr * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * progress)))
            for group in optimizer.param_groups:
                group["lr"] = lr
            past, nxt, actions = train.sample(args.batch_size)
            past, nxt = past.to(device), nxt.to(device)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_amp):
                recon, vq_loss, codes, _, stats = loss_terms(model, past, nxt, args.motion_weight, args.keep_static,
                                                              args.event_kl_weight, args.event_free_nats,
                                                              args.appear_weight)
            loss = recon + vq_loss
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            step += 1
            samples_since += args.batch_size
            recent["recon"] += recon.item()
            recent["vq"] += vq_loss.item()
            recent["event_rate"] += stats.get("event_rate", 0.0)
            recent["prior_kl"] += stats.get("prior_kl", 0.0)
            recent["n"] += 1
            window_codes.append(codes[:, 0].cpu().numpy())
            if stats:
                window_events.append(stats["drawn"].cpu().numpy())
            window_actions.append(actions)
            recent_z.append(model.last_z)
            if model.vq.bypass and step >= args.vq_warmup:
                warm_z = torch.cat(list(recent_z))
                model.vq.start_quantizing(warm_z)
                tqdm.write(f"step {step}: warm-up over, codebook placed by k-means on {len(warm_z)} "
                           f"encoder outputs; quantizing from now on")
            elif step % args.restart_every == 0:
                restarted = model.vq.restart_dead_codes(torch.cat(list(recent_z)), args.dead_code_threshold)
                restarts_total += restarted
            bar.update(1)
            now = time.time()
            if now - last_log >= 20 or now - last_eval >= args.eval_every or progress >= 1:
                codes_np, actions_np = np.concatenate(window_codes), np.concatenate(window_actions)
                table = action_code_table(actions_np, codes_np, model.num_codes)
                usage = np.bincount(codes_np, minlength=model.num_codes) / len(codes_np)
                ppl = perplexity(usage)
                speed = samples_since / (now - last_log)
                row = {"step": step, "minutes": (elapsed_before + now - start) / 60, "samples_per_s": speed, "lr": lr,
                       "recon": recent["recon"] / recent["n"], "vq": recent["vq"] / recent["n"],
                       "perplexity": ppl, "codes_used": int((usage > 0).sum()), "restarts": restarts_total,
                       "train_code_purity": table["purity"], "train_code_separation": table["separation"],
                       "event_rate": recent["event_rate"] / recent["n"], "prior_kl": recent["prior_kl"] / recent["n"],
                       "event_perplexity": perplexity(np.bincount(np.concatenate(window_events), minlength=model.event_classes)
                                                      / len(np.concatenate(window_events))) if window_events else 0.0}
                val_row = {}
                if now - last_eval >= args.eval_every:
                    val_row = validate(model, val, val_batches, device, args)
                    last_eval = time.time()
                    if val_row["recon"] < best_val and not model.vq.bypass:
                        best_val = val_row["recon"]
                        save(best_path, model, optimizer, args, step, elapsed, best_val,
                             cache.fingerprint, train.rng)
                    save(latest_path, model, optimizer, args, step, elapsed, best_val,
                         cache.fingerprint, train.rng)
                writer.writerow([row[k] for k in row] + [val_row.get(k, "") for k in
                                                         ("recon", "changed_acc", "code_purity", "code_separation",
                                                          "event_rate", "prior_kl")])
                csv_file.flush()
                for key, value in {**row, **{f"val_{k}": v for k, v in val_row.items()}}.items():
                    if key != "step":
                        tb.add_scalar(f"latent/{key}", value, step)
                bar.set_postfix(recon=f"{row['recon']:.3f}", ppl=f"{ppl:.2f}", sep=f"{table['separation']:.2f}",
                                sps=f"{speed:.0f}")
                tqdm.write(f"step {step}: recon {row['recon']:.4f} perplexity {ppl:.2f} event rate "
                           f"{row['event_rate']:.2f} nats, prior KL {row['prior_kl']:.2f}, event perplexity "
                           f"{row['event_perplexity']:.1f}; "
                           f"codes per action {table['histogram_text']}"
                           + (f" | val recon {val_row['recon']:.4f} changed-pixel acc {val_row['changed_acc']:.3f}"
                              if val_row else ""))
                window_codes, window_actions, window_events = [], [], []
                recent = {"recon": 0.0, "vq": 0.0, "event_rate": 0.0, "prior_kl": 0.0, "n": 0}
                last_log, samples_since = time.time(), 0
                if step >= args.collapse_check_after and model.code_positions == 1 and ppl < 1.3:
                    stop_reason = "collapse"
                    break
    except KeyboardInterrupt:
        stop_reason = "interrupted"
    bar.close()
    elapsed = elapsed_before + time.time() - start
    save(latest_path, model, optimizer, args, step, elapsed, best_val, cache.fingerprint, train.rng)
    final_val = validate(model, val, val_batches, device, args)
    if final_val["recon"] < best_val or not best_path.exists():
        best_val = final_val["recon"]
        save(best_path, model, optimizer, args, step, elapsed, best_val, cache.fingerprint, train.rng)
    csv_file.close()
    tb.close()
    if stop_reason == "interrupted":
        print(f"interrupted at step {step}: saved {latest_path}; continue with --resume")
        raise KeyboardInterrupt
    if stop_reason == "collapse":
        raise UserError(f"the codebook collapsed (perplexity < 1.3 after {step} updates): every transition gets "
                        f"the same code, so the latent carries no action. Try a faster codebook (--ema-decay 0.8), "
                        f"a smaller --num-codes, or more random-policy data. Checkpoints kept in {out_dir}")

    print(f"trained {step} updates in {elapsed / 60:.1f} min; best val recon {best_val:.4f}; evaluating on test episodes")
    training = {"steps": step, "minutes": elapsed / 60, "best_val_recon": best_val,
                "samples_per_s": (step - start_step) * args.batch_size / max(elapsed - elapsed_before, 1e-9),
                "batch_size": args.batch_size, "parameters": n_params, "preset": args.preset, "device": str(device),
                "threads": threads, "config": {k: v for k, v in config.items() if k != "palette"}}
    evaluate(args, cache, device, training)


def evaluate(args: argparse.Namespace, cache: FrameCache, device: torch.device, training: dict) -> None:
    """Held-out measures of best.pt (common/latent_action_eval.py) -> latent_action/metrics.json."""
    out_dir = latent_dir(args.checkpoint_dir)
    state = load_checkpoint(latent_checkpoint(args.checkpoint_dir, "best"), CHECKPOINT_KIND, "03_train_latent_action.py")
    best = LatentActionModel(state["config"])
    best.load_state_dict(state["model"])
    metrics = evaluate_world_model(best.to(device).eval(), cache, out_dir, episodes=args.eval_episodes,
                                   rollout_steps=args.rollout_steps, seed=args.seed)
    metrics["training"] = training
    atomic_write_json(latent_metrics_path(args.checkpoint_dir), metrics)
    print(f"one-step PSNR {metrics['one_step']['psnr']:.2f} dB (copy-last-frame "
          f"{metrics['one_step']['copy_last_psnr']:.2f}); delta-PSNR {metrics['delta_psnr']:.2f} dB; "
          f"codes vs real actions: purity {metrics['codes']['action_purity']:.3f}, separation "
          f"{metrics['codes']['action_separation']:.3f}; wrote {latent_metrics_path(args.checkpoint_dir)}")
    for level, row in metrics["by_level"].items():
        steps = " / ".join("-" if v is None else f"{v:.1f}" for v in row["psnr_at_steps_1_10_30"])
        print(f"  {level}: {row['episodes']} test episodes, one-step PSNR {row['one_step_psnr']:.2f} dB, "
              f"rollout PSNR at steps 1/10/30 {steps} dB")


if __name__ == "__main__":
    run_main(main)
