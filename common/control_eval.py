"""End-to-end "control" measures: does the neural game obey the real actions the way the real game did?

From real start frames of the test episodes, the recorded real actions are fed through the
action->latent model and the world model (latent action at temperature 0, random events drawn from
the prior at temperature 1 with the game's seeded generator), and each generated frame is compared with
the real recording at the same step:

- paddle: match when the paddle x found in both frames differs by at most 3 px;
- ball: match when the ball centres found in both frames are at most 4 px apart (Euclidean);
- for both: found in neither frame = match (e.g. the ball between lives), found in one only = miss;
- PSNR against the real frame by rollout step (drift).

Beside them, to read the numbers honestly:
- `copy_last_frame`: the same matches for a "model" that never moves anything (the last real frame
  repeated): a paddle score near it means the model does not follow the keys;
- `inferred_latents`: the same rollouts with the latents (action code and random event) the Stage 3
  encoder infers from the real frames: the world model's own limit, without the action->latent map
  and without the prior's draws;
- the share of steps where the real ball is visible, and the ball match on those steps only;
- the share of steps where the real paddle is more than 3 px from where it started, and the paddle
  match on those steps only: there the model must have moved the paddle as the actions said;
- per skill level: the paddle and ball matches, the ball kept (steps where the real frame shows a ball
  and the generated one shows one too) and PSNR at steps 1, 10 and 30.

Play speed: latency of NeuralBreakout.step at batch 1 (p50 / p95) and frames per second.
"""
from __future__ import annotations

import os
import platform
import time
from typing import Any, Callable, Sequence

import numpy as np
import torch
from tqdm import tqdm

from common.action_to_latent import knob_positions, previous_action_rows
from common.dataset import read_frames
from common.detectors import ball_xy, paddle_x
from common.metrics import psnr

PADDLE_TOLERANCE_PX = 3.0
BALL_TOLERANCE_PX = 4.0


def paddle_match(pred: np.ndarray, real: np.ndarray) -> bool:
    """Paddle x within 3 px; absent in both = match, absent in one = miss."""
    a, b = paddle_x(pred), paddle_x(real)
    if a is None or b is None:
        return a is None and b is None
    return abs(a - b) <= PADDLE_TOLERANCE_PX


def ball_match(pred: np.ndarray, real: np.ndarray) -> bool:
    """Ball centre within 4 px (Euclidean); absent in both = match, absent in one = miss."""
    return ball_positions_match(ball_xy(pred), ball_xy(real))


def ball_positions_match(a: tuple[float, float] | None, b: tuple[float, float] | None) -> bool:
    """ball_match on positions already found (ball_xy), so a frame's ball is detected once."""
    if a is None or b is None:
        return a is None and b is None
    return float(np.hypot(a[0] - b[0], a[1] - b[1])) <= BALL_TOLERANCE_PX


def rollout_windows(episodes: Sequence[Any], context: int, horizon: int, max_windows: int) -> list[tuple[Any, int]]:
    """Start points (episode, t0) where t0 is the last real context frame and t0 + horizon exists.

    Windows do not overlap within an episode (t0 advances by `horizon`); when a skill level has more than
    `max_windows`, an evenly spaced subset of its windows is kept, so every level and every part of every
    episode is represented (long skilled games would otherwise crowd out random play).
    """
    by_level: dict[int, list[tuple[Any, int]]] = {}
    for episode in episodes:
        by_level.setdefault(getattr(episode, "level", 0), []).extend(
            (episode, t0) for t0 in range(context - 1, episode.num_frames - horizon, horizon))
    windows = []
    for level in sorted(by_level):
        level_windows = by_level[level]
        if len(level_windows) > max_windows:
            keep = np.linspace(0, len(level_windows) - 1, max_windows).round().astype(int)
            level_windows = [level_windows[i] for i in keep]
        windows += level_windows
    return windows


def _rollout(step: Callable[[torch.Tensor, int], torch.Tensor], past: torch.Tensor, horizon: int) -> np.ndarray:
    """Run `step(past, s) -> next frames` for `horizon` steps on its own output; returns (B, horizon, 210, 160, 3)."""
    generated = []
    for s in range(horizon):
        nxt = step(past, s)
        generated.append(nxt)
        past = torch.cat([past[:, 1:], nxt[:, None]], dim=1)
    return torch.stack(generated, dim=1).numpy()


def _score(generated: np.ndarray, real: np.ndarray, real_balls: list[list], control_steps: int
           ) -> dict[str, np.ndarray]:
    """Per-window, per-step matches (first `control_steps` steps) and PSNR (all steps); `real_balls` are the
    real frames' ball positions (ball_xy), found once for all the rollouts scored against them."""
    batch, horizon = generated.shape[:2]
    paddle = np.zeros((batch, control_steps), bool)
    ball = np.zeros((batch, control_steps), bool)
    shown = np.zeros((batch, control_steps), bool)  # the generated frame shows a ball at all
    for b in range(batch):
        for s in range(control_steps):
            paddle[b, s] = paddle_match(generated[b, s], real[b, s])
            generated_ball = ball_xy(generated[b, s])
            ball[b, s] = ball_positions_match(generated_ball, real_balls[b][s])
            shown[b, s] = generated_ball is not None
    quality = psnr(generated, real)  # (batch, horizon), identical frames capped at 60 dB
    return {"paddle": paddle, "ball": ball, "ball_shown": shown, "psnr": quality}


def _share(matches: np.ndarray, where: np.ndarray) -> float | None:
    return float(matches[where].mean()) if where.any() else None


def _summary(scores: list[dict[str, np.ndarray]], ball_visible: np.ndarray, paddle_moved: np.ndarray) -> dict[str, Any]:
    paddle = np.concatenate([s["paddle"] for s in scores])
    ball = np.concatenate([s["ball"] for s in scores])
    quality = np.concatenate([s["psnr"] for s in scores])
    return {
        "paddle_within_3px": float(paddle.mean()),
        "ball_within_4px": float(ball.mean()),
        "paddle_within_3px_when_real_paddle_moved": _share(paddle, paddle_moved),
        "ball_within_4px_when_real_ball_visible": _share(ball, ball_visible),
        "paddle_within_3px_by_step": paddle.mean(0).round(4).tolist(),
        "ball_within_4px_by_step": ball.mean(0).round(4).tolist(),
        "psnr_db_by_step": quality.mean(0).round(3).tolist(),
        "psnr_db_mean": float(quality.mean()),
    }


def evaluate_control(game: Any, episodes: Sequence[Any], control_steps: int = 30, drift_steps: int = 50,
                     max_windows: int = 64, batch_size: int = 8, with_inferred_latents: bool = True,
                     event_temperature: float = 1.0) -> dict[str, Any]:
    """Roll the neural game out from real starts with the recorded actions and score it against the recording.

    `game` is a NeuralBreakout; rollouts run at temperature 0, batched `batch_size` windows at a time.
    """
    horizon = max(control_steps, drift_steps)
    k = game.context_frames
    windows = rollout_windows(episodes, k, horizon, max_windows)
    if not windows:
        raise ValueError(f"no episode has {k + horizon} frames for a {horizon}-step rollout")
    results: dict[str, list] = {"action_to_latent": [], "copy_last_frame": [], "inferred_latents": []}
    ball_visible = []
    for first in tqdm(range(0, len(windows), batch_size), desc="control rollouts", unit="batch"):
        chunk = windows[first:first + batch_size]
        clips = torch.from_numpy(np.stack([read_frames(ep, t0 - k + 1, t0 + horizon + 1) for ep, t0 in chunk]))
        actions = torch.tensor([ep.actions[t0:t0 + horizon] for ep, t0 in chunk], dtype=torch.int64)
        previous = torch.from_numpy(np.stack([previous_action_rows(ep.actions, t0 + np.arange(horizon),
                                                                   game.previous_count) for ep, t0 in chunk]))
        knob = torch.from_numpy(np.stack([knob_positions(ep.actions, game.knob_frame_skip)[t0:t0 + horizon]
                                          for ep, t0 in chunk])) if game.knob_frame_skip else None
        past, real = clips[:, :k], clips[:, k:].numpy()
        real_balls = [[ball_xy(real[b, s]) for s in range(control_steps)] for b in range(len(chunk))]
        ball_visible.append(np.array([[ball is not None for ball in balls] for balls in real_balls]))

        generated = _rollout(lambda p, s: game.step_batch(p, actions[:, s], 0.0, previous[:, s],
                                                          None if knob is None else knob[:, s], event_temperature),
                             past, horizon)
        results["action_to_latent"].append(_score(generated, real, real_balls, control_steps))
        still = np.repeat(past[:, -1:].numpy(), horizon, axis=1)
        results["copy_last_frame"].append(_score(still, real, real_balls, control_steps))
        if with_inferred_latents:
            def inferred_step(p: torch.Tensor, s: int) -> torch.Tensor:
                """The world model on its own output, with the latent the encoder infers from real frames s..k+s."""
                model = game.latent_model
                device = model.vq.codebook.device
                with torch.inference_mode():
                    codes, events = model.infer_latents(model.to_index(clips[:, s:k + s].to(device)),
                                                        model.to_index(clips[:, k + s].to(device)))
                return game.predict(p, codes, events)

            results["inferred_latents"].append(_score(_rollout(inferred_step, past, horizon), real, real_balls,
                                                             control_steps))

    visible = np.concatenate(ball_visible)
    moved = ~np.concatenate([s["paddle"] for s in results["copy_last_frame"]])  # > 3 px from its start position
    metrics: dict[str, Any] = {
        "windows": len(windows),
        "episodes": len({id(ep) for ep, _ in windows}),
        "control_steps": control_steps,
        "drift_steps": horizon,
        "temperature": 0.0,
        "event_temperature": event_temperature,
        "real_ball_visible_share": float(visible.mean()),
        "real_paddle_moved_share": float(moved.mean()),
        "rules": "paddle: |x_pred - x_real| <= 3 px; ball: Euclidean distance <= 4 px; found in neither frame "
                 "= match, found in one only = miss; PSNR capped at 60 dB; windows do not overlap",
    }
    for name, scores in results.items():
        if scores:
            metrics[name] = _summary(scores, visible, moved)
    levels = np.array([getattr(ep, "level", 0) for ep, _ in windows])
    paddle = np.concatenate([s["paddle"] for s in results["action_to_latent"]])
    ball = np.concatenate([s["ball"] for s in results["action_to_latent"]])
    shown = np.concatenate([s["ball_shown"] for s in results["action_to_latent"]])
    quality = np.concatenate([s["psnr"] for s in results["action_to_latent"]])
    metrics["action_to_latent"]["by_level"] = {
        f"skill_level_{level}": {"windows": int((levels == level).sum()),
                                 "paddle_within_3px": float(paddle[levels == level].mean()),
                                 "ball_within_4px": float(ball[levels == level].mean()),
                                 "ball_kept": _share(shown[levels == level], visible[levels == level]),
                                 "psnr_db_at_steps_1_10_30": [float(quality[levels == level, s - 1].mean())
                                                              for s in (1, 10, 30) if s <= horizon]}
        for level in sorted(set(levels.tolist()))}
    return metrics


def measure_play_speed(game: Any, start_frames: np.ndarray, steps: int = 200, warmup: int = 10,
                       seed: int = 0) -> dict[str, Any]:
    """Latency of game.step at batch 1 with random actions (temperature 0), after `warmup` steps.

    Wall-clock latency is what a player gets on this machine as it is; on a shared, busy machine it
    includes waiting for a core. The process CPU time per step (all threads together) does not, so
    with one thread it is what the step costs on an idle core.
    """
    rng = np.random.default_rng(seed)
    game.reset(start_frames)
    for _ in range(warmup):
        game.step(int(rng.integers(4)))
    wall, cpu = [], []
    for _ in range(steps):
        action = int(rng.integers(4))
        begin, begin_cpu = time.perf_counter(), time.process_time()
        game.step(action)
        wall.append(time.perf_counter() - begin)
        cpu.append(time.process_time() - begin_cpu)
    ms, cpu_ms = np.array(wall) * 1000.0, np.array(cpu) * 1000.0
    return {
        "steps": steps,
        "latency_ms_p50": float(np.percentile(ms, 50)),
        "latency_ms_p95": float(np.percentile(ms, 95)),
        "latency_ms_mean": float(ms.mean()),
        "fps": float(1000.0 / ms.mean()),
        "cpu_ms_per_step_p50": float(np.percentile(cpu_ms, 50)),
        "torch_threads": torch.get_num_threads(),
        "load_average_1min": float(os.getloadavg()[0]),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}",
    }
