"""Adversarial parts of the detail expert's objective (docs/algorithm.md, "Stage II: detail expert" and
"Discriminator"): re-noising, hinge losses, feature matching."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from dcm.sampling import append_dims
from dcm.schedule import SigmaGrid, phase_edges, phase_end_index


def renoise_indices(index: Tensor, grid: SigmaGrid, generator: torch.Generator | None = None) -> Tensor:
    """Re-noising grid indices ``a ~ U{e, ..., e_next - 1}`` inside each sample's own detail phase ``[e, e_next)``.

    The re-noise level ``sigma_prev[a]`` is then never below the phase end ``sigma_prev[e]`` the sample was mapped
    to, so the noise coefficient ``sigma_a - sigma_e`` is never negative, for any number of detail phases. With one
    phase this is the reference's ``U{0, ..., k - 1}``.

    Args:
        index: (B,) long grid indices in the detail range ``[0, k)``.
    Returns:
        (B,) long indices on the same device as ``index``.
    """
    lo, hi = grid.detail_range()
    if bool((index < lo).any() or (index >= hi).any()):
        raise ValueError(f"re-noising needs detail-range indices in [{lo}, {hi}), got {index.tolist()}")
    end = phase_end_index(index, grid)  # (B,)
    edges = torch.cat([phase_edges(lo, hi, grid.config.num_detail_phases), torch.tensor([hi])]).to(index.device)
    top = edges[torch.searchsorted(edges, end, right=True)]  # the next edge above each phase end
    u = torch.rand(index.shape, generator=generator).to(index.device)
    return end + (u * (top - end)).long().clamp(max=(top - end - 1))


def renoise(x_end: Tensor, xi: Tensor, sigma_a: Tensor, sigma_e: Tensor) -> Tensor:
    """Re-noise a phase-end sample from ``sigma_e`` to ``sigma_a`` with the reference's linear coefficient.

    ``((1 - sigma_a) * x_end + (sigma_a - sigma_e) * xi) / (1 - sigma_e)`` (FastVideo's formula, exact only when
    ``xi`` is the noise already inside ``x_end``). x_end, xi: (B, C, F, H, W); sigma_a, sigma_e: (B,).
    """
    n = x_end.ndim
    a, e = append_dims(sigma_a, n), append_dims(sigma_e, n)
    return ((1 - a) * x_end + (a - e) * xi) / (1 - e)


def generator_hinge(fake_logits: list[Tensor], factor: float) -> Tensor:
    """``factor * (1/H) * sum_h mean(relu(1 - D_h(fake)))`` (docs/algorithm.md, "Discriminator")."""
    return factor * torch.stack([F.relu(1 - logit).mean() for logit in fake_logits]).mean()


def discriminator_hinge(fake_logits: list[Tensor], real_logits: list[Tensor]) -> Tensor:
    """``(1/H) * sum_h [mean(relu(1 + D_h(fake))) + mean(relu(1 - D_h(real)))]`` (docs/algorithm.md,
    "Discriminator")."""
    terms = [F.relu(1 + f).mean() + F.relu(1 - r).mean() for f, r in zip(fake_logits, real_logits)]
    return torch.stack(terms).mean()


def feature_matching(fake_readouts: list[Tensor], real_readouts: list[Tensor]) -> Tensor:
    """MSE between the teacher's output-head read-outs of fake and real features, over all taps (docs/algorithm.md,
    "Discriminator")."""
    fake = torch.cat([f.flatten(1) for f in fake_readouts], dim=1)
    real = torch.cat([r.flatten(1) for r in real_readouts], dim=1)
    return F.mse_loss(fake.float(), real.float())
