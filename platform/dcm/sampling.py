"""Samplers over velocity-predicting flow-matching denoisers, and the denoiser wrappers they call.

Every sampler has one signature, as k-diffusion's do::

    sample_<name>(denoiser, x, sigmas, *, cond, generator=None, callback=None) -> Tensor

``denoiser(x, sigma, cond) -> v`` takes ``x`` (B, C, F, H, W), ``sigma`` (B,) and a dict of conditioning
tensors, and returns the velocity ``v`` with ``x0_hat = x - sigma * v`` (spec §1.1). ``sigmas`` is (S + 1,)
descending and ends at 0. Pure torch: no I/O, no Ray.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

Cond = dict[str, Tensor]
Denoiser = Callable[[Tensor, Tensor, Cond], Tensor]


def append_dims(x: Tensor, target_dims: int) -> Tensor:
    """Appends trailing singleton axes so a (B,) tensor broadcasts against a (B, ...) one (k-diffusion utils)."""
    missing = target_dims - x.ndim
    if missing < 0:
        raise ValueError(f"input has {x.ndim} dims but target_dims is {target_dims}, which is less")
    return x[(...,) + (None,) * missing]


@torch.no_grad()
def sample_euler(
    denoiser: Denoiser,
    x: Tensor,
    sigmas: Tensor,
    *,
    cond: Cond,
    generator: torch.Generator | None = None,
    callback: Callable[[dict], None] | None = None,
) -> Tensor:
    """Euler steps on the probability-flow ODE of a velocity model: ``x <- x + (sigma_next - sigma) * v``.

    This is the update of DCM's ``InferencePCMFMScheduler.step`` (spec §5.1) and of diffusers'
    ``FlowMatchEulerDiscreteScheduler``; it is deterministic, so ``generator`` is unused.

    Args:
        x: (B, C, F, H, W) initial noise at ``sigmas[0]``.
        sigmas: (S + 1,) descending noise levels ending in 0.
        cond: conditioning tensors, batch-first, passed to the denoiser unchanged.
        callback: called after each step with ``{"i", "x", "sigma", "sigma_next", "v", "denoised"}``.
    Returns:
        (B, C, F, H, W) the sample at ``sigmas[-1]``.
    """
    check_sigmas(sigmas)
    for i in range(len(sigmas) - 1):
        sigma = sigmas[i].to(x.dtype).expand(x.shape[0])  # (B,)
        v = denoiser(x, sigma, cond)
        dt = (sigmas[i + 1] - sigmas[i]).to(x.dtype)
        if callback is not None:
            denoised = x - append_dims(sigma, x.ndim) * v
            callback({"i": i, "x": x, "sigma": sigmas[i], "sigma_next": sigmas[i + 1], "v": v, "denoised": denoised})
        x = x + dt * v
    return x


def check_sigmas(sigmas: Tensor) -> None:
    if sigmas.ndim != 1 or len(sigmas) < 2:
        raise ValueError(f"sigmas must be a 1-D tensor of at least 2 levels, got shape {tuple(sigmas.shape)}")
    if not bool((sigmas[1:] < sigmas[:-1]).all()):
        raise ValueError(f"sigmas must be strictly decreasing, got {sigmas.tolist()}")


class TransformerDenoiser(nn.Module):
    """Adapts a diffusers video transformer (or a ``DualExpertTransformer``) to ``denoiser(x, sigma, cond)``.

    Args:
        transformer: called as ``transformer(hidden_states=x, timestep=t, **cond, return_dict=False)[0]``.
        num_train_timesteps: ``t = sigma * num_train_timesteps``.
        cond_keys: which entries of ``cond`` are transformer inputs (the rest, e.g. ``negative_*``, are ignored).
    """

    def __init__(self, transformer: nn.Module, num_train_timesteps: int, cond_keys: tuple[str, ...]) -> None:
        super().__init__()
        self.transformer = transformer
        self.num_train_timesteps = num_train_timesteps
        self.cond_keys = cond_keys

    def forward(self, x: Tensor, sigma: Tensor, cond: Cond) -> Tensor:
        """x: (B, C, F, H, W); sigma: (B,). Returns v (B, C, F, H, W)."""
        kwargs = {k: cond[k] for k in self.cond_keys if k in cond}
        t = sigma * self.num_train_timesteps
        return self.transformer(hidden_states=x, timestep=t, return_dict=False, **kwargs)[0]


class CFGDenoiser(nn.Module):
    """Classifier-free guidance: ``v = v_u + w * (v_c - v_u)`` with both branches in one batched forward.

    The unconditional inputs are the ``negative_<key>`` entries of ``cond``. With ``w == 1`` only the conditional
    branch runs (one network evaluation per step instead of two).
    """

    def __init__(self, inner: nn.Module, guidance_scale: float) -> None:
        super().__init__()
        self.inner = inner
        self.guidance_scale = guidance_scale

    def forward(self, x: Tensor, sigma: Tensor, cond: Cond) -> Tensor:
        """x: (B, C, F, H, W); sigma: (B,). Returns the guided v (B, C, F, H, W)."""
        positive = {k: v for k, v in cond.items() if not k.startswith("negative_")}
        if self.guidance_scale == 1.0:
            return self.inner(x, sigma, positive)
        negative = {k: cond[f"negative_{k}"] for k in positive}
        both = {k: torch.cat([negative[k], positive[k]]) for k in positive}
        v_u, v_c = self.inner(torch.cat([x, x]), torch.cat([sigma, sigma]), both).chunk(2)
        return v_u + self.guidance_scale * (v_c - v_u)


class CountingDenoiser(nn.Module):
    """Counts per-sample network function evaluations: a forward over B rows adds B.

    Wrap the innermost denoiser; ``nfe / num_videos`` is then the NFE per video (CFG counts 2 per step).
    """

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner
        self.nfe = 0

    def forward(self, x: Tensor, sigma: Tensor, cond: Cond) -> Tensor:
        self.nfe += x.shape[0]
        return self.inner(x, sigma, cond)
