"""Temporal Coherence Loss (docs/algorithm.md, "Stage I: semantic expert"): match frame-to-frame changes of the
prediction and the target."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

TIME_AXIS = 2  # latents are (B, C, F, H, W)


def frame_differences(x: Tensor, stride: int) -> Tensor:
    """``x[:, :, t + stride] - x[:, :, t]`` for t = 0 .. F - stride - 1: (B, C, F - stride, H, W)."""
    return x[:, :, stride:] - x[:, :, :-stride]


def temporal_coherence_loss(x_hat: Tensor, x_tilde: Tensor, stride: int) -> Tensor | None:
    """``MSE(D(x_hat), D(x_tilde))`` with D the stride-``stride`` latent-frame difference; None if F <= stride."""
    if x_hat.shape[TIME_AXIS] <= stride:
        return None
    return F.mse_loss(frame_differences(x_hat.float(), stride), frame_differences(x_tilde.float(), stride))
