"""Weights shipped in the repository, so that a fresh clone plays at once (`make play`).

`pretrained/` has the layout of a checkpoint root (common/paths.py): the world model
(latent_action/best.pt) and the action->latent map (latent_action/action_to_latent_best.pt) of a
quick-preset pipeline run, and its agent (dqn/best.pt). Only what playing needs is kept: weights in
float16 (they load into float32 models; the measures were checked not to move), no optimizer state.

    python -m common.pretrained                       # export from checkpoints/ (after make pipeline)
    python -m common.pretrained --checkpoint-dir DIR  # from another pipeline run
"""
from __future__ import annotations

import argparse
from pathlib import Path

import torch

from common import paths
from common.errors import UserError
from common.action_to_latent import file_fingerprint
from common.io import load_checkpoint, save_checkpoint

PRETRAINED_ROOT = Path(__file__).resolve().parent.parent / "pretrained"


def half(state: dict) -> dict:
    """Floating-point tensors as float16, everything else as it is."""
    return {k: v.half() if torch.is_tensor(v) and v.is_floating_point() else v for k, v in state.items()}


def has_trained_game(checkpoint_root: str | Path) -> bool:
    """Whether a checkpoint root holds a playable game (stages 3 and 5 both done)."""
    return (paths.latent_checkpoint(checkpoint_root, "best").exists()
            and paths.action_to_latent_checkpoint(checkpoint_root).exists())


def playable_root(requested: str | Path, explicit: bool) -> Path:
    """The checkpoint root to play from: the requested one, or the shipped weights when the default root
    holds no trained game yet (said in one line). An explicitly requested root is never replaced."""
    requested = Path(requested)
    if has_trained_game(requested) or explicit:
        return requested
    if has_trained_game(PRETRAINED_ROOT):
        print(f"{requested} holds no trained world model yet: playing the shipped weights in {PRETRAINED_ROOT.name}/ "
              f"(make pipeline trains your own)")
        return PRETRAINED_ROOT
    return requested


def export(checkpoint_root: str | Path, out_root: str | Path = PRETRAINED_ROOT) -> list[Path]:
    """Write the playable subset of a pipeline run to out_root; returns the files written."""
    latent = load_checkpoint(paths.latent_checkpoint(checkpoint_root, "best"), "latent_action",
                             "03_train_latent_action.py")
    mapping = load_checkpoint(paths.action_to_latent_checkpoint(checkpoint_root), "action_to_latent",
                              "05_train_action_to_latent.py")
    latent_out = paths.latent_checkpoint(out_root, "best")
    latent_out.parent.mkdir(parents=True, exist_ok=True)
    save_checkpoint(latent_out, "latent_action", model=half(latent["model"]), config=latent["config"],
                    step=latent["step"], elapsed=latent["elapsed"], best_val=latent["best_val"],
                    data_fingerprint=latent["data_fingerprint"])
    # the map names the world model it was fit to by the file's sha1: point it at the exported file
    config = {**mapping["config"], "latent_fingerprint": file_fingerprint(latent_out)}
    map_out = paths.action_to_latent_checkpoint(out_root)
    save_checkpoint(map_out, "action_to_latent", model=half(mapping["model"]), config=config,
                    epoch=mapping["epoch"], steps=mapping["steps"], metrics=mapping["metrics"])
    written = [latent_out, map_out]
    agent = paths.dqn_checkpoint(checkpoint_root, "best")
    if agent.exists():
        policy = load_checkpoint(agent, "dqn", "01_train_dqn.py")
        agent_out = paths.dqn_checkpoint(out_root, "best")
        agent_out.parent.mkdir(parents=True, exist_ok=True)
        keep = ("model_config", "env_config", "step", "frames", "eval_score", "wall_s")
        save_checkpoint(agent_out, "dqn", state_dict=half(policy["state_dict"]), **{k: policy[k] for k in keep})
        written.append(agent_out)
    return written


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint-dir", default="checkpoints", help="the pipeline run to export")
    parser.add_argument("--out", default=str(PRETRAINED_ROOT), help="where the shipped weights go")
    args = parser.parse_args()
    if Path(args.checkpoint_dir).resolve() == Path(args.out).resolve():
        raise UserError("--checkpoint-dir and --out are the same folder")
    for path in export(args.checkpoint_dir, args.out):
        print(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB)")


if __name__ == "__main__":
    from common.cli import run_main

    run_main(main)
