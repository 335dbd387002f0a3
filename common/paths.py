"""Where every stage reads and writes: one function per artifact, the only place their names are spelled.

    <data>/raw_gameplay/skill_level_{k}/episode_{NNN}/frame_{NNNNN}.png   02: native 210x160 RGB frames
    <data>/actions/skill_level_{k}_actions.json                          02: header + one record per episode
    <data>/videos/skill_level_{k}/episode_{NNN}.mp4                      02: for people, not read by later stages
    <data>/actions/summary.json                                          02: per-level summary
    <data>/actions/action_latent_pairs.json, action_latent_stats.json     04
    <data>/pipeline_summary.json, neural_<policy>_game.gif               run_pipeline.py, 06
    <checkpoints>/dqn/{skill_level_k,best,latest}.pt, *_log.csv          01
    <checkpoints>/latent_action/{best,latest}.pt, metrics.json           03
    <checkpoints>/latent_action/action_to_latent_best.pt, ..._metrics.json  05
    <checkpoints>/latent_action/control_metrics.json                     06 --evaluate
"""
from __future__ import annotations

from pathlib import Path

# ---- recorded data (02) ----------------------------------------------------------------------------


def level_name(level: int) -> str:
    return f"skill_level_{level}"


def actions_path(data_dir: str | Path, level: int) -> Path:
    return Path(data_dir) / "actions" / f"{level_name(level)}_actions.json"


def level_frames_dir(data_dir: str | Path, level: int) -> Path:
    return Path(data_dir) / "raw_gameplay" / level_name(level)


def episode_dir_name(index: int) -> str:
    return f"episode_{index:03d}"


def frame_name(i: int) -> str:
    return f"frame_{i:05d}.png"


def video_path(data_dir: str | Path, level: int, index: int) -> Path:
    return Path(data_dir) / "videos" / level_name(level) / f"{episode_dir_name(index)}.mp4"


def summary_path(data_dir: str | Path) -> Path:
    return Path(data_dir) / "actions" / "summary.json"


def lock_path(data_dir: str | Path) -> Path:
    """Holds the pid of a recording in progress (02_record_videos.py)."""
    return Path(data_dir) / "actions" / ".recording.lock"


# ---- derived data (04, 06, run_pipeline) -------------------------------------------------------------


def pairs_path(data_dir: str | Path) -> Path:
    return Path(data_dir) / "actions" / "action_latent_pairs.json"


def pair_stats_path(data_dir: str | Path) -> Path:
    return Path(data_dir) / "actions" / "action_latent_stats.json"


def pipeline_summary_path(data_dir: str | Path) -> Path:
    return Path(data_dir) / "pipeline_summary.json"


def neural_game_gif(data_dir: str | Path, policy: str) -> Path:
    return Path(data_dir) / f"neural_{policy}_game.gif"


# ---- checkpoints (01, 03, 05, 06) --------------------------------------------------------------------


def dqn_dir(checkpoint_root: str | Path) -> Path:
    return Path(checkpoint_root) / "dqn"


def training_lock(folder: str | Path) -> Path:
    """Holds the pid of the training run writing to a checkpoint folder (dqn/ or latent_action/)."""
    return Path(folder) / ".training.lock"


def dqn_checkpoint(checkpoint_root: str | Path, name: str) -> Path:
    """name: "latest", "best" or "skill_level_k"."""
    return dqn_dir(checkpoint_root) / f"{name}.pt"


def latent_dir(checkpoint_root: str | Path) -> Path:
    return Path(checkpoint_root) / "latent_action"


def latent_checkpoint(checkpoint_root: str | Path, which: str = "best") -> Path:
    """which: "best" or "latest"."""
    return latent_dir(checkpoint_root) / f"{which}.pt"


def latent_metrics_path(checkpoint_root: str | Path) -> Path:
    return latent_dir(checkpoint_root) / "metrics.json"


def action_to_latent_checkpoint(checkpoint_root: str | Path) -> Path:
    return latent_dir(checkpoint_root) / "action_to_latent_best.pt"


def action_to_latent_metrics_path(checkpoint_root: str | Path) -> Path:
    return latent_dir(checkpoint_root) / "action_to_latent_metrics.json"


def control_metrics_path(checkpoint_root: str | Path) -> Path:
    return latent_dir(checkpoint_root) / "control_metrics.json"
