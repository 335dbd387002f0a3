"""Stage 3's training machinery: transition sampling, the losses, validation and the training loop.

03_train_latent_action.py parses the flags, builds or restores the model and calls `train`; tests and
bench/ import the pieces from here.
"""
from __future__ import annotations

import csv
import math
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from common.distributed import (Ranks, StopRequest, broadcast_buffers, gather_rows, max_across_ranks,
                                sum_across_ranks, world_size)
from common.detectors import BRICK_H, BRICK_ROWS, BRICK_TOP, PADDLE_ROWS
from common.errors import UserError
from common.frame_cache import FrameCache
from common.io import save_checkpoint
from common.latent_action import CHECKPOINT_KIND, LatentActionModel, fold_cells, past_frame_rows
from common.latent_action_eval import action_code_table
from common.metrics import perplexity

SERVE_ZONE = (BRICK_TOP + BRICK_ROWS * BRICK_H, PADDLE_ROWS.start)   # original rows 93-188

LOG_FIELDS = ["step", "minutes", "samples_per_s", "lr", "recon", "vq", "perplexity", "codes_used", "restarts",
              "train_code_purity", "train_code_separation", "event_rate", "prior_kl", "event_perplexity", "event_info",
              "val_recon", "val_changed_acc", "val_code_purity", "val_code_separation", "val_event_rate",
              "val_prior_kl"]


# The least information (nats) a batch's event classes must carry about its transitions. A healthy event
# latent carries about 1 nat (its posterior splits the transitions a few ways); one that had collapsed onto
# a single class carried almost none, never recovered, and its decoder learned to serve by itself (FINDINGS.md).
EVENT_INFO_FLOOR = math.log(2)


@dataclass
class LossSettings:
    """How the reconstruction and the event latent are weighted (loss_terms)."""
    motion_weight: float = 20.0
    keep_static: float = 0.1
    event_kl_weight: float = 1.0
    event_free_nats: float = 0.1
    appear_weight: float = 0.0
    serve_weight: float = 0.0
    event_info_floor: float = EVENT_INFO_FLOOR


@dataclass
class TrainingState:
    """What a run carries between updates and what latest.pt restores."""
    step: int = 0
    elapsed_before: float = 0.0   # seconds trained by earlier runs of the same model (--resume)
    best_val: float = math.inf


@dataclass
class LoopSettings:
    """When the loop stops, validates, restarts codes and gives up on a collapsed codebook."""
    batch_size: int
    lr: float
    time_budget_min: float
    max_steps: int
    eval_every_s: float
    vq_warmup: int
    restart_every: int
    dead_code_threshold: float
    collapse_check_after: int
    bf16: bool = False   # matmuls and convolutions in bfloat16 under autocast; weights and optimizer stay float32


class TransitionSampler:
    """Random (k past frames, next frame) pairs from one split; never crosses an episode boundary.

    Early transitions repeat frame 0 as their missing past, as the downstream stages do.
    Under torchrun every rank draws the same global batch from the same seed and keeps its own share
    of the rows, so N processes see the transitions that one process would.
    """

    def __init__(self, cache: FrameCache, split: str, k: int, seed: int, ranks: Ranks = Ranks()):
        episodes = cache.split(split)
        if not episodes:
            raise UserError(f"the data set has no '{split}' episodes: record more episodes with 02_record_videos.py")
        self.frames, self.k = cache.frames, k
        self.start = np.concatenate([np.full(e.num_frames - 1, e.start) for e in episodes])
        self.t = np.concatenate([np.arange(e.num_frames - 1) for e in episodes])
        self.action = np.concatenate([np.asarray(e.actions, dtype=np.int64) for e in episodes])
        self.rng = np.random.default_rng(seed)
        self.ranks = ranks

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
        """This rank's share of a global batch of `batch_size` random transitions."""
        rows = self.rng.integers(len(self), size=batch_size)
        share = batch_size // self.ranks.world_size
        return self.batch(rows[self.ranks.rank * share:(self.ranks.rank + 1) * share], extra)


def moved_cells(past_cells: torch.Tensor) -> torch.Tensor:
    """(B, h, w) bool: cells where a pixel changed between the past frames, from fold_cells' (B, h, w, k, p*p)."""
    return (past_cells[..., :-1, :] != past_cells[..., -1:, :]).flatten(-2).any(-1)


def motion_cells(model: LatentActionModel, moved: torch.Tensor, reach_px: int = 8) -> torch.Tensor:
    """(B, h, w) bool: cells within `reach_px` of a pixel that changed between the past frames, from
    moved_cells' (B, h, w).

    The ball and the paddle are found there, and that is where the next frame is hard to predict.
    The mask depends on the inputs only, never on the target frame.
    """
    reach = -(-reach_px // model.patch)
    return F.max_pool2d(moved[:, None].float(), 2 * reach + 1, stride=1, padding=reach)[:, 0] > 0


def waiting_cells(model: LatentActionModel, moved: torch.Tensor) -> torch.Tensor:
    """(B, h, w) bool: the serve rows' cells (serve_zone) of the transitions whose past frames show no
    motion there (moved_cells' (B, h, w)): no ball in play below the bricks, so the next frame may serve one.

    Like motion_cells it reads the inputs only, so a weight on these cells makes the decoder learn the
    serve sooner without drawing a ball more often than the data shows one (a weight on the cells where
    the ball did appear would: it rewards drawing a ball wherever one might come)."""
    zone = serve_zone(model, moved.shape[1], moved.device)                        # (h, 1)
    waiting = ~(moved & zone).flatten(1).any(1)                                   # (B,)
    return zone[None].expand(len(moved), -1, moved.shape[2]) & waiting[:, None, None]


def serve_zone(model: LatentActionModel, cell_rows: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """(cell_rows, 1) bool: the cell rows between the lowest bricks and the paddle, where a served ball
    appears; the appear weight stays out of the digits and the bricks."""
    top = model.pad_h // 2
    rows = torch.arange(cell_rows, device=device) * model.patch - top   # each cell row's first original row
    return ((rows >= SERVE_ZONE[0]) & (rows + model.patch <= SERVE_ZONE[1]))[:, None]


def event_information(q: torch.Tensor) -> torch.Tensor:
    """(B, E) posterior probabilities -> the mutual information (nats) between the batch's transitions and
    their event classes: the entropy of the classes' average use less the mean entropy of each posterior.
    It is 0 both when every transition gets the same class and when every posterior is uniform."""
    usage = q.mean(0)
    return -(usage * usage.log()).sum() + (q * q.log()).sum(-1).mean()


def event_terms(model: LatentActionModel, past: torch.Tensor, quantized: torch.Tensor):
    """The random event latent in training: (decoder conditioning, rate KL(q || sg p), prior KL(sg q || p),
    posterior classes drawn, posterior probabilities q).

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
    return conditioning, rate, prior_kl, drawn, q


def loss_terms(model: LatentActionModel, past: torch.Tensor, nxt: torch.Tensor, motion_weight: float,
               keep_static: float = 1.0, event_kl_weight: float = 1.0, free_nats: float = 0.1,
               appear_weight: float = 0.0, across_ranks: bool = False, serve_weight: float = 0.0,
               info_floor: float = 0.0):
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
    Where the batch's event classes carry less than `info_floor` nats about its transitions
    (event_information), the shortfall is added to the loss in nats, unscaled, so that it outweighs the
    reconstruction and the posterior spreads at once rather than collapse onto one class; above the
    floor it costs nothing. Under torchrun each rank measures its own share of the batch.
    Under torchrun (`across_ranks`) the weight total is the mean over the ranks' shares of the batch, so
    the gradient that DistributedDataParallel averages is the one of the whole batch.
    Returns (recon, vq + event loss, codes, (logits, target, last, weight), event stats).
    """
    quantized, codes, vq_loss = model.encode_indices(past, nxt)
    conditioning, stats = quantized, {}
    if model.event_classes:
        conditioning, rate, prior_kl, drawn, q = event_terms(model, past, quantized)
    past_cells = fold_cells(model.pad(past), model.patch)            # (B, h, w, k, patch*patch) uint8
    features = model.decode_cell_features(past_cells, conditioning)
    target = model.fold_pixels(model.pad(nxt[:, None])[:, 0])        # uint8; the padding is class P
    last = past_cells[..., -1, :]
    moved = moved_cells(past_cells)
    near = motion_cells(model, moved)
    changed = (target != last).any(-1)
    certain = near | changed
    appeared = changed & ~near & serve_zone(model, near.shape[1], near.device)
    extra = motion_weight * near.float() + appear_weight * appeared.float()
    if serve_weight:
        waiting = waiting_cells(model, moved)
        certain = certain | waiting
        extra = extra + serve_weight * waiting.float()
    keep = certain | (torch.rand(certain.shape, device=certain.device) < keep_static)
    cell_weight = (torch.where(certain, 1.0, 1.0 / keep_static) * (1.0 + extra))[keep]
    target, last = target[keep], last[keep]   # only the scored cells become int64 (saves copies on CPU)
    logits = model.cell_logits(features[keep], last)
    target, last = model.target_classes(target), model.target_classes(last)
    weight = (target >= 0).float() * cell_weight[:, None]
    ce = F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), target.reshape(-1), reduction="none",
                         ignore_index=-100)
    weight_total = weight.sum().detach()
    if across_ranks:
        weight_total = sum_across_ranks(weight_total.clone()) / world_size()
    recon = (ce * weight.reshape(-1)).sum() / weight_total
    latent_loss = vq_loss
    if model.event_classes:
        pixels_per_frame = weight_total / len(past)
        information = event_information(q)
        latent_loss = (vq_loss + event_kl_weight * rate.clamp(min=free_nats).mean() / pixels_per_frame
                       + prior_kl.mean() + (info_floor - information).clamp(min=0))
        stats = {"event_rate": rate.mean().item(), "prior_kl": prior_kl.mean().item(), "drawn": drawn,
                 "event_info": information.item()}
    return recon, latent_loss, codes, (logits, target, last, weight), stats


@torch.no_grad()
def validate(model: LatentActionModel, sampler: TransitionSampler, batches: list[np.ndarray], device,
             loss: LossSettings) -> dict:
    """Mean losses, changed-pixel accuracy and code/action read-outs on fixed validation batches."""
    model.eval()
    totals, counts = {"recon": 0.0, "changed_acc": 0.0, "event_rate": 0.0, "prior_kl": 0.0}, 0
    codes_all, actions_all = [], []
    for rows in batches:
        past, nxt, actions = sampler.batch(rows)
        past, nxt = past.to(device), nxt.to(device)
        recon, _, codes, (logits, target, last, _), stats = loss_terms(model, past, nxt, loss.motion_weight, 1.0,
                                                                        loss.event_kl_weight, loss.event_free_nats,
                                                                        loss.appear_weight, False,
                                                                        loss.serve_weight, loss.event_info_floor)
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


def save_training_state(path: Path, model: LatentActionModel, optimizer: torch.optim.Optimizer, flags: dict,
                        state: TrainingState, elapsed: float, fingerprint: str, rng: np.random.Generator,
                        torch_rngs: list[torch.Tensor], world_size: int = 1) -> None:
    """best.pt / latest.pt: the model, its config, and everything --resume needs (each rank's torch
    random state; the number of processes that trained it)."""
    save_checkpoint(path, CHECKPOINT_KIND, model=model.state_dict(), config=model.config,
                    optimizer=optimizer.state_dict(), step=state.step, elapsed=elapsed, best_val=state.best_val,
                    data_fingerprint=fingerprint, args=flags, torch_rng=torch_rngs, world_size=world_size,
                    numpy_rng=rng.bit_generator.state)


class TrainingMonitor:
    """The per-window statistics of the loop: one CSV row, TensorBoard scalars and a printed line every 20 s."""

    def __init__(self, log_dir: Path, num_codes: int, event_classes: int, append: bool):
        log_dir.mkdir(parents=True, exist_ok=True)
        self.csv_file = open(log_dir / "train_log.csv", "a" if append else "w", newline="")
        self.writer = csv.writer(self.csv_file)
        if not append:
            self.writer.writerow(LOG_FIELDS)
        from torch.utils.tensorboard import SummaryWriter

        self.tb = SummaryWriter(str(log_dir / "tb"))
        self.num_codes, self.event_classes = num_codes, event_classes
        self.reset_window()

    def reset_window(self) -> None:
        self.codes, self.actions, self.events = [], [], []
        self.sums = {"recon": 0.0, "vq": 0.0, "event_rate": 0.0, "prior_kl": 0.0, "event_info": 0.0}
        self.updates, self.samples, self.since = 0, 0, time.time()

    def add(self, recon: float, vq: float, stats: dict, codes: torch.Tensor, actions: np.ndarray) -> None:
        self.sums["recon"] += recon
        self.sums["vq"] += vq
        self.sums["event_rate"] += stats.get("event_rate", 0.0)
        self.sums["prior_kl"] += stats.get("prior_kl", 0.0)
        self.sums["event_info"] += stats.get("event_info", 0.0)
        self.updates += 1
        self.samples += len(actions) * world_size()   # the global batch under torchrun
        self.codes.append(codes[:, 0].cpu().numpy())
        if stats:
            self.events.append(stats["drawn"].cpu().numpy())
        self.actions.append(actions)

    def row(self, step: int, minutes: float, lr: float, restarts: int) -> tuple[dict, dict]:
        """The window's training row and its code/action table."""
        codes, actions = np.concatenate(self.codes), np.concatenate(self.actions)
        table = action_code_table(actions, codes, self.num_codes)
        usage = np.bincount(codes, minlength=self.num_codes) / len(codes)
        events = np.concatenate(self.events) if self.events else None
        n = self.updates
        row = {"step": step, "minutes": minutes, "samples_per_s": self.samples / max(time.time() - self.since, 1e-9),
               "lr": lr, "recon": self.sums["recon"] / n, "vq": self.sums["vq"] / n, "perplexity": perplexity(usage),
               "codes_used": int((usage > 0).sum()), "restarts": restarts, "train_code_purity": table["purity"],
               "train_code_separation": table["separation"], "event_rate": self.sums["event_rate"] / n,
               "prior_kl": self.sums["prior_kl"] / n,
               "event_perplexity": perplexity(np.bincount(events, minlength=self.event_classes) / len(events))
               if events is not None else 0.0, "event_info": self.sums["event_info"] / n}
        return row, table

    def write(self, row: dict, val_row: dict, table: dict, bar: tqdm) -> None:
        self.writer.writerow([row[k] for k in row] + [val_row.get(k, "") for k in
                                                     ("recon", "changed_acc", "code_purity", "code_separation",
                                                      "event_rate", "prior_kl")])
        self.csv_file.flush()
        for key, value in {**row, **{f"val_{k}": v for k, v in val_row.items()}}.items():
            if key != "step":
                self.tb.add_scalar(f"latent/{key}", value, row["step"])
        bar.set_postfix(recon=f"{row['recon']:.3f}", ppl=f"{row['perplexity']:.2f}",
                        sep=f"{table['separation']:.2f}", sps=f"{row['samples_per_s']:.0f}")
        tqdm.write(f"step {row['step']}: recon {row['recon']:.4f} perplexity {row['perplexity']:.2f} event rate "
                   f"{row['event_rate']:.2f} nats, prior KL {row['prior_kl']:.2f}, event perplexity "
                   f"{row['event_perplexity']:.1f}, information {row['event_info']:.2f} nats; codes per action "
                   f"{table['histogram_text']}"
                   + (f" | val recon {val_row['recon']:.4f} changed-pixel acc {val_row['changed_acc']:.3f}"
                      if val_row else ""))
        self.reset_window()

    def close(self) -> None:
        self.csv_file.close()
        self.tb.close()


def cosine_lr(base_lr: float, progress: float) -> float:
    """Cosine decay from base_lr to 5% of it over the run's progress (0..1)."""
    return base_lr * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * progress)))


class LossModule(nn.Module):
    """loss_terms as a module's forward, the form DistributedDataParallel wraps to all-reduce gradients."""

    def __init__(self, model: LatentActionModel, loss: LossSettings, across_ranks: bool):
        super().__init__()
        self.model, self.loss, self.across_ranks = model, loss, across_ranks

    def forward(self, past: torch.Tensor, nxt: torch.Tensor):
        loss = self.loss
        return loss_terms(self.model, past, nxt, loss.motion_weight, loss.keep_static, loss.event_kl_weight,
                          loss.event_free_nats, loss.appear_weight, self.across_ranks,
                          loss.serve_weight, loss.event_info_floor)


def use_bf16(precision: str, device: torch.device) -> bool:
    """Whether to train under bfloat16 autocast. auto: on CUDA only. On a CPU with native bfloat16
    (AVX-512 BF16 or AMX) `bf16` makes 1.6-1.8x the updates per minute, but the one pipeline run with
    it drew the paddle worse in rollouts than float32 did on the same data (FINDINGS.md)."""
    if precision != "auto":
        return precision == "bf16"
    return device.type == "cuda"


def train(model: LatentActionModel, optimizer: torch.optim.Optimizer, sampler: TransitionSampler,
          val: TransitionSampler, val_batches: list[np.ndarray], state: TrainingState, loop: LoopSettings,
          loss: LossSettings, device: torch.device, monitor: TrainingMonitor | None,
          save: Any, ranks: Ranks = Ranks()) -> str:
    """Train until the time budget or step cap (or Ctrl-C, or a collapsed codebook); returns why it stopped:
    "budget", "interrupted" or "collapse". `save(name, elapsed)` writes "best" or "latest".

    Under torchrun every rank runs this loop on its share of each batch; the ranks agree on the clock and
    on every stop before each update, so they all stop at the same one. Rank 0 alone (monitor given)
    validates and logs; it alone saves "best", while "latest" is saved by all ranks together.
    """
    budget_s = loop.time_budget_min * 60
    step_loss = LossModule(model, loss, ranks.distributed)
    if ranks.distributed:
        step_loss = DistributedDataParallel(step_loss, device_ids=[device.index] if device.type == "cuda" else None,
                                            broadcast_buffers=False)   # the codebook is kept equal by the VQ
    recent_z: deque[torch.Tensor] = deque(maxlen=max(10, 1024 // loop.batch_size))
    model.vq.bypass = state.step < loop.vq_warmup
    restarts_total, collapsed = 0, False
    start = time.time()
    last_eval = last_log = state.elapsed_before
    bar = tqdm(total=loop.max_steps if loop.max_steps < 10**8 else None, initial=state.step, desc="03 latent",
               unit="step", disable=monitor is None)
    try:
        with StopRequest() as stop:
            while True:
                elapsed, interrupted, collapse = max_across_ranks(
                    [state.elapsed_before + time.time() - start, float(stop.requested), float(collapsed)])
                if interrupted:
                    return "interrupted"
                if collapse:
                    return "collapse"
                progress = max(elapsed / budget_s, state.step / loop.max_steps)
                if progress >= 1:
                    return "budget"
                lr = cosine_lr(loop.lr, progress)
                for group in optimizer.param_groups:
                    group["lr"] = lr
                past, nxt, actions = sampler.sample(loop.batch_size)
                past, nxt = past.to(device), nxt.to(device)
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=loop.bf16):
                    recon, vq_loss, codes, _, stats = step_loss(past, nxt)
                optimizer.zero_grad(set_to_none=True)
                (recon + vq_loss).backward()
                optimizer.step()
                state.step += 1
                recent_z.append(model.last_z)
                if model.vq.bypass and state.step >= loop.vq_warmup:
                    warm_z = gather_rows(torch.cat(list(recent_z)))
                    model.vq.start_quantizing(warm_z)
                    broadcast_buffers(model.vq)
                    if monitor is not None:
                        tqdm.write(f"step {state.step}: warm-up over, codebook placed by k-means on {len(warm_z)} "
                                   f"encoder outputs; quantizing from now on")
                elif state.step % loop.restart_every == 0:
                    restarts_total += model.vq.restart_dead_codes(gather_rows(torch.cat(list(recent_z))),
                                                                  loop.dead_code_threshold)
                    broadcast_buffers(model.vq)
                bar.update(1)
                validate_now = elapsed - last_eval >= loop.eval_every_s
                if validate_now:
                    last_eval = elapsed
                    if monitor is not None:
                        val_row = validate(model, val, val_batches, device, loss)
                        if val_row["recon"] < state.best_val and not model.vq.bypass:
                            state.best_val = val_row["recon"]
                            save("best", elapsed)
                    save("latest", elapsed)
                if monitor is None:
                    continue
                monitor.add(recon.item(), vq_loss.item(), stats, codes, actions)
                if elapsed - last_log >= 20 or validate_now:
                    row, table = monitor.row(state.step, elapsed / 60, lr, restarts_total)
                    monitor.write(row, val_row if validate_now else {}, table, bar)
                    last_log = elapsed
                    collapsed = (state.step >= loop.collapse_check_after and model.code_positions == 1
                                 and row["perplexity"] < 1.3)
    except KeyboardInterrupt:   # a second Ctrl-C
        return "interrupted"
    finally:
        bar.close()
        state.elapsed_before += time.time() - start
