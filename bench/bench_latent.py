"""Benchmark of the Stage-3 latent action model: training samples/s and batch-1 predict/encode latency.

    python bench/bench_latent.py                       # our default vs the seeds' configuration
    python bench/bench_latent.py --configs ours --steps 30
    python bench/bench_latent.py --configs ours --precision bf16   # 03's updates on a CPU with native bfloat16

Uses real frames from the data set's frame cache when there is one (else random palette frames).
The reference point is the seeds' own model: about 1.4 training samples/s (batch 8) on this 2-core CPU.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from common.cli import positive_int, run_main, set_threads  # noqa: E402
from common.latent_action import DEFAULT_CONFIG, SEEDS_CONFIG, LatentActionModel  # noqa: E402
from common.latent_training import TransitionSampler, loss_terms  # noqa: E402

SEEDS_REFERENCE_SAMPLES_PER_S = 1.4


def frames_source(data_dir: str, k: int, seed: int):
    """A sampler of (past, next) class-index batches: real train transitions, or random frames."""
    try:
        from common.frame_cache import load_frame_cache

        cache = load_frame_cache(data_dir)
        sampler = TransitionSampler(cache, "train", k, seed)
        return lambda b: sampler.sample(b)[:2], cache.palette, "real frames from " + data_dir
    except Exception as err:  # no data set: random frames still time the arithmetic
        rng = np.random.default_rng(seed)

        def random_batch(b):
            return (torch.from_numpy(rng.integers(0, 9, (b, k, 210, 160), dtype=np.uint8)),
                    torch.from_numpy(rng.integers(0, 9, (b, 210, 160), dtype=np.uint8)))
        return random_batch, DEFAULT_CONFIG["palette"], f"random frames ({type(err).__name__})"


def bench_config(name: str, config: dict, args) -> dict:
    torch.manual_seed(args.seed)
    probe = LatentActionModel(config)
    batch, palette, source = frames_source(args.data_dir, probe.context_frames, args.seed)
    model = LatentActionModel({**config, "palette": [list(c) for c in palette]})
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)

    def train_step(b):
        past, nxt = batch(b)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.precision == "bf16"):
            recon, vq, *_ = loss_terms(model, past, nxt, 20.0, args.keep_static)
        optimizer.zero_grad(set_to_none=True)
        (recon + vq).backward()
        optimizer.step()

    for _ in range(args.warmup):
        train_step(args.batch_size)
    start = time.perf_counter()
    for _ in range(args.steps):
        train_step(args.batch_size)
    train_sps = args.steps * args.batch_size / (time.perf_counter() - start)

    model.eval()
    past, nxt = batch(1)
    rgb_past, rgb_next = model.palette.to_rgb(past), model.palette.to_rgb(nxt)
    codes = model.encode(rgb_past, rgb_next)
    predict_ms, encode_ms = [], []
    for i in range(args.latency_steps + 3):
        t0 = time.perf_counter()
        model.predict(rgb_past, codes)
        t1 = time.perf_counter()
        model.encode(rgb_past, rgb_next)
        t2 = time.perf_counter()
        if i >= 3:
            predict_ms.append((t1 - t0) * 1000)
            encode_ms.append((t2 - t1) * 1000)
    return {"config": name, "parameters": sum(p.numel() for p in model.parameters()),
            "train_samples_per_s": train_sps, "batch_size": args.batch_size, "precision": args.precision,
            "speedup_vs_seeds_model": train_sps / SEEDS_REFERENCE_SAMPLES_PER_S,
            "predict_ms_p50": float(np.percentile(predict_ms, 50)), "predict_ms_p95": float(np.percentile(predict_ms, 95)),
            "encode_ms_p50": float(np.percentile(encode_ms, 50)), "frames": source}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-dir", default="data")
    p.add_argument("--configs", default="ours,seeds", help="comma-separated: ours, seeds")
    p.add_argument("--batch-size", type=positive_int, default=32)
    p.add_argument("--steps", type=positive_int, default=20, help="timed training updates")
    p.add_argument("--warmup", type=positive_int, default=3)
    p.add_argument("--latency-steps", type=positive_int, default=50)
    p.add_argument("--keep-static", type=float, default=0.1)
    p.add_argument("--precision", choices=("fp32", "bf16"), default="fp32",
                   help="arithmetic of the timed training updates (bf16: autocast, as 03 --precision bf16)")
    p.add_argument("--threads", type=positive_int, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="also write the results as JSON here")
    args = p.parse_args()
    threads = set_threads(args.threads)
    configs = {"ours": dict(DEFAULT_CONFIG), "seeds": {**DEFAULT_CONFIG, **SEEDS_CONFIG}}
    results = []
    for name in args.configs.split(","):
        if name not in configs:
            raise SystemExit(f"unknown config {name!r}; choose from {sorted(configs)}")
        result = bench_config(name, configs[name], args)
        results.append(result)
        print(f"{name:6s} {result['parameters'] / 1e6:5.2f}M params  train {result['train_samples_per_s']:6.1f} "
              f"samples/s (batch {args.batch_size}, {result['speedup_vs_seeds_model']:.0f}x the seeds' 1.4)  "
              f"predict b1 p50 {result['predict_ms_p50']:.1f} ms p95 {result['predict_ms_p95']:.1f} ms  "
              f"encode b1 p50 {result['encode_ms_p50']:.1f} ms  [{result['frames']}, {threads} threads]", flush=True)
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    run_main(main)
