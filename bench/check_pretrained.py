"""Do the shipped float16 weights predict what the float32 run they came from predicts?

    python bench/check_pretrained.py                     # checkpoints/ against pretrained/
    python bench/check_pretrained.py --transitions 600

On test transitions of the recorded data, both world models decode the next frame from the same past
frames and the latents the float32 encoder infers; prints the one-step PSNR of each against the real
frame, the share of pixels on which the two predictions agree, and the action->latent maps' agreement.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from common.action_to_latent import knob_positions, load_action_to_latent, previous_action_rows  # noqa: E402
from common.cli import run_main  # noqa: E402
from common.frame_cache import load_frame_cache  # noqa: E402
from common.latent_action import load_latent_action_model, past_frame_rows  # noqa: E402
from common.metrics import psnr  # noqa: E402
from common.pretrained import PRETRAINED_ROOT  # noqa: E402


@torch.no_grad()
def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint-dir", default="checkpoints")
    p.add_argument("--pretrained", default=str(PRETRAINED_ROOT))
    p.add_argument("--data-dir", default="data")
    p.add_argument("--transitions", type=int, default=300)
    args = p.parse_args()
    full = load_latent_action_model(args.checkpoint_dir)
    shipped = load_latent_action_model(args.pretrained)
    cache = load_frame_cache(args.data_dir)
    rng = np.random.default_rng(0)
    episodes = cache.split("test")
    k = full.context_frames
    rows = [(e, int(rng.integers(e.num_frames - 1))) for e in (episodes[i] for i in rng.integers(len(episodes),
                                                                                                 size=args.transitions))]
    past = torch.from_numpy(np.stack([cache.frames[e.start + past_frame_rows(np.array([t]), k)[0]] for e, t in rows]))
    nxt = torch.from_numpy(np.stack([cache.frames[e.start + t + 1] for e, t in rows]))
    codes, events = full.infer_latents(past, nxt)
    predictions = {name: model.predict_indices(past, codes, events) for name, model in
                   (("float32", full), ("float16", shipped))}
    real = full.palette.to_rgb(nxt).numpy()
    for name, classes in predictions.items():
        print(f"{name}: one-step PSNR {psnr(full.palette.to_rgb(classes).numpy(), real).mean():.3f} dB")
    agree = (predictions["float32"] == predictions["float16"]).float().mean().item()
    print(f"pixels on which the two predictions agree: {agree:.6%} ({args.transitions} test transitions)")
    maps = [load_action_to_latent(root) for root in (args.checkpoint_dir, args.pretrained)]
    actions = torch.tensor([int(e.actions[t]) for e, t in rows])
    previous = torch.from_numpy(np.stack([previous_action_rows(e.actions, np.array([t]), maps[0].previous_actions)[0]
                                          for e, t in rows]))
    knob = (torch.tensor([float(knob_positions(e.actions, maps[0].knob_frame_skip)[t]) for e, t in rows])
            if maps[0].knob_frame_skip else None)
    rgb_past = full.palette.to_rgb(past)
    latents = [m.sample(actions, rgb_past, temperature=0.0, previous=previous, knob=knob) for m in maps]
    print(f"action->latent map: same latent on {(latents[0] == latents[1]).all(-1).float().mean().item():.2%} "
          f"of the transitions")


if __name__ == "__main__":
    run_main(main)
