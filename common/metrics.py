"""Image quality measures for uint8 RGB frames (PSNR and SSIM, per frame, averaged by the caller), and the
perplexity of a codebook's usage."""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def _as_float(frames: np.ndarray | torch.Tensor) -> torch.Tensor:
    x = torch.as_tensor(np.asarray(frames) if not isinstance(frames, torch.Tensor) else frames)
    return x.float()


PSNR_CAP_DB = 60.0  # identical frames would be +inf; capping keeps means finite and comparable


def psnr(pred: np.ndarray | torch.Tensor, target: np.ndarray | torch.Tensor,
         max_psnr: float = PSNR_CAP_DB) -> np.ndarray:
    """Per-frame PSNR in dB of (..., H, W, 3) uint8 frames; identical frames score `max_psnr` (not inf)."""
    a, b = _as_float(pred), _as_float(target)
    mse = (a - b).square().flatten(-3).mean(-1)
    value = 10 * torch.log10(255.0 ** 2 / mse.clamp(min=1e-10))
    return value.clamp(max=max_psnr).numpy()


def _gaussian_filter(x: torch.Tensor, size: int = 11, sigma: float = 1.5) -> torch.Tensor:
    """Valid-mode 11x11 Gaussian blur of (N, 1, H, W), done as two 1-D passes (11x cheaper)."""
    t = torch.arange(size, dtype=torch.float32) - (size - 1) / 2
    g = torch.exp(-t.square() / (2 * sigma ** 2))
    g = g / g.sum()
    return F.conv2d(F.conv2d(x, g.view(1, 1, size, 1)), g.view(1, 1, 1, size))


def ssim(pred: np.ndarray | torch.Tensor, target: np.ndarray | torch.Tensor) -> np.ndarray:
    """Per-frame SSIM (Wang et al. 2004, 11x11 Gaussian window, averaged over RGB) of (..., H, W, 3) uint8."""
    a, b = _as_float(pred), _as_float(target)
    lead = a.shape[:-3]
    H, W = a.shape[-3:-1]
    a = a.reshape(-1, H, W, 3).permute(0, 3, 1, 2).reshape(-1, 1, H, W)
    b = b.reshape(-1, H, W, 3).permute(0, 3, 1, 2).reshape(-1, 1, H, W)
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    mu_a, mu_b = _gaussian_filter(a), _gaussian_filter(b)
    var_a = _gaussian_filter(a * a) - mu_a.square()
    var_b = _gaussian_filter(b * b) - mu_b.square()
    cov = _gaussian_filter(a * b) - mu_a * mu_b
    score = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a.square() + mu_b.square() + c1) * (var_a + var_b + c2))
    return score.flatten(1).mean(1).reshape(*lead, 3).mean(-1).numpy()


def perplexity(counts: np.ndarray) -> float:
    """exp(entropy) of a histogram of code uses: the number of equally used codes it is worth."""
    p = np.asarray(counts, dtype=np.float64)
    p = p[p > 0] / max(p.sum(), 1e-12)
    return float(np.exp(-(p * np.log(p)).sum()))
