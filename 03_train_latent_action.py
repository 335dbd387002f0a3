"""Stage 3: learn latent actions and a next-frame world model from the recorded videos alone.

Reads data/ (Stage 02), writes checkpoints/latent_action/{best,latest}.pt, metrics.json, PNG sheets
and a rollout GIF. The recorded real actions are never a training input: they only feed the
per-action code histogram that shows, while training runs, whether the codes discovered the controls.

    python 03_train_latent_action.py --preset quick           # ~25 min on a 2-core CPU
    python 03_train_latent_action.py --seeds-config           # the seeds' 5x7 grid of 256 codes
"""
from __future__ import annotations

import argparse
import json
import os
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch

from common.cli import (add_preset_arg, apply_preset, non_negative_float, non_negative_int, pick_device,
                        positive_float, positive_int, probability, refuse_to_replace, run_main, set_threads)
from common.distributed import Ranks, barrier, gather_objects, state_digest
from common.errors import UserError
from common.frame_cache import FrameCache, load_frame_cache
from common.io import atomic_write_json, check_writable, load_checkpoint, run_lock
from common.latent_action import (CHECKPOINT_KIND, DEFAULT_CONFIG, SEEDS_CONFIG, LatentActionModel,
                                  load_latent_action_model)
from common.latent_action_eval import evaluate_world_model
from common.latent_training import (EVENT_INFO_FLOOR, LoopSettings, LossSettings, TrainingMonitor, TrainingState,
                                    TransitionSampler, use_bf16, save_training_state, train, validate)
from common.paths import latent_checkpoint, latent_dir, latent_metrics_path, training_lock
from common.plots import plot_latent_training

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
    p.add_argument("--event-info-floor", type=non_negative_float, default=EVENT_INFO_FLOOR,
                   help="least information (nats) a batch's event classes must carry about its transitions, so "
                        "the event latent cannot collapse onto one class (default log 2; 0: no floor)")
    p.add_argument("--seeds-config", action="store_true",
                   help="the seeds' model: 1 past frame, 7x5 grid of 256 codes of dim 128, no skips")
    p.add_argument("--motion-weight", type=non_negative_float, default=20.0,
                   help="extra loss weight on pixel cells near motion in the past frames (ball, paddle)")
    p.add_argument("--appear-weight", type=non_negative_float, default=0.0,
                   help="extra loss weight on cells between the bricks and the paddle that change far from any past "
                        "motion (a served ball); 20 serves more surely but also draws balls without FIRE "
                        "(FINDINGS.md)")
    p.add_argument("--serve-weight", type=non_negative_float, default=0.0,
                   help="extra loss weight on the cells between the bricks and the paddle while the past frames "
                        "show no motion there (waiting for a serve); read from the inputs only. 20 serves more "
                        "after a lost life but brings bricks back (FINDINGS.md)")
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
    p.add_argument("--precision", choices=("auto", "bf16", "fp32"), default="auto",
                   help="arithmetic of the training updates (validation stays float32); auto: bf16 on CUDA, fp32 "
                        "elsewhere. bf16 on a CPU with AVX-512 BF16 or AMX: 1.6-1.8x the updates, a trade (FINDINGS.md)")
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
    if args.code_grid:
        config["action_view"] = "screen"   # a grid of codes covers the whole screen
        if args.event_classes is None:
            config["event_classes"] = 0    # the event latent conditions the single code only
    return config


def restore(path: Path, model: LatentActionModel, optimizer: torch.optim.Optimizer, sampler: TransitionSampler,
            config: dict, fingerprint: str, args: argparse.Namespace, ranks: Ranks) -> TrainingState:
    """--resume: the model, optimizer, counters and RNG states of latest.pt, refused when they do not match.

    Any number of processes resumes any other's run: the sampler's state is shared by all ranks, and a
    rank that the saved run did not have keeps its own seeded random state."""
    saved = load_checkpoint(path, CHECKPOINT_KIND, "03_train_latent_action.py (without --resume)")
    if saved["config"] != config:
        missing = sorted(set(config) - set(saved["config"]))
        if missing:
            raise UserError(f"--resume: {path} was trained by an earlier version of this code (without "
                            f"{', '.join(missing)}): start over with --fresh")
        raise UserError("--resume: latest.pt was trained with another model configuration; "
                        "use the same flags or start over with --fresh")
    if saved.get("data_fingerprint") != fingerprint:
        raise UserError(f"--resume: {path} was trained on another data set than {args.data_dir} "
                        f"(recorded again since?): resume on the same data, or start over with --fresh")
    model.load_state_dict(saved["model"])
    optimizer.load_state_dict(saved["optimizer"])
    torch_rngs = saved["torch_rng"] if isinstance(saved["torch_rng"], list) else [saved["torch_rng"]]
    if ranks.rank < len(torch_rngs):
        torch.set_rng_state(torch_rngs[ranks.rank])
    sampler.rng.bit_generator.state = saved["numpy_rng"]
    state = TrainingState(saved["step"], saved["elapsed"], saved["best_val"])
    if state.elapsed_before >= args.time_budget * 60 or state.step >= args.max_steps:
        raise UserError(f"--resume: latest.pt has spent its budget ({state.step} updates, "
                        f"{state.elapsed_before / 60:.1f} min): raise --time-budget or --max-steps to train on")
    if ranks.is_main:
        print(f"resumed from step {state.step} ({state.elapsed_before / 60:.1f} min trained"
              f"{', in %d processes' % saved.get('world_size', 1) if saved.get('world_size', 1) > 1 else ''})")
    return state


def stop_unless_trained(stop_reason: str, step: int, checkpoint_root: str) -> None:
    """After Ctrl-C or a collapsed codebook there is nothing to evaluate: say what was kept and stop."""
    if stop_reason == "interrupted":
        print(f"interrupted at step {step}: saved {latent_checkpoint(checkpoint_root, 'latest')}; "
              f"continue with --resume")
        raise KeyboardInterrupt
    if stop_reason == "collapse":
        raise UserError(f"the codebook collapsed (perplexity < 1.3 after {step} updates): every transition "
                        f"gets the same code, so the latent carries no action. Try a faster codebook "
                        f"(--ema-decay 0.8), a smaller --num-codes, or more random-policy data. Checkpoints kept "
                        f"in {latent_dir(checkpoint_root)}")


def main() -> None:
    args = parse_args()
    device = pick_device(args.device)
    ranks = Ranks.from_env(device.type)
    try:
        run(args, device, ranks)
    finally:
        ranks.close()


def run(args: argparse.Namespace, device: torch.device, ranks: Ranks) -> None:
    """Train (every rank under torchrun; rank 0 alone writes), then evaluate best.pt on rank 0."""
    threads = set_threads(args.threads or max(1, (os.cpu_count() or 1) // ranks.local_world_size))
    if device.type == "cuda" and ranks.distributed:
        device = torch.device("cuda", ranks.local_rank)
    if args.batch_size % ranks.world_size:
        raise UserError(f"--batch-size {args.batch_size} is the global batch: it must divide by the "
                        f"{ranks.world_size} processes")
    torch.manual_seed(args.seed + ranks.rank)   # rank 0 starts as a single process would; DDP copies its weights
    out_dir = latent_dir(args.checkpoint_dir)
    log_dir = Path(args.log_dir) / "latent_action"
    if args.eval_only:
        if ranks.is_main:
            cache = load_frame_cache(args.data_dir, rebuild=args.rebuild_cache)
            previous = latent_metrics_path(args.checkpoint_dir)
            training = json.loads(previous.read_text()).get("training", {}) if previous.exists() else {}
            evaluate(args, cache, device, training)
        return

    refuse_to_replace(latent_checkpoint(args.checkpoint_dir, "latest"), args.resume, args.fresh)
    if ranks.local_rank == 0:   # one process per machine decodes the PNGs; the others wait, then read its cache
        cache = load_frame_cache(args.data_dir, rebuild=args.rebuild_cache)
    barrier()
    if ranks.local_rank != 0:
        cache = load_frame_cache(args.data_dir)
    if ranks.is_main:
        for folder in (out_dir, log_dir):
            check_writable(folder)
    config = model_config(args, cache.palette)
    try:
        model = LatentActionModel(config).to(device)
    except ValueError as err:
        raise UserError(str(err)) from None
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)
    sampler = TransitionSampler(cache, "train", model.context_frames, args.seed, ranks)
    state = TrainingState()
    if args.resume:
        state = restore(latent_checkpoint(args.checkpoint_dir, "latest"), model, optimizer, sampler, config,
                        cache.fingerprint, args, ranks)
    start_step, trained_before = state.step, state.elapsed_before
    val = TransitionSampler(cache, "val", model.context_frames, args.seed + 1)
    val_rng = np.random.default_rng(1234)
    val_batches = [val_rng.integers(len(val), size=args.batch_size) for _ in range(args.val_batches)]
    n_params = sum(p.numel() for p in model.parameters())
    bf16 = use_bf16(args.precision, device)
    if ranks.is_main:
        print(f"latent action model: {n_params / 1e6:.2f}M parameters, k={model.context_frames}, "
              f"{model.num_codes} codes x {model.code_positions} position(s); {len(sampler)} train / {len(val)} "
              f"val transitions; device {device}, {threads} threads, {'bf16' if bf16 else 'fp32'} updates"
              + (f" in each of {ranks.world_size} processes" if ranks.distributed else ""))
    flags = dict(vars(args))
    loss = LossSettings(args.motion_weight, args.keep_static, args.event_kl_weight, args.event_free_nats,
                        args.appear_weight, args.serve_weight, args.event_info_floor)
    loop = LoopSettings(args.batch_size, args.lr, args.time_budget, args.max_steps, args.eval_every, args.vq_warmup,
                        args.restart_every, args.dead_code_threshold, args.collapse_check_after,
                        bf16)

    def save(name: str, elapsed: float) -> None:
        """"latest" is saved by all ranks together (it keeps each rank's random state for --resume);
        "best" by rank 0 alone."""
        torch_rngs = gather_objects(torch.get_rng_state()) if name == "latest" else [torch.get_rng_state()]
        if ranks.is_main:
            save_training_state(latent_checkpoint(args.checkpoint_dir, name), model, optimizer, flags, state,
                                elapsed, cache.fingerprint, sampler.rng, torch_rngs, ranks.world_size)

    with run_lock(training_lock(out_dir), "03_train_latent_action.py run") if ranks.is_main else nullcontext():
        monitor = TrainingMonitor(log_dir, model.num_codes, model.event_classes, args.resume) if ranks.is_main else None
        stop_reason = train(model, optimizer, sampler, val, val_batches, state, loop, loss, device, monitor, save,
                            ranks)
        elapsed = state.elapsed_before
        save("latest", elapsed)
        digests = gather_objects(state_digest(model))
        if ranks.is_main:
            final_val = validate(model, val, val_batches, device, loss)
            if final_val["recon"] < state.best_val or not latent_checkpoint(args.checkpoint_dir, "best").exists():
                state.best_val = final_val["recon"]
                save("best", elapsed)
            monitor.close()
    if not ranks.is_main:   # rank 0 says why it stopped and evaluates
        if stop_reason == "interrupted":
            raise SystemExit(130)
        if stop_reason != "collapse":
            barrier()       # wait for it: a rank that left and tore down gloo early was seen to abort at exit
        return
    plot_latent_training(log_dir / "train_log.csv", log_dir / "training_curves.png")
    stop_unless_trained(stop_reason, state.step, args.checkpoint_dir)
    if len(set(digests)) > 1:
        print(f"warning: the {ranks.world_size} processes ended with different weights or codebooks")

    print(f"trained {state.step} updates in {elapsed / 60:.1f} min; best val recon {state.best_val:.4f}; "
          f"evaluating on test episodes")
    training = {"steps": state.step, "minutes": elapsed / 60, "best_val_recon": state.best_val,
                "samples_per_s": (state.step - start_step) * args.batch_size / max(elapsed - trained_before, 1e-9),
                "batch_size": args.batch_size, "parameters": n_params, "preset": args.preset, "device": str(device),
                "threads": threads, "world_size": ranks.world_size, "ranks_identical": len(set(digests)) == 1,
                "config": {k: v for k, v in config.items() if k != "palette"}}
    evaluate(args, cache, device, training)
    barrier()               # the other ranks wait here, so that all leave together


def evaluate(args: argparse.Namespace, cache: FrameCache, device: torch.device, training: dict) -> None:
    """Held-out measures of best.pt (common/latent_action_eval.py) -> latent_action/metrics.json."""
    out_dir = latent_dir(args.checkpoint_dir)
    best = load_latent_action_model(args.checkpoint_dir, device=device, which="best")
    metrics = evaluate_world_model(best, cache, out_dir, episodes=args.eval_episodes,
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
