"""Held-out evaluation of the latent action model, on the test episodes.

- one-step PSNR / SSIM with latents inferred by the encoder, beside the copy-last-frame baseline;
- delta-PSNR (Genie's controllability): a 4-step rollout with inferred latents minus one with random latents;
- PSNR by rollout step 1..N with inferred latents (drift; the model runs on its own output frames);
- codebook usage and perplexity, and how the codes line up with the real actions (monitoring only);
- PNG sheets (context, target, prediction, difference), codebook usage and a rollout GIF.
"""
from __future__ import annotations

from pathlib import Path

import cv2
import imageio.v2 as imageio
import numpy as np
import torch

from common.dataset import ACTION_NAMES
from common.frame_cache import FrameCache
from common.latent_action import past_frame_rows
from common.metrics import perplexity, psnr, ssim



def action_code_table(actions: np.ndarray, codes: np.ndarray, num_codes: int, num_actions: int = 4) -> dict:
    """Per-action code histogram and two read-outs of it (monitoring only, never a training signal):

    `purity`      share of transitions whose code is its action's most common code: what an action->latent
                  table would get right (1.0 also when every action shares one code, i.e. on collapse);
    `separation`  share whose action is its code's most common action: whether the codes tell the controls
                  apart (about 0.75 is the ceiling while NOOP and FIRE look the same with the ball in play).
    """
    hist = np.zeros((num_actions, num_codes), dtype=np.int64)
    np.add.at(hist, (np.asarray(actions), np.asarray(codes)), 1)
    purity = float(hist.max(1).sum() / max(hist.sum(), 1))
    separation = float(hist.max(0).sum() / max(hist.sum(), 1))
    shown = np.argsort(-hist.sum(0))[:min(num_codes, 8)]
    text = " ".join(f"{ACTION_NAMES[a][0]}[" + ",".join(str(hist[a, c]) for c in shown) + "]"
                    for a in range(num_actions))
    return {"histogram": hist.tolist(), "purity": purity, "separation": separation, "histogram_text": text}


def _windows(frames: np.ndarray, k: int, t: np.ndarray) -> np.ndarray:
    """(len(t), k, H, W) past windows ending at frame t, repeating frame 0 before the start."""
    return frames[past_frame_rows(t, k)]


@torch.no_grad()
def _one_step(model, frames: np.ndarray, t: np.ndarray, device, batch: int = 64):
    """Inferred codes and predicted class frames for transitions t -> t+1 of one episode."""
    k = model.context_frames
    codes, preds = [], []
    for i in range(0, len(t), batch):
        tt = t[i:i + batch]
        past = torch.from_numpy(_windows(frames, k, tt)).to(device)
        nxt = torch.from_numpy(frames[tt + 1]).to(device)
        c, events = model.infer_latents(past, nxt)
        codes.append(c.cpu().numpy())
        preds.append(model.predict_indices(past, c, events).cpu().numpy())
    return np.concatenate(codes), np.concatenate(preds)


@torch.no_grad()
def rollout(model, frames: np.ndarray, starts: np.ndarray, steps: int, device, codes_mode: str = "inferred",
            generator: torch.Generator | None = None) -> np.ndarray:
    """Roll the decoder forward `steps` times from the real frames at each start (its context ends there).

    Codes (and random events) come from the encoder on the real video ("inferred"), or the codes uniformly
    at random and the events from the prior's most likely class ("random").
    Returns generated class frames (len(starts), steps, H, W).
    """
    k = model.context_frames
    context = torch.from_numpy(_windows(frames, k, starts)).to(device)
    out = []
    for s in range(steps):
        t = starts + s
        if codes_mode == "inferred":
            real_past = torch.from_numpy(_windows(frames, k, t)).to(device)
            codes, events = model.infer_latents(real_past, torch.from_numpy(frames[t + 1]).to(device))
        else:
            codes = torch.randint(model.num_codes, (len(starts), model.code_positions), generator=generator)
            events = None
        nxt = model.predict_indices(context, codes.to(device), events)
        out.append(nxt.cpu().numpy())
        context = torch.cat([context[:, 1:], nxt[:, None]], 1)
    return np.stack(out, 1)


def _sheet(model, frames, t, pred_classes, path: Path, rows: int = 4) -> None:
    """Rows of: k context frames | target | prediction | |difference| (amplified)."""
    k = model.context_frames
    lines = []
    for i in range(min(rows, len(t))):
        ctx = [np.array(frames[max(t[i] - j, 0)]) for j in reversed(range(k))]
        target, pred = np.array(frames[t[i] + 1]), pred_classes[i]
        rgb = [model.palette.to_rgb(torch.from_numpy(x)).numpy() for x in (*ctx, target, pred)]
        diff = np.abs(rgb[-1].astype(int) - rgb[-2].astype(int)).clip(0, 255).astype(np.uint8)
        rgb.append(np.where(diff.max(-1, keepdims=True) > 0, 255, 0).astype(np.uint8).repeat(3, -1))
        lines.append(np.concatenate([np.pad(x, ((2, 2), (2, 2), (0, 0)), constant_values=80) for x in rgb], 1))
    sheet = np.concatenate(lines, 0)
    header = np.zeros((18, sheet.shape[1], 3), np.uint8)
    labels = [f"past {j - k + 1}" for j in range(k)] + ["target", "prediction", "difference"]
    for j, label in enumerate(labels):
        cv2.putText(header, label, (j * 164 + 4, 13), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (255, 255, 255), 1)
    cv2.imwrite(str(path), cv2.cvtColor(np.concatenate([header, sheet], 0), cv2.COLOR_RGB2BGR))


def _usage_png(hist: np.ndarray, path: Path) -> None:
    """Codebook usage per real action (rows) and code (columns), as a labelled heat map."""
    actions, codes = hist.shape
    cell_w, cell_h, left, top = max(24, min(60, 900 // codes)), 28, 60, 20
    img = np.full((top + cell_h * (actions + 1), left + cell_w * codes, 3), 255, np.uint8)
    share = hist / np.maximum(hist.sum(1, keepdims=True), 1)
    for a in range(actions):
        cv2.putText(img, ACTION_NAMES[a] if a < len(ACTION_NAMES) else str(a), (4, top + a * cell_h + 19),
                    cv2.FONT_HERSHEY_SIMPLEX, 0.4, (0, 0, 0), 1)
        for c in range(codes):
            shade = int(255 * (1 - share[a, c]))
            x, y = left + c * cell_w, top + a * cell_h
            cv2.rectangle(img, (x, y), (x + cell_w - 2, y + cell_h - 2), (shade, shade, 255), -1)
    total = hist.sum(0) / max(hist.sum(), 1)
    for c in range(codes):
        x, y = left + c * cell_w, top + actions * cell_h
        height = int((cell_h - 4) * total[c] / max(total.max(), 1e-9))
        cv2.rectangle(img, (x, y + cell_h - 2 - height), (x + cell_w - 2, y + cell_h - 2), (200, 120, 40), -1)
        if codes <= 32:
            cv2.putText(img, str(c), (x + 2, 14), cv2.FONT_HERSHEY_SIMPLEX, 0.35, (0, 0, 0), 1)
    cv2.putText(img, "all", (4, top + actions * cell_h + 19), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (0, 0, 0), 1)
    cv2.imwrite(str(path), cv2.cvtColor(img, cv2.COLOR_RGB2BGR))


def evaluate_world_model(model, cache: FrameCache, out_dir: str | Path, episodes: int = 8,
                         rollout_steps: int = 50, seed: int = 0, device: str | torch.device | None = None,
                         max_transitions: int = 150, max_rollouts: int = 4) -> dict:
    """All held-out measures of one model; also writes the PNG sheets and the rollout GIF.

    Up to `episodes` test episodes of each skill level are used; per episode at most `max_transitions`
    evenly spaced one-step transitions and `max_rollouts` rollouts (starts at least 25 frames apart) are
    scored, so long expert games do not dominate the time. `by_level` repeats the PSNR measures per level.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    device = device or model.vq.codebook.device
    test = cache.split("test") or cache.split("val")
    split = "test" if cache.split("test") else "val"
    levels = sorted({episode.level for episode in test})
    test = [episode for level in levels for episode in [e for e in test if e.level == level][:episodes]]
    level_psnr = {level: {"one_step": [], "by_step": [[] for _ in range(rollout_steps)]} for level in levels}
    k = model.context_frames
    generator = torch.Generator().manual_seed(seed)
    one_psnr, one_ssim, copy_psnr, copy_ssim, all_codes, all_actions = [], [], [], [], [], []
    by_step = [[] for _ in range(rollout_steps)]
    delta_inferred, delta_random = [], []

    def to_rgb(classes: np.ndarray) -> np.ndarray:
        # np.array copies: the cache is a read-only memmap, which torch cannot wrap.
        return model.palette.to_rgb(torch.from_numpy(np.array(classes))).numpy()

    for n, episode in enumerate(test):
        frames = np.asarray(cache.episode_frames(episode))
        t = np.unique(np.linspace(0, episode.num_frames - 2, min(max_transitions, episode.num_frames - 1)).astype(int))
        codes, preds = _one_step(model, frames, t, device)
        target_rgb, pred_rgb, last_rgb = to_rgb(frames[t + 1]), to_rgb(preds), to_rgb(frames[t])
        one_psnr.append(psnr(pred_rgb, target_rgb))
        level_psnr[episode.level]["one_step"].append(one_psnr[-1])
        one_ssim.append(ssim(pred_rgb, target_rgb))
        copy_psnr.append(psnr(last_rgb, target_rgb))
        copy_ssim.append(ssim(last_rgb, target_rgb))
        all_codes.append(codes[:, 0])
        all_actions.append(np.asarray(episode.actions)[t])
        if n == 0:
            busiest = np.sort(np.argsort(-(frames[t + 1] != frames[t]).sum((1, 2)))[:4])
            _sheet(model, frames, t[busiest], preds[busiest], out_dir / "samples.png")
        # rollouts: start every 25 frames where the episode is long enough (at least 4 steps)
        horizon = min(rollout_steps, episode.num_frames - 1 - (k - 1))
        if horizon >= 4:
            last_start = episode.num_frames - 1 - horizon
            starts = np.unique(np.linspace(k - 1, last_start, min(max_rollouts, (last_start - k + 1) // 25 + 1)).astype(int))
            gen = rollout(model, frames, starts, horizon, device, "inferred")
            for s in range(horizon):
                by_step[s].extend(psnr(to_rgb(gen[:, s]), to_rgb(frames[starts + s + 1])).tolist())
                level_psnr[episode.level]["by_step"][s].extend(by_step[s][-len(starts):])
            rnd = rollout(model, frames, starts, 4, device, "random", generator)
            delta_inferred.extend(psnr(to_rgb(gen[:, 3]), to_rgb(frames[starts + 4])).tolist())
            delta_random.extend(psnr(to_rgb(rnd[:, 3]), to_rgb(frames[starts + 4])).tolist())
            if n == 0:
                real = to_rgb(frames[starts[0] + 1:starts[0] + 1 + horizon])
                fake = to_rgb(gen[0])
                gif = [np.concatenate([r, np.full((210, 4, 3), 255, np.uint8), f], 1) for r, f in zip(real, fake)]
                imageio.mimsave(out_dir / "rollout.gif", gif, duration=1 / 15, loop=0)
    codes_np, actions_np = np.concatenate(all_codes), np.concatenate(all_actions)
    usage = np.bincount(codes_np, minlength=model.num_codes)
    table = action_code_table(actions_np, codes_np, model.num_codes)
    _usage_png(np.asarray(table["histogram"]), out_dir / "codebook_usage.png")
    cat = np.concatenate
    return {
        "split": split, "episodes": len(test), "transitions": int(len(codes_np)),
        "one_step": {"psnr": float(cat(one_psnr).mean()), "ssim": float(cat(one_ssim).mean()),
                     "copy_last_psnr": float(cat(copy_psnr).mean()), "copy_last_ssim": float(cat(copy_ssim).mean()),
                     "note": "PSNR capped at 60 dB for identical frames"},
        "delta_psnr": float(np.mean(delta_inferred) - np.mean(delta_random)) if delta_inferred else float("nan"),
        "rollout_psnr_inferred_step4": float(np.mean(delta_inferred)) if delta_inferred else float("nan"),
        "rollout_psnr_random_step4": float(np.mean(delta_random)) if delta_random else float("nan"),
        "psnr_by_step": [float(np.mean(v)) if v else None for v in by_step],
        "rollouts_per_step": [len(v) for v in by_step],
        "codes": {"usage": usage.tolist(), "codes_used": int((usage > 0).sum()), "perplexity": perplexity(usage),
                  "per_action_histogram": table["histogram"], "action_purity": table["purity"],
                  "action_separation": table["separation"],
                  "note": "codes of position 0; real actions are used here for monitoring only"},
        "by_level": {f"skill_level_{level}": {
            "episodes": sum(e.level == level for e in test),
            "one_step_psnr": float(cat(level_psnr[level]["one_step"]).mean()),
            "psnr_at_steps_1_10_30": [float(np.mean(level_psnr[level]["by_step"][s - 1]))
                                      if level_psnr[level]["by_step"][s - 1] else None
                                      for s in (1, 10, 30) if s <= rollout_steps]} for level in levels},
        "files": ["samples.png", "codebook_usage.png", "rollout.gif"],
    }
