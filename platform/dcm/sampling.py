"""Samplers over velocity-predicting flow-matching denoisers, and the denoiser wrappers they call.

Every sampler has one signature, as k-diffusion's do::

    sample_<name>(denoiser, x, sigmas, *, cond, callback=None) -> Tensor

(a stochastic sampler adds ``generator=``). ``denoiser(x, sigma, cond) -> v`` takes ``x`` (B, C, F, H, W), ``sigma``
(B,) and a dict of conditioning tensors, and returns the velocity ``v`` with ``x0_hat = x - sigma * v``
(docs/algorithm.md, "Conventions"). ``sigmas`` is (S + 1,) descending and ends at 0.

The conventions live here once, used by sampling and distillation alike: :class:`TransformerDenoiser` owns the
conversion ``t = sigma * num_train_timesteps`` and the dtype boundary (latents and sigmas stay float32 or float64;
only the transformer's input is cast to the model's dtype, and its output back), and :class:`CFGDenoiser` owns the
guidance mix ``v_u + g (v_c - v_u)``. Pure torch: no I/O, no Ray.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn
from torch.distributed.fsdp import FullyShardedDataParallel
from torch.nn.parallel import DistributedDataParallel

Cond = dict[str, Tensor]
Denoiser = Callable[[Tensor, Tensor, Cond], Tensor]
NEGATIVE_PREFIX = "negative_"
# Wrappers that hold the model as ``.module`` and pass keyword arguments through to it (Ray Train's prepare_model).
PARALLEL_WRAPPERS = (DistributedDataParallel, FullyShardedDataParallel)


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
    callback: Callable[[dict], None] | None = None,
) -> Tensor:
    """Euler steps on the probability-flow ODE of a velocity model: ``x <- x + (sigma_next - sigma) * v``.

    The update of the reference's ``InferencePCMFMScheduler.step`` and of diffusers'
    ``FlowMatchEulerDiscreteScheduler`` (docs/algorithm.md, "Inference schedules"). The loop runs in ``x``'s dtype
    (float32 from the pipeline); each step's sigma reaches the denoiser in ``sigmas``' own dtype (float64 from
    :func:`dcm.schedule.resolve_sigmas`), so the expert is chosen from the schedule's exact value.

    Args:
        x: (B, C, F, H, W) initial noise at ``sigmas[0]``.
        sigmas: (S + 1,) descending noise levels ending in 0, float32 or float64.
        cond: conditioning tensors, batch-first, passed to the denoiser unchanged.
        callback: called after each step with ``{"i", "x", "sigma", "sigma_next", "v", "denoised"}``.
    Returns:
        (B, C, F, H, W) the sample at ``sigmas[-1]``, in ``x``'s dtype.
    """
    check_sigmas(sigmas)
    for i in range(len(sigmas) - 1):
        sigma = sigmas[i].expand(x.shape[0])  # (B,)
        v = denoiser(x, sigma, cond)
        dt = (sigmas[i + 1] - sigmas[i]).to(x.dtype)
        if callback is not None:
            denoised = x - append_dims(sigma.to(x.dtype), x.ndim) * v
            callback({"i": i, "x": x, "sigma": sigmas[i], "sigma_next": sigmas[i + 1], "v": v, "denoised": denoised})
        x = x + dt * v
    return x


def check_sigmas(sigmas: Tensor) -> None:
    if sigmas.ndim != 1 or len(sigmas) < 2:
        raise ValueError(f"sigmas must be a 1-D tensor of at least 2 levels, got shape {tuple(sigmas.shape)}")
    if sigmas.dtype not in (torch.float32, torch.float64):
        raise ValueError(f"sigmas must be float32 or float64 (a bf16 schedule misroutes experts), got {sigmas.dtype}")
    if not bool((sigmas[1:] < sigmas[:-1]).all()):
        raise ValueError(f"sigmas must be strictly decreasing, got {sigmas.tolist()}")


class ExpertRouter(nn.Module):
    """Base class of a transformer made of experts chosen per sample by noise level (:mod:`dcm.experts`).

    Its forward takes ``sigma=`` (B,) beside ``timestep``: :class:`TransformerDenoiser` passes the schedule's own
    sigma, so the expert is never chosen from a timestep that was computed or rounded in a lower precision.
    """


def model_dtype(model: nn.Module) -> torch.dtype:
    """The dtype a model computes in: diffusers' ``.dtype`` (which skips its float32-kept modules), else the first
    floating parameter's."""
    model = unwrap(model)
    dtype = getattr(model, "dtype", None)
    if isinstance(dtype, torch.dtype):
        return dtype
    return next(p.dtype for p in model.parameters() if p.is_floating_point())


def unwrap(model: nn.Module) -> nn.Module:
    """The model inside data-parallel wrappers (DDP / FSDP1 from ``ray.train.torch.prepare_model``)."""
    while isinstance(model, PARALLEL_WRAPPERS):
        model = model.module
    return model


class TransformerDenoiser(nn.Module):
    """Adapts a diffusers video transformer (or an :class:`ExpertRouter`) to ``denoiser(x, sigma, cond)``.

    The one place that converts a noise level to the transformer's timestep, ``t = sigma * num_train_timesteps``
    (float32, as diffusers' pipelines pass it), and that crosses the dtype boundary: ``x`` and the floating ``cond``
    tensors are cast to the model's dtype, the velocity is cast back to ``x``'s dtype.

    Args:
        transformer: called as ``transformer(hidden_states=x, timestep=t, **cond, return_dict=False)[0]``, plus
            ``sigma=sigma`` when it is an :class:`ExpertRouter` (also inside DDP / FSDP).
        num_train_timesteps: ``t = sigma * num_train_timesteps``.
        cond_keys: which entries of ``cond`` are transformer inputs (the rest, e.g. ``negative_*``, are ignored).
    """

    def __init__(self, transformer: nn.Module, num_train_timesteps: int, cond_keys: tuple[str, ...]) -> None:
        super().__init__()
        self.transformer = transformer
        self.num_train_timesteps = num_train_timesteps
        self.cond_keys = cond_keys
        self.routed = isinstance(unwrap(transformer), ExpertRouter)

    def forward(self, x: Tensor, sigma: Tensor, cond: Cond) -> Tensor:
        """x: (B, C, F, H, W); sigma: (B,) float32 or float64. Returns v (B, C, F, H, W) in x's dtype."""
        if sigma.shape != (x.shape[0],):
            raise ValueError(f"sigma must have shape ({x.shape[0]},) for x of shape {tuple(x.shape)}, got "
                             f"{tuple(sigma.shape)}")  # fmt: skip
        dtype = model_dtype(self.transformer)
        t = (sigma * self.num_train_timesteps).to(torch.float32)  # (B,)
        kwargs = {k: _to_dtype(cond[k], dtype) for k in self.cond_keys if k in cond}
        if self.routed:
            kwargs["sigma"] = sigma
        v = self.transformer(hidden_states=x.to(dtype), timestep=t, return_dict=False, **kwargs)[0]
        return v.to(x.dtype)


def _to_dtype(value: Tensor, dtype: torch.dtype) -> Tensor:
    """Floating tensors (embeddings, embedded guidance) in the model's dtype; masks and ids unchanged."""
    return value.to(dtype) if value.is_floating_point() else value


class CFGDenoiser(nn.Module):
    """Classifier-free guidance: ``v = v_u + g * (v_c - v_u)`` with both branches in one batched forward.

    The unconditional inputs are the ``negative_<key>`` entries of ``cond``; a negative with batch 1 (one empty
    prompt for a whole batch) is broadcast. With ``g == 1`` only the conditional branch runs (one network evaluation
    per step instead of two). The reference's teacher weight ``w`` in ``v_c + w (v_c - v_u)`` is ``g = w + 1``.
    """

    def __init__(self, inner: nn.Module, guidance_scale: float) -> None:
        super().__init__()
        self.inner = inner
        self.guidance_scale = guidance_scale

    def forward(self, x: Tensor, sigma: Tensor, cond: Cond) -> Tensor:
        """x: (B, C, F, H, W); sigma: (B,). Returns the guided v (B, C, F, H, W)."""
        positive = {k: v for k, v in cond.items() if not k.startswith(NEGATIVE_PREFIX)}
        if self.guidance_scale == 1.0:
            return self.inner(x, sigma, positive)
        batch = x.shape[0]
        negative = {}
        for key in positive:
            if f"{NEGATIVE_PREFIX}{key}" not in cond:
                raise ValueError(f"guidance_scale {self.guidance_scale} needs cond[{NEGATIVE_PREFIX + key!r}], got "
                                 f"keys {sorted(cond)}")  # fmt: skip
            neg = cond[f"{NEGATIVE_PREFIX}{key}"]
            negative[key] = neg.expand(batch, *neg.shape[1:]) if neg.shape[0] == 1 else neg
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
