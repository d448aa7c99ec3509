"""Adversarial parts of the detail expert's objective (spec §4.3, §4.6): re-noising, hinge losses, feature matching."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from dcm.sampling import append_dims


def renoise(x_end: Tensor, xi: Tensor, sigma_a: Tensor, sigma_e: Tensor) -> Tensor:
    """Re-noise a phase-end sample from ``sigma_e`` to ``sigma_a`` with the reference's linear coefficient.

    ``((1 - sigma_a) * x_end + (sigma_a - sigma_e) * xi) / (1 - sigma_e)`` (spec §4.3; FastVideo's formula, exact
    only when ``xi`` is the noise already inside ``x_end``). x_end, xi: (B, C, F, H, W); sigma_a, sigma_e: (B,).
    """
    n = x_end.ndim
    a, e = append_dims(sigma_a, n), append_dims(sigma_e, n)
    return ((1 - a) * x_end + (a - e) * xi) / (1 - e)


def generator_hinge(fake_logits: list[Tensor], factor: float) -> Tensor:
    """``factor * (1/H) * sum_h mean(relu(1 - D_h(fake)))`` (spec §4.6)."""
    return factor * torch.stack([F.relu(1 - logit).mean() for logit in fake_logits]).mean()


def discriminator_hinge(fake_logits: list[Tensor], real_logits: list[Tensor]) -> Tensor:
    """``(1/H) * sum_h [mean(relu(1 + D_h(fake))) + mean(relu(1 - D_h(real)))]`` (spec §4.6)."""
    terms = [F.relu(1 + f).mean() + F.relu(1 - r).mean() for f, r in zip(fake_logits, real_logits)]
    return torch.stack(terms).mean()


def feature_matching(fake_readouts: list[Tensor], real_readouts: list[Tensor]) -> Tensor:
    """MSE between the teacher's output-head read-outs of fake and real features, over all taps (spec §4.4b)."""
    fake = torch.cat([f.flatten(1) for f in fake_readouts], dim=1)
    real = torch.cat([r.flatten(1) for r in real_readouts], dim=1)
    return F.mse_loss(fake.float(), real.float())
