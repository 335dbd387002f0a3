"""The latent action model (Stage 3): a Genie-style latent action encoder plus a dynamics decoder.

Frames are palette images: Breakout draws with a handful of colours, so every frame is stored and
predicted as one colour class per pixel. The decoder outputs class logits at native 210x160 and a
prediction is the most likely class per pixel, which keeps generated frames crisp: blur cannot pile
up over a long rollout because every generated frame is again a valid palette image.

  encoder:  (k past frames, next frame; paddle's rows) -> one action code per transition (or a grid of
            codes over the whole screen, seeds' mode)
  event:    posterior (k past frames, next frame, screen above the paddle) -> one of E random-event classes
            prior     (k past frames, action code)                         -> a distribution over them
  decoder:  (k past frames, action code, event class)                      -> next frame

Both work at a low internal resolution without throwing pixels away: the one-hot frames are folded
into channels with space-to-depth (a patch convolution), and the decoder unfolds its output back to
native pixels with pixel_shuffle. The code is the only path from the next frame to the decoder, so a
small codebook forces it to carry what the past cannot predict: the player's choice.

Breakout also has events that neither the past frames nor the player decide: where a served ball
appears (one of three places), which way an uncertain bounce goes. A deterministic decoder averages
such outcomes, and the per-pixel argmax of an average draws no ball at all. The random event latent
commits to one outcome instead (DreamerV3's discrete stochastic latent): in training its class is
drawn from a posterior that sees the next frame, and a prior that sees only the past frames and the
action code learns to predict it; in play the class is drawn from the prior, and the decoder draws
that one outcome. The posterior sees the screen above the paddle only, so the paddle's motion, the
player's choice, cannot leak into it: that stays the action code's job. The action code's encoder
sees the other rows, from the paddle's down, so a brick breaking or a ball bouncing cannot leak into
the code either: the action->latent map (Stage 5) only has to read the player's choice from it.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from common.distributed import broadcast_buffers, sum_across_ranks
from common.errors import UserError
from common.paths import latent_checkpoint

FRAME_H, FRAME_W = 210, 160
EVENT_ROWS = 192   # rows of the padded 224-row frame the event posterior sees: original rows 0-184, above the paddle (189-192)
UNIMIX = 0.01      # share of a uniform distribution mixed into event probabilities (finite KL, DreamerV3)
STAGE = "03_train_latent_action.py"
CHECKPOINT_KIND = "latent_action"

# Breakout's 9 screen colours, most frequent first (measured on random play); a data set may bring its own.
BREAKOUT_PALETTE = [(0, 0, 0), (142, 142, 142), (200, 72, 72), (162, 162, 42), (180, 122, 48),
                    (198, 108, 58), (72, 160, 72), (66, 72, 200), (66, 158, 130)]

DEFAULT_CONFIG: dict[str, Any] = {
    "context_frames": 3,        # k real past frames the decoder sees (ball velocity, paddle inertia)
    "num_codes": 8,             # codebook size
    "code_dim": 16,             # codebook vector size
    "code_grid": None,          # None: one code per transition; [rows, cols]: a grid of codes (seeds: [7, 5])
    "event_classes": 16,        # classes of the random event latent (0: a deterministic decoder)
    "patch": 8,                 # space-to-depth factor of the first level (8: 1.4-2x the samples/s of 4, and better, part2.md)
    "widths": [64, 96, 128],    # channels at 1/8, 1/16, 1/32 of the padded 224x160 frame
    "encoder_width": 48,        # channels of the latent action encoder
    "skips": True,              # decoder sees the past frames at every level (False: only the bottleneck)
    "copy_bias": True,          # start from "next frame = last frame" (a logit bonus for its colours)
    "ema_decay": 0.9,           # codebook EMA decay
    "commitment": 0.25,         # VQ commitment weight
    "action_view": "paddle",    # what the action code's encoder sees: "paddle" (the rows from the paddle's
                                # down, below the event posterior's) or "screen" (all; earlier models)
    "event_norm": True,         # layer norm before the event heads' logits (False: earlier models, whose
                                # logits could run into the hundreds and stop learning)
    "palette": BREAKOUT_PALETTE,
}
# the seeds' model (03 --seeds-config): one past frame, a 7x5 grid of 256 codes of dim 128, no skips
SEEDS_CONFIG: dict[str, Any] = {"context_frames": 1, "code_grid": [7, 5], "num_codes": 256, "code_dim": 128,
                                "skips": False, "copy_bias": False, "event_classes": 0, "action_view": "screen"}


def past_frame_rows(t: np.ndarray, k: int) -> np.ndarray:
    """(len(t), k) frame indices seen before transitions t (frame t -> t+1), oldest first.

    Frames before the episode's first repeat frame 0: the one padding rule stages 3-6 share.
    """
    return np.maximum(np.asarray(t)[:, None] + np.arange(-k + 1, 1), 0)


def padded_size(size: int, multiple: int = 32) -> int:
    return -(-size // multiple) * multiple


class Palette:
    """RGB <-> colour-class conversion through a 2^24-entry lookup table (built on first use); a colour
    outside the palette maps to the nearest entry (and is remembered in the table)."""

    UNKNOWN = 255

    def __init__(self, colours: list[tuple[int, int, int]] | list[list[int]]):
        self.rgb = torch.tensor(colours, dtype=torch.uint8)                           # (P, 3)
        self.lut: torch.Tensor | None = None

    def __len__(self) -> int:
        return len(self.rgb)

    @staticmethod
    def _keys(rgb: torch.Tensor) -> torch.Tensor:
        rgb = rgb.to(torch.int32)
        return (rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]

    def to_index(self, rgb: torch.Tensor) -> torch.Tensor:
        """(..., 3) uint8 RGB -> (...) uint8 class index."""
        if self.lut is None:
            self.lut = torch.full((1 << 24,), self.UNKNOWN, dtype=torch.uint8)
            self.lut[self._keys(self.rgb).long()] = torch.arange(len(self.rgb), dtype=torch.uint8)
        keys = self._keys(rgb.cpu()).long()
        index = self.lut.index_select(0, keys.flatten()).view(keys.shape)
        unknown = index == self.UNKNOWN
        if bool(unknown.any()):
            odd = keys[unknown].unique()
            odd_rgb = torch.stack([odd >> 16, (odd >> 8) & 255, odd & 255], -1).float()
            self.lut[odd] = (odd_rgb[:, None] - self.rgb.float()[None]).square().sum(-1).argmin(-1).to(torch.uint8)
            index = self.lut.index_select(0, keys.flatten()).view(keys.shape)
        return index.to(rgb.device)

    def to_rgb(self, index: torch.Tensor) -> torch.Tensor:
        """(...) class index -> (..., 3) uint8 RGB."""
        return self.rgb.to(index.device)[index.long()]


class VectorQuantizer(nn.Module):
    """Codebook with EMA updates, straight-through gradient, commitment loss and dead-code restart.

    Vectors are compared on the unit sphere (cosine similarity): with a tiny codebook this keeps all
    codes within reach of the encoder. The codebook starts on encoder outputs spread by farthest-point
    sampling, and a code that went unused since the last check restarts on the encoder output that its
    nearest code explains worst, which is how a collapsed codebook splits again.
    """

    def __init__(self, num_codes: int, dim: int, decay: float = 0.9, commitment: float = 0.25):
        super().__init__()
        self.num_codes, self.dim, self.decay, self.commitment = num_codes, dim, decay, commitment
        self.register_buffer("codebook", F.normalize(torch.randn(num_codes, dim), dim=-1))
        self.register_buffer("ema_count", torch.full((num_codes,), 1.0 / num_codes))
        self.register_buffer("ema_sum", self.codebook.clone() / num_codes)
        self.register_buffer("counts", torch.zeros(num_codes))          # uses since the last restart check
        self.register_buffer("initialized", torch.tensor(False))
        self.bypass = False   # training warm-up: pass the continuous vectors through (see start_quantizing)

    @torch.no_grad()
    def _spread(self, z: torch.Tensor, n: int) -> torch.Tensor:
        """n rows of z picked by farthest-point sampling (cosine distance), for initial and restarted codes."""
        picked = [int(torch.randint(len(z), (1,)))]
        best = z @ z[picked[0]]
        for _ in range(n - 1):
            picked.append(int(best.argmin()))
            best = torch.maximum(best, z @ z[picked[-1]])
        return z[picked]

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """z (N, dim) -> (quantized with straight-through gradient, codes (N,), commitment loss)."""
        z = F.normalize(z.float(), dim=-1)
        if self.training and not bool(self.initialized) and len(z) >= self.num_codes:
            with torch.no_grad():
                self.codebook.copy_(self._spread(z.detach(), self.num_codes))
                self.ema_sum.copy_(self.codebook * self.ema_count[:, None])
                self.initialized.fill_(True)
                broadcast_buffers(self)   # several ranks (torchrun): all start from rank 0's codebook
        codes = (z @ self.codebook.t()).argmax(-1)
        if self.bypass:
            return z, codes, z.new_zeros(())
        quantized = self.codebook[codes]
        if self.training:
            with torch.no_grad():   # the EMA statistics of the whole batch, summed over the ranks under torchrun
                onehot = F.one_hot(codes, self.num_codes).float()
                batch_count, batch_sum = sum_across_ranks(onehot.sum(0)), sum_across_ranks(onehot.t() @ z.detach())
                self.ema_count.mul_(self.decay).add_(batch_count, alpha=1 - self.decay)
                self.ema_sum.mul_(self.decay).add_(batch_sum, alpha=1 - self.decay)
                self.codebook.copy_(F.normalize(self.ema_sum / self.ema_count.clamp(min=1e-5)[:, None], dim=-1))
                self.counts.add_(batch_count)
        loss = self.commitment * F.mse_loss(z, quantized.detach())
        quantized = z + (quantized - z).detach()
        return quantized, codes, loss

    @torch.no_grad()
    def start_quantizing(self, z: torch.Tensor, iterations: int = 20) -> None:
        """End the warm-up: place the codebook by spherical k-means on recent encoder outputs z.

        During the warm-up the decoder reads the encoder's continuous vector, so both learn what the
        latent should carry before it is squeezed into a few codes; quantizing from random codes
        instead leaves the decoder ignoring a meaningless code and the encoder without a signal.
        """
        z = F.normalize(z.float(), dim=-1)
        centres = self._spread(z, self.num_codes)
        for _ in range(iterations):
            assign = (z @ centres.t()).argmax(-1)
            sums = torch.zeros_like(centres).index_add_(0, assign, z)
            used = torch.bincount(assign, minlength=self.num_codes) > 0
            centres = torch.where(used[:, None], F.normalize(sums, dim=-1), centres)
        self.codebook.copy_(centres)
        counts = torch.bincount((z @ centres.t()).argmax(-1), minlength=self.num_codes).float() / len(z)
        self.ema_count.copy_(counts.clamp(min=1e-3))
        self.ema_sum.copy_(centres * self.ema_count[:, None])
        self.initialized.fill_(True)
        self.counts.zero_()
        self.bypass = False

    @torch.no_grad()
    def restart_dead_codes(self, z: torch.Tensor, threshold: float) -> int:
        """Codes used by fewer than `threshold` of the assignments since the last call move onto the
        encoder outputs (z, recent) that the current codebook fits worst. Returns how many restarted."""
        share = self.counts / self.counts.sum().clamp(min=1)
        dead = (share < threshold).nonzero().flatten()
        self.counts.zero_()
        if len(dead) == 0 or len(z) < len(dead):
            return 0
        z = F.normalize(z.float(), dim=-1)
        fit = (z @ self.codebook.t()).max(-1).values
        worst = z[fit.argsort()[:max(len(dead) * 4, len(dead))]]
        fresh = self._spread(worst, len(dead))
        self.codebook[dead] = fresh
        self.ema_sum[dead] = fresh * self.ema_count.mean()
        self.ema_count[dead] = self.ema_count.mean()
        return len(dead)


class Block(nn.Module):
    """Residual 3x3 conv block (no normalisation: it costs CPU time and is not needed here)."""

    def __init__(self, width: int):
        super().__init__()
        self.conv = nn.Conv2d(width, width, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + F.silu(self.conv(x))


def fold_cells(index: torch.Tensor, patch: int) -> torch.Tensor:
    """(B, T, H, W) uint8 classes -> (B, H/patch, W/patch, T, patch*patch) uint8, each cell's pixels row-major.

    The same values as pixel_unshuffle + permute, which is slow on uint8: with patch 4, 8 or 16 one row
    of a cell is 4, 8 or 16 adjacent bytes, so the rows are moved as one or two int32 / int64 words
    rather than byte by byte."""
    B, T, H, W = index.shape
    word, words = {4: (torch.int32, 1), 8: (torch.int64, 1), 16: (torch.int64, 2)}.get(patch, (None, 0))
    if word is None or not index.is_contiguous() or index.storage_offset() % patch:
        return F.pixel_unshuffle(index, patch).view(B, T, patch * patch, H // patch, W // patch).permute(0, 3, 4, 1, 2)
    rows = index.view(word).view(B, T, H // patch, patch, W // patch, words)
    return rows.permute(0, 2, 4, 1, 3, 5).contiguous().view(torch.uint8).view(B, H // patch, W // patch, T, patch * patch)


class PatchEmbedding(nn.Module):
    """Space-to-depth of T palette frames into one feature vector per patch x patch cell.

    Each pixel's colour class enters as its bits (a vertex of a small hypercube, so every colour is
    linearly separable from the others), mixed over all pixels of the cell by a weight stored as a
    stride-`patch` 1x1 convolution's, (width, bit, T, pixel). How the sum is taken is for speed on a CPU:
    - with gradients (training), one matrix product per bit plane, so that no copy stacks or
      rearranges the bits (the stacking copy was 7% of a training step in a profile);
    - without (play, evaluation), every pixel adds the weight column of its colour, one row of a small
      table (embedding_bag), about twice as fast as the products at batch 1 (its backward pass is
      slow, so training does not use it: FINDINGS.md).
    """

    def __init__(self, frames: int, patch: int, colours: int, width: int):
        super().__init__()
        self.patch, self.bits = patch, int(colours).bit_length()     # classes 0..colours (colours = padding)
        self.proj = nn.Conv2d(frames * patch * patch * self.bits, width, 1)
        values = torch.arange(2 ** self.bits)
        self.register_buffer("value_bits", torch.stack([(values >> b) & 1 for b in range(self.bits)]).float(),
                             persistent=False)                                   # (bits, 2^bits)
        self.register_buffer("table_offsets", torch.arange(frames * patch * patch) * 2 ** self.bits,
                             persistent=False)                                   # each (T, pixel)'s rows
        self._table, self._table_key = None, None     # colour_table(), and the weight it was built from

    def bit_plane(self, cells: torch.Tensor, bit: int, differences: bool = False) -> torch.Tensor:
        """(B, h, w, T, p*p) uint8 cells (fold_cells) -> (B*h*w, T*p*p) float: one bit of every pixel, or
        with differences=True (B*h*w, (T-1)*p*p): that bit of frame t+1 minus frame t (integer
        arithmetic, converted once: the same floats as subtracting float bits, at a quarter of the traffic)."""
        plane = (cells >> bit) & 1
        if differences:
            plane = plane[..., 1:, :].view(torch.int8) - plane[..., :-1, :].view(torch.int8)
        return plane.reshape(-1, plane.shape[-2] * plane.shape[-1]).to(self.proj.weight.dtype)

    def colour_table(self) -> torch.Tensor:
        """(T * p*p * 2^bits, width): the weight column each (frame, pixel, colour) adds. Kept until the
        weight changes (an optimizer step or a load bumps its version)."""
        key = (self.proj.weight.data_ptr(), self.proj.weight._version)
        if self._table_key != key:
            weight = self.proj.weight.detach().view(self.proj.out_channels, self.bits, -1)
            self._table = torch.einsum("obs,bv->svo", weight, self.value_bits).reshape(-1, self.proj.out_channels)
            self._table_key = key
        return self._table

    def forward(self, cells: torch.Tensor, differences: bool = False) -> torch.Tensor:
        """(B, h, w, T, p*p) uint8 cells (fold_cells) -> (B, width, h, w) features (channels-last memory).

        differences=True feeds the changes between consecutive frames (bits of frame t+1 minus frame t)
        instead of the frames: zero wherever nothing moves, so a small moving paddle stands out.
        """
        B, h, w = cells.shape[:3]
        width = self.proj.out_channels
        if differences or torch.is_grad_enabled():
            weight = self.proj.weight.view(width, self.bits, -1)                 # (width, bit, T * pixel)
            out = self.proj.bias
            for bit in range(self.bits):
                out = torch.addmm(out, self.bit_plane(cells, bit, differences), weight[:, bit].t())
        else:
            rows = self.table_offsets + cells.reshape(B * h * w, -1)
            out = F.embedding_bag(rows, self.colour_table(), mode="sum") + self.proj.bias
        return out.view(B, h, w, width).permute(0, 3, 1, 2)


def mean_and_max(h: torch.Tensor) -> torch.Tensor:
    """(B, C, h, w) -> (B, 2C): the mean keeps the overall motion, the max a small object such as the ball."""
    return torch.cat([h.mean((2, 3)), h.amax((2, 3))], 1)


def encoder_trunk(width: int, rows: int, max_rows: int) -> nn.Sequential:
    """The latent action encoder after its stem: a block, then stride-2 blocks until at most max_rows rows."""
    layers: list[nn.Module] = [nn.SiLU(), Block(width)]
    while rows > max_rows:
        layers += [nn.Conv2d(width, width, 3, stride=2, padding=1), nn.SiLU(), Block(width)]
        rows //= 2
    return nn.Sequential(*layers)


class LatentActionModel(nn.Module):
    """Encoder (past, next) -> code(s); decoder (past, code(s)) -> next frame. See module docstring."""

    def __init__(self, config: dict | None = None):
        super().__init__()
        self.config = {**DEFAULT_CONFIG, **(config or {})}
        c = self.config
        self.palette = Palette(c["palette"])
        self.num_colours = len(self.palette)
        self.context_frames = int(c["context_frames"])
        self.num_codes = int(c["num_codes"])
        self.grid = tuple(c["code_grid"]) if c["code_grid"] else None
        self.event_classes = int(c.get("event_classes", 0))
        if self.event_classes and self.grid:
            raise ValueError("the random event latent conditions the single action code; it does not combine "
                             "with code_grid (set event_classes to 0)")
        self.code_positions = self.grid[0] * self.grid[1] if self.grid else 1
        self.action_view = c["action_view"]
        if self.action_view not in ("paddle", "screen"):
            raise ValueError(f"action_view must be 'paddle' or 'screen', got {self.action_view!r}")
        if self.grid and self.action_view == "paddle":
            raise ValueError("a grid of codes covers the whole screen: set action_view to 'screen'")
        self.patch = int(c["patch"])
        self.pad_h, self.pad_w = padded_size(FRAME_H) - FRAME_H, padded_size(FRAME_W) - FRAME_W
        widths, P, k = list(c["widths"]), self.num_colours, self.context_frames
        levels = len(widths)
        if 32 % (self.patch * 2 ** (levels - 1)):
            raise ValueError(f"patch {self.patch} with {levels} levels of widths does not tile the 224x160 frame: "
                             f"patch x 2^(levels-1) must divide 32 (patch 8: at most 3 widths)")
        self.bottom_h = padded_size(FRAME_H) // (self.patch * 2 ** (levels - 1))
        self.bottom_w = padded_size(FRAME_W) // (self.patch * 2 ** (levels - 1))
        if self.grid and self.grid != (self.bottom_h, self.bottom_w):
            raise ValueError(f"code_grid {self.grid} must equal the decoder bottleneck "
                             f"{(self.bottom_h, self.bottom_w)} (patch {self.patch}, {levels} levels)")

        # Dynamics decoder: a U-Net over the k past frames; the code enters at every decoder level.
        self.stem = PatchEmbedding(k, self.patch, P, widths[0])
        self.down_blocks = nn.ModuleList(Block(w) for w in widths)
        self.downs = nn.ModuleList(nn.Conv2d(widths[i], widths[i + 1], 3, stride=2, padding=1)
                                   for i in range(levels - 1))
        self.ups = nn.ModuleList(nn.Conv2d(widths[i + 1], widths[i], 1) for i in range(levels - 1))
        self.up_blocks = nn.ModuleList(Block(w) for w in widths[:-1])
        code_in = c["code_dim"] * (1 if self.grid else 1 + bool(self.event_classes))  # action code, event side by side
        self.code_in = nn.ModuleList(nn.Linear(code_in, 2 * w) for w in widths)  # FiLM: scale, shift
        self.head = nn.Linear(widths[0], self.patch ** 2 * P)
        self.copy_weight = nn.Parameter(torch.tensor(4.0)) if c["copy_bias"] else None

        # Latent action encoder: (past, next) at 1/8, down to the code grid or pooled to one code.
        e = int(c["encoder_width"])
        enc_patch = self.patch * 2
        self.encoder_stem = PatchEmbedding(k, enc_patch, P, e)   # k differences of the k + 1 frames
        # "paddle": the rows the event posterior leaves out, so that the code can only say what the paddle
        # did and a brick breaking or a ball bouncing goes to the event latent (FINDINGS.md: the map 98.53% ->
        # 99.53% on one recording, 99.79% on another once the event heads were guarded against a collapse)
        self.action_first_row = EVENT_ROWS // enc_patch if self.action_view == "paddle" else 0
        self.encoder = encoder_trunk(e, padded_size(FRAME_H) // enc_patch - self.action_first_row,
                                     self.grid[0] if self.grid else 7)
        self.to_code = nn.Linear(2 * e if not self.grid else e, c["code_dim"])
        if self.event_classes:
            E, enc_rows = self.event_classes, padded_size(FRAME_H) // enc_patch
            # posterior: the same encoder over the screen above the paddle's rows, (past, next) differences
            self.event_stem = PatchEmbedding(k, enc_patch, P, e)
            self.event_encoder = encoder_trunk(e, EVENT_ROWS // enc_patch, 7)
            # layer norm in front of both heads' logits (DreamerV3 normalises every layer): without it the
            # unnormalised trunks' features grew to norms of several hundred within a few hundred updates and
            # the softmaxes saturated, so that the prior stopped learning (FINDINGS.md)
            norm = bool(c["event_norm"])
            self.event_features_norm = nn.LayerNorm(2 * e) if norm else nn.Identity()
            self.to_event_logits = nn.Linear(2 * e, E)
            self.event_embedding = nn.Linear(E, c["code_dim"], bias=False)   # one-hot in: straight-through
            # and a map over the bottleneck's grid: a ball served from nothing needs a place on the
            # screen, which a per-channel FiLM alone cannot give it
            self.event_to_map = nn.Linear(c["code_dim"], widths[-1] * self.bottom_h * self.bottom_w)
            # prior: the k past frames themselves (where the ball is, not only how it moves), kept on
            # their spatial grid so that it knows where on the screen things are, plus the action code
            self.prior_stem = PatchEmbedding(k, enc_patch, P, e)
            self.prior_encoder = encoder_trunk(e, enc_rows, 7)
            rows, cols = enc_rows, padded_size(FRAME_W) // enc_patch
            while rows > 7:   # the trunk's stride-2 steps (encoder_trunk)
                rows, cols = -(-rows // 2), -(-cols // 2)
            grid_cells = rows * cols
            self.prior_head = nn.Sequential(nn.Linear(e * grid_cells + c["code_dim"], 256),
                                            *([nn.LayerNorm(256)] if norm else []), nn.SiLU(), nn.Linear(256, E))
        self.vq = VectorQuantizer(self.num_codes, c["code_dim"], c["ema_decay"], c["commitment"])
        self.to(memory_format=torch.channels_last)  # what oneDNN convolutions run fastest on CPU

    # ----- frames in and out -------------------------------------------------------------------

    def pad(self, index: torch.Tensor) -> torch.Tensor:
        """(B, T, 210, 160) class indices -> (B, T, 224, 160), the border filled with the extra class P."""
        top = self.pad_h // 2
        return F.pad(index, (0, self.pad_w, top, self.pad_h - top), value=self.num_colours)

    def crop(self, x: torch.Tensor) -> torch.Tensor:
        top = self.pad_h // 2
        return x[..., top:top + FRAME_H, :FRAME_W]

    def to_index(self, frames: torch.Tensor) -> torch.Tensor:
        """uint8 RGB (..., 210, 160, 3) -> class indices (..., 210, 160)."""
        return self.palette.to_index(frames)

    # ----- encoder --------------------------------------------------------------------------------

    def encode_indices(self, past: torch.Tensor, nxt: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """past (B,k,H,W), nxt (B,H,W) indices -> (quantized (B, positions, dim), codes (B, positions), vq loss)."""
        cells = fold_cells(self.pad(torch.cat([past, nxt[:, None]], 1)), self.encoder_stem.patch)
        h = self.encoder(self.encoder_stem(cells[:, self.action_first_row:], differences=True))
        if self.grid:
            z = self.to_code(h.flatten(2).transpose(1, 2))                       # (B, positions, dim)
        else:
            z = self.to_code(mean_and_max(h))[:, None]
        B, N, D = z.shape
        self.last_z = z.detach().reshape(B * N, D)
        quantized, codes, loss = self.vq(z.reshape(B * N, D))
        self.last_cells = cells
        return quantized.view(B, N, D), codes.view(B, N), loss

    # ----- random event latent --------------------------------------------------------------------

    def event_posterior_logits(self, cells: torch.Tensor) -> torch.Tensor:
        """(B, h, w, k+1, cell) cells of (past, next) at the encoder's fold -> (B, E) posterior logits.

        Only the cell rows above the paddle: the player's choice shows at the paddle and stays out."""
        rows = EVENT_ROWS // self.event_stem.patch
        features = mean_and_max(self.event_encoder(self.event_stem(cells[:, :rows], differences=True)))
        return self.to_event_logits(self.event_features_norm(features))

    def event_prior_logits(self, past: torch.Tensor, action_vectors: torch.Tensor) -> torch.Tensor:
        """past (B, k, H, W) indices, action code vectors (B, 1, dim) -> (B, E) prior logits."""
        cells = fold_cells(self.pad(past), self.prior_stem.patch)
        h = self.prior_encoder(self.prior_stem(cells))
        return self.prior_head(torch.cat([h.flatten(1), action_vectors.flatten(1)], 1))

    def event_vectors(self, onehot: torch.Tensor) -> torch.Tensor:
        """(B, E) one-hot (or straight-through sample) -> (B, 1, dim), joined to the action code's vector."""
        return self.event_embedding(onehot)[:, None]

    def conditioning(self, action_vectors: torch.Tensor, events: torch.Tensor | None) -> torch.Tensor:
        """The decoder's conditioning: action code vectors, and the event class's vector when the model has one.

        events: (B,) int64 classes; None for a model without the event latent."""
        if not self.event_classes:
            return action_vectors
        if events is None:
            raise ValueError("this world model draws a random event each step: pass its class (events)")
        onehot = F.one_hot(events.long(), self.event_classes).to(self.event_embedding.weight.dtype)
        return torch.cat([action_vectors, self.event_vectors(onehot)], 1)

    @staticmethod
    def event_probs(logits: torch.Tensor) -> torch.Tensor:
        """Softmax with a 1% uniform mix, so a KL between two such distributions stays finite."""
        return (1 - UNIMIX) * logits.float().softmax(-1) + UNIMIX / logits.shape[-1]

    def sample_event(self, logits: torch.Tensor, temperature: float = 1.0,
                     generator: torch.Generator | None = None) -> torch.Tensor:
        """(B, E) logits -> (B,) classes drawn at `temperature` (0: the most likely class)."""
        if temperature == 0:
            return logits.argmax(-1)
        probs = self.event_probs(logits.float() / temperature)
        return torch.multinomial(probs.cpu(), 1, generator=generator)[:, 0].to(logits.device)

    # ----- decoder --------------------------------------------------------------------------------

    def decode_features(self, past: torch.Tensor, code_vectors: torch.Tensor) -> torch.Tensor:
        """past (B,k,H,W) indices, code vectors (B, positions, dim) -> cell features (B, h, w, C)."""
        return self.decode_cell_features(fold_cells(self.pad(past), self.patch), code_vectors)

    def decode_cell_features(self, cells: torch.Tensor, code_vectors: torch.Tensor) -> torch.Tensor:
        """decode_features() from the past frames' cells, (B, h, w, k, patch*patch) of fold_cells."""
        h = F.silu(self.stem(cells))
        skips = []
        for i, block in enumerate(self.down_blocks):
            h = block(h)
            if i < len(self.downs):
                skips.append(h if self.config["skips"] else None)
                h = F.silu(self.downs[i](h))
        if self.event_classes:
            h = h + self.event_to_map(code_vectors[:, 1]).view(h.shape)
        h = self.condition(h, code_vectors, len(self.code_in) - 1)
        for i in reversed(range(len(self.ups))):
            h = F.interpolate(self.ups[i](h), scale_factor=2.0, mode="nearest")
            if skips[i] is not None:
                h = h + skips[i]
            if not self.grid:
                h = self.condition(h, code_vectors, i)
            h = self.up_blocks[i](F.silu(h))
        return h.permute(0, 2, 3, 1)

    def condition(self, h: torch.Tensor, code_vectors: torch.Tensor, level: int) -> torch.Tensor:
        """FiLM: the code scales and shifts every channel (per grid cell in the seeds' grid mode).

        Multiplicative conditioning lets one code switch the paddle features between moving left,
        right or staying, which an additive bias alone learns much more slowly."""
        B = h.shape[0]
        if self.grid:
            film = self.code_in[level](code_vectors).transpose(1, 2).reshape(B, -1, *self.grid)
        else:
            film = self.code_in[level](code_vectors.flatten(1))[:, :, None, None]
        scale, shift = film.chunk(2, dim=1)
        return h * (1 + scale) + shift

    def cell_logits(self, features: torch.Tensor, last_cells: torch.Tensor) -> torch.Tensor:
        """Cell features (..., C) and the last frame's classes there (..., patch*patch) -> logits
        (..., patch*patch, P). Only the cells asked for are computed (training samples a subset)."""
        logits = self.head(features).unflatten(-1, (self.patch ** 2, self.num_colours))
        if self.copy_weight is not None:  # start from "nothing changes": a bonus for the last frame's colour
            last = last_cells.clamp(0, self.num_colours - 1).long()[..., None]
            logits = logits.scatter_add(-1, last, self.copy_weight.expand(last.shape).to(logits.dtype))
        return logits

    def decode_logits(self, past: torch.Tensor, code_vectors: torch.Tensor) -> torch.Tensor:
        """past (B,k,H,W) indices, code vectors -> logits of every cell (B, h, w, patch*patch, P).

        The logits stay space-to-depth folded (cell, pixel within the cell, colour) so that the loss
        and the argmax run over contiguous memory; unfold_pixels() turns classes into a frame.
        """
        return self.cell_logits(self.decode_features(past, code_vectors), self.fold_pixels(self.pad(past[:, -1:])[:, 0]))

    def fold_pixels(self, index: torch.Tensor) -> torch.Tensor:
        """(B, 224, 160) padded classes -> (B, h, w, patch*patch), the layout of decode_logits."""
        return fold_cells(index[:, None], self.patch)[:, :, :, 0]

    def unfold_pixels(self, cells: torch.Tensor) -> torch.Tensor:
        """(B, h, w, patch*patch) classes -> (B, 210, 160) classes (the inverse of fold_pixels + crop)."""
        B, h, w, _ = cells.shape
        word = {4: torch.int32, 8: torch.int64}.get(self.patch)
        if word is None:
            frame = F.pixel_shuffle(cells.permute(0, 3, 1, 2).contiguous(), self.patch)[:, 0]
        else:  # the inverse of fold_cells' word moves
            frame = cells.contiguous().view(word).permute(0, 1, 3, 2).contiguous().view(torch.uint8)
        return self.crop(frame.view(B, h * self.patch, w * self.patch))

    def folded_target(self, nxt: torch.Tensor, ignore: int = -100) -> torch.Tensor:
        """(B, 210, 160) classes -> (B, h, w, patch*patch) int64 targets, `ignore` in the padding."""
        return self.target_classes(self.fold_pixels(self.pad(nxt[:, None])[:, 0]), ignore)

    def target_classes(self, cells: torch.Tensor, ignore: int = -100) -> torch.Tensor:
        """Folded uint8 classes (any shape) -> int64 cross-entropy targets, `ignore` where padding."""
        target = cells.long()
        return target.masked_fill(target == self.num_colours, ignore)

    def code_vectors(self, codes: torch.Tensor) -> torch.Tensor:
        return self.vq.codebook[codes.long()]

    def forward(self, past: torch.Tensor, nxt: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Teacher-forced pass on class indices (the event class from the posterior's argmax):
        (folded logits, see decode_logits; codes (B, positions); vq loss)."""
        quantized, codes, vq_loss = self.encode_indices(past, nxt)
        return self.decode_logits(past, self.conditioning(quantized, self.inferred_events())), codes, vq_loss

    # ----- public uint8 API -------------------------------------------------------------------

    @torch.no_grad()
    def encode(self, past: torch.Tensor, nxt: torch.Tensor) -> torch.Tensor:
        """past (B,k,210,160,3) uint8, nxt (B,210,160,3) uint8 -> codes (B, code_positions) int64."""
        device = self.vq.codebook.device
        _, codes, _ = self.encode_indices(self.to_index(past.to(device)), self.to_index(nxt.to(device)))
        return codes.long()

    @torch.no_grad()
    def infer_latents(self, past: torch.Tensor, nxt: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """past (B,k,H,W), nxt (B,H,W) class indices -> (action codes (B, positions), the posterior's most
        likely event classes (B,) or None without the event latent): what the real next frame shows."""
        _, codes, _ = self.encode_indices(past, nxt)
        return codes, self.inferred_events()

    def inferred_events(self) -> torch.Tensor | None:
        """The posterior's most likely event classes (B,) for the transitions encode_indices() saw last,
        or None without the event latent."""
        return self.event_posterior_logits(self.last_cells).argmax(-1) if self.event_classes else None

    @torch.no_grad()
    def encode_event(self, past: torch.Tensor, nxt: torch.Tensor) -> torch.Tensor:
        """past (B,k,210,160,3) uint8, nxt (B,210,160,3) uint8 -> the posterior's event classes (B,) int64:
        the outcome the real next frame shows (teacher forcing)."""
        if not self.event_classes:
            raise ValueError("this world model has no random event latent")
        device = self.vq.codebook.device
        return self.infer_latents(self.to_index(past.to(device)), self.to_index(nxt.to(device)))[1]

    @torch.no_grad()
    def event_prior(self, past: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
        """past (B,k,H,W) class indices, action codes (B, 1) -> the prior's event logits (B, E)."""
        return self.event_prior_logits(past, self.code_vectors(codes))

    @torch.no_grad()
    def predict_indices(self, past: torch.Tensor, codes: torch.Tensor, events: torch.Tensor | None = None) -> torch.Tensor:
        """past (B,k,H,W) class indices, codes (B, positions), event classes (B,) -> next frame class
        indices (B,H,W) uint8. Without events a model with the event latent takes the prior's most likely class."""
        return self.predict_with_logits(past, codes, events)[0]

    @torch.no_grad()
    def predict_with_logits(self, past: torch.Tensor, codes: torch.Tensor, events: torch.Tensor | None = None,
                            ) -> tuple[torch.Tensor, torch.Tensor]:
        """predict_indices(), and the colour logits behind it, copy bias included, for colour_probability().

        The logits come colour-major, (B, h, w, P, patch*patch): the head's rows are reordered so that
        the maximum over the colours runs along a cell's contiguous pixels, several times faster on a CPU
        than over 9 adjacent colours. The class drawn is the last frame's where that is (one of) the most likely,
        else the argmax."""
        vectors = self.code_vectors(codes)
        if self.event_classes and events is None:
            events = self.event_prior_logits(past, vectors).argmax(-1)
        past_cells = fold_cells(self.pad(past), self.patch)
        features = self.decode_cell_features(past_cells, self.conditioning(vectors, events))
        P, pixels = self.num_colours, self.patch ** 2
        weight = self.head.weight.view(pixels, P, -1).transpose(0, 1).reshape(P * pixels, -1)
        bias = self.head.bias.view(pixels, P).t().reshape(-1)
        logits = F.linear(features, weight, bias).unflatten(-1, (P, pixels))
        if self.copy_weight is None:
            cells = logits.argmax(-2)
        else:  # the bonus for the last frame's colour, as in training; the last colour stays where it is
            # the most likely (most pixels), and only the other pixels look for their most likely colour
            last = past_cells[:, :, :, -1].clamp(max=P - 1).long()[..., None, :]
            logits.scatter_add_(-2, last, self.copy_weight.to(logits.dtype).expand(last.shape))
            cells = last[..., 0, :].clone()
            changed = (logits.gather(-2, last)[..., 0, :] < logits.amax(-2)).nonzero(as_tuple=True)
            cells[changed] = logits.transpose(-1, -2)[changed].argmax(-1)
        return self.unfold_pixels(cells.to(torch.uint8)), logits

    def colour_probability(self, logits: torch.Tensor, colour: int) -> torch.Tensor:
        """Logits of predict_with_logits -> one colour class's probability at every pixel (B, 210, 160) float:
        where the model thinks an object of that colour may be."""
        cells = logits.float().softmax(-2)[..., colour, :]                          # (B, h, w, patch*patch)
        return self.crop(F.pixel_shuffle(cells.permute(0, 3, 1, 2).contiguous(), self.patch)[:, 0])

    @torch.no_grad()
    def predict(self, past: torch.Tensor, codes: torch.Tensor, events: torch.Tensor | None = None) -> torch.Tensor:
        """past (B,k,210,160,3) uint8, codes (B, code_positions) int64, event classes (B,) or None (the
        prior's most likely) -> next frame (B,210,160,3) uint8."""
        device = self.vq.codebook.device
        index = self.predict_indices(self.to_index(past.to(device)), codes.to(device),
                                     None if events is None else events.to(device))
        return self.palette.to_rgb(index)


def load_latent_action_model(checkpoint_root: str | Path, device: str | torch.device = "cpu",
                             which: str = "best") -> LatentActionModel:
    """The trained model from checkpoints/latent_action/{best,latest}.pt, in eval mode."""
    from common.io import load_checkpoint

    if which not in ("best", "latest"):
        raise UserError(f"which must be 'best' or 'latest', got {which!r}")
    path = latent_checkpoint(checkpoint_root, which)
    payload = load_checkpoint(path, CHECKPOINT_KIND, STAGE)
    if isinstance(payload.get("config"), dict):
        if "event_classes" not in payload["config"]:
            raise UserError(f"{path} was trained by an earlier version, without the random event latent that "
                            f"serves the ball: re-run {STAGE}, then 04 and 05")
        # models from before action_view saw the whole screen; those from before event_norm had none
        payload["config"] = {"action_view": "screen", "event_norm": False, **payload["config"]}
    try:
        model = LatentActionModel(payload["config"])
        model.load_state_dict(payload["model"])
    except (KeyError, RuntimeError, ValueError, TypeError) as err:
        raise UserError(f"{path} does not match this code "
                        f"({type(err).__name__}): re-run {STAGE}") from None
    return model.to(device).eval()

