"""Phased consistency distillation (PCM as ported by FastVideo/DCM; docs/algorithm.md, "Phases").

Conventions: ``x_sigma = sigma * eps + (1 - sigma) * x0``; a velocity ``v`` moves ``x`` from ``sigma_a`` to
``sigma_b`` by ``x + (sigma_b - sigma_a) * v``. Models enter as denoisers ``denoiser(x, sigma, cond) -> v``
(:mod:`dcm.sampling`), which own the sigma -> timestep conversion. Every quantity is per sample: a batch may mix
grid indices from both experts, and each sample gets its own phase end and target (no ``index[0]`` special case,
docs/algorithm.md "Reference-code pitfalls").
"""

from __future__ import annotations

import torch
from torch import Tensor

from dcm.sampling import Cond, Denoiser, append_dims
from dcm.schedule import SigmaGrid, phase_end_index


def noisy(x0: Tensor, eps: Tensor, sigma: Tensor) -> Tensor:
    """Forward process: ``sigma * eps + (1 - sigma) * x0``; sigma (B,)."""
    s = append_dims(sigma, x0.ndim)
    return s * eps + (1 - s) * x0


def euler_move(x: Tensor, v: Tensor, sigma_from: Tensor, sigma_to: Tensor) -> Tensor:
    """``x + (sigma_to - sigma_from) * v`` per sample."""
    return x + append_dims(sigma_to - sigma_from, x.ndim) * v


def pseudo_huber(a: Tensor, b: Tensor, c: float) -> Tensor:
    """``mean(sqrt((a - b)^2 + c^2) - c)`` over all elements (the pseudo-Huber loss of docs/algorithm.md, "Phases")."""
    return (torch.sqrt((a.float() - b.float()) ** 2 + c**2) - c).mean()


def sample_indices(batch: int, lo: int, hi: int, generator: torch.Generator | None = None) -> Tensor:
    """Grid indices n ~ U{lo, ..., hi - 1}, one per sample: (B,) long."""
    return torch.randint(lo, hi, (batch,), generator=generator)


def consistency_pair(
    *,
    student: Denoiser,
    teacher: Denoiser,
    target: Denoiser,
    x0: Tensor,
    eps: Tensor,
    index: Tensor,
    grid: SigmaGrid,
    cond: Cond,
) -> tuple[Tensor, Tensor, Tensor]:
    """The student's phase-end prediction and its consistency target (docs/algorithm.md, "Phases").

    Args:
        student: the trained denoiser (gradients flow through it).
        teacher: the teacher's (guided) denoiser, called under no_grad.
        target: the target network (the student itself), called under no_grad.
        x0 / eps: (B, C, F, H, W) clean latents and noise.
        index: (B,) grid indices n.
        cond: conditioning tensors (B, ...) for all three (``negative_<key>`` entries for the teacher's CFG).
    Returns:
        x_hat (B, C, F, H, W) with grad, x_tilde (B, C, F, H, W) without, and sigma_end (B,).
    """
    dtype = x0.dtype
    sigma = grid.sigma.to(x0.device)[index].to(dtype)  # (B,)
    sigma_prev = grid.sigma_prev.to(x0.device)[index].to(dtype)
    end = phase_end_index(index, grid)
    sigma_end = grid.sigma_prev.to(x0.device)[end].to(dtype)
    x_n = noisy(x0, eps, sigma)
    x_hat = euler_move(x_n, student(x_n, sigma, cond), sigma, sigma_end)
    with torch.no_grad():
        x_prev = euler_move(x_n, teacher(x_n, sigma, cond), sigma, sigma_prev)
        # At n == end the factor (sigma_end - sigma_prev) is 0: the target is the teacher step itself.
        x_tilde = euler_move(x_prev, target(x_prev, sigma_prev, cond), sigma_prev, sigma_end)
    return x_hat, x_tilde, sigma_end
