"""Phased consistency distillation (PCM as ported by FastVideo/DCM; spec §2).

Conventions: ``x_sigma = sigma * eps + (1 - sigma) * x0``; a velocity ``v`` moves ``x`` from ``sigma_a`` to
``sigma_b`` by ``x + (sigma_b - sigma_a) * v``. Every quantity is per sample: a batch may mix grid indices from
both experts, and each sample gets its own phase end and target (no ``index[0]`` special case, spec §8 item 11).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from dcm.sampling import append_dims
from dcm.schedule import SigmaGrid, phase_end_index

# velocity(x, sigma) -> v, with x (B, C, F, H, W) and sigma (B,)
Velocity = Callable[[Tensor, Tensor], Tensor]


def noisy(x0: Tensor, eps: Tensor, sigma: Tensor) -> Tensor:
    """Forward process (spec §1.1): ``sigma * eps + (1 - sigma) * x0``; sigma (B,)."""
    s = append_dims(sigma, x0.ndim)
    return s * eps + (1 - s) * x0


def euler_move(x: Tensor, v: Tensor, sigma_from: Tensor, sigma_to: Tensor) -> Tensor:
    """``x + (sigma_to - sigma_from) * v`` per sample (spec §2.2)."""
    return x + append_dims(sigma_to - sigma_from, x.ndim) * v


def pseudo_huber(a: Tensor, b: Tensor, c: float) -> Tensor:
    """``mean(sqrt((a - b)^2 + c^2) - c)`` over all elements (spec §2.4)."""
    return (torch.sqrt((a.float() - b.float()) ** 2 + c**2) - c).mean()


def sample_indices(batch: int, lo: int, hi: int, generator: torch.Generator | None = None) -> Tensor:
    """Grid indices n ~ U{lo, ..., hi - 1}, one per sample: (B,) long."""
    return torch.randint(lo, hi, (batch,), generator=generator)


def consistency_pair(
    *,
    student: Velocity,
    teacher: Velocity,
    target: Velocity,
    x0: Tensor,
    eps: Tensor,
    index: Tensor,
    grid: SigmaGrid,
) -> tuple[Tensor, Tensor, Tensor]:
    """The student's phase-end prediction and its consistency target (spec §2.2-2.3).

    Args:
        student: the trained velocity model (gradients flow through it).
        teacher: the teacher's (guided) velocity, called under no_grad.
        target: the target network (the student itself or an EMA copy), called under no_grad.
        x0 / eps: (B, C, F, H, W) clean latents and noise.
        index: (B,) grid indices n.
    Returns:
        x_hat (B, C, F, H, W) with grad, x_tilde (B, C, F, H, W) without, and sigma_end (B,).
    """
    dtype = x0.dtype
    sigma = grid.sigma.to(x0.device)[index].to(dtype)  # (B,)
    sigma_prev = grid.sigma_prev.to(x0.device)[index].to(dtype)
    end = phase_end_index(index, grid)
    sigma_end = grid.sigma_prev.to(x0.device)[end].to(dtype)
    x_n = noisy(x0, eps, sigma)
    x_hat = euler_move(x_n, student(x_n, sigma), sigma, sigma_end)
    with torch.no_grad():
        x_prev = euler_move(x_n, teacher(x_n, sigma), sigma, sigma_prev)
        # At n == end the factor (sigma_end - sigma_prev) is 0: the target is the teacher step itself.
        x_tilde = euler_move(x_prev, target(x_prev, sigma_prev), sigma_prev, sigma_end)
    return x_hat, x_tilde, sigma_end
