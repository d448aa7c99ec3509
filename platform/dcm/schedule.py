"""The shifted flow-matching sigma grid, the expert boundary, PCM phase edges and inference schedules.

Pure functions over :class:`dcm.config.ScheduleConfig`; no I/O, no Ray. Conventions (spec §1):
``x_sigma = sigma * eps + (1 - sigma) * x0``, the model predicts a velocity ``v`` at ``t = T * sigma``,
and grid index ``i`` (0 = least noise, ``G - 1`` = pure noise) has input level ``sigma[i]`` and one Euler
step goes to ``sigma_prev[i]``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from dcm.config import ScheduleConfig

# Spec §5.2: the schedules the reference repository ships (the sampler appends the final 0).
HUNYUAN_4STEP_SIGMAS = (1.0, 0.992, 0.9818, 0.9124)
WAN_6STEP_SIGMAS = (1.0, 0.992, 0.982, 0.949, 0.905, 0.810)
RELEASED_SCHEDULES = {"hunyuan-4step": HUNYUAN_4STEP_SIGMAS, "wan-6step": WAN_6STEP_SIGMAS}
MAX_DCM_STEPS = 8


def shift_sigma(sigma: Tensor | float, shift: float) -> Tensor | float:
    """Flow-matching time shift (SD3 / Wan): ``S * s / (1 + (S - 1) * s)``."""
    return shift * sigma / (1 + (shift - 1) * sigma)


@dataclass(frozen=True)
class SigmaGrid:
    """The discrete Euler grid of spec §1.3, in float64.

    Attributes:
        sigma: (G,) ascending; ``sigma[G-1] == 1``.
        sigma_prev: (G,) ``sigma_prev[i] = sigma[i-1]``, ``sigma_prev[0] = shifted(1/T)`` (or 0 if zero_terminal).
        config: the schedule it was built from.
    """

    sigma: Tensor
    sigma_prev: Tensor
    config: ScheduleConfig

    @property
    def is_single_expert(self) -> bool:
        """``k == 0``: one expert covers the whole grid (no detail expert, no routing)."""
        return self.config.boundary_index == 0

    @property
    def boundary_sigma(self) -> float:
        """The semantic expert's phase end ``sigma[k-1]``; samples at or below it go to the detail expert."""
        if self.is_single_expert:
            raise ValueError("a single-expert grid (boundary_index 0) has no expert boundary")
        return float(self.sigma[self.config.boundary_index - 1])

    @property
    def boundary_ratio(self) -> float:
        """Stock diffusers' Wan2.2 routing value: ``transformer`` iff ``t >= ratio * T``.

        The midpoint between ``sigma[k-1]`` and ``sigma[k]`` reproduces our rule on every grid level.
        """
        k = self.config.boundary_index
        return (self.boundary_sigma + float(self.sigma[k])) / 2

    def semantic_range(self) -> tuple[int, int]:
        """Half-open grid index range ``[k, G)`` trained by the semantic expert."""
        return self.config.boundary_index, self.config.num_grid_steps

    def detail_range(self) -> tuple[int, int]:
        """Half-open grid index range ``[0, k)`` trained by the detail expert."""
        return 0, self.config.boundary_index


def build_grid(config: ScheduleConfig) -> SigmaGrid:
    """Builds the shifted grid: ``sigma[i] = shifted((i+1) * (T/G) / T)`` (spec §1.3 ``EulerSolver``)."""
    step_ratio = config.num_train_timesteps // config.num_grid_steps
    base = torch.arange(1, config.num_grid_steps + 1, dtype=torch.float64) * step_ratio / config.num_train_timesteps
    sigma = shift_sigma(base, config.shift)
    first = 0.0 if config.zero_terminal else shift_sigma(1.0 / config.num_train_timesteps, config.shift)
    sigma_prev = torch.cat([torch.tensor([first], dtype=torch.float64), sigma[:-1]])
    return SigmaGrid(sigma=sigma, sigma_prev=sigma_prev, config=config)


def is_detail(sigma: Tensor, grid: SigmaGrid) -> Tensor:
    """Per-sample routing (spec §4.1 clean rule): detail expert iff ``sigma <= sigma[k-1]``.

    Args:
        sigma: (B,) noise levels, any float dtype.
    Returns:
        (B,) bool mask, True where the detail expert denoises.
    """
    return sigma.double() <= grid.boundary_sigma + grid.config.routing_atol


def phase_edges(lo: int, hi: int, num_phases: int) -> Tensor:
    """PCM phase edges inside ``[lo, hi)``: ``lo + floor(linspace(0, hi - lo, M, endpoint=False))`` (spec §2.1)."""
    if not 1 <= num_phases <= hi - lo:
        raise ValueError(f"num_phases must lie in [1, {hi - lo}] for range [{lo}, {hi}), got {num_phases}")
    offsets = torch.floor(torch.arange(num_phases, dtype=torch.float64) * (hi - lo) / num_phases).long()
    return lo + offsets


def phase_end_index(index: Tensor, grid: SigmaGrid) -> Tensor:
    """For each grid index, the edge of its phase inside its own expert's range (the largest edge <= index).

    Args:
        index: (B,) long grid indices in [0, G).
    Returns:
        (B,) long phase-end indices; the phase-end noise level is ``grid.sigma_prev[end]``.
    """
    cfg = grid.config
    edges = phase_edges(cfg.boundary_index, cfg.num_grid_steps, cfg.num_semantic_phases)
    if not grid.is_single_expert:
        edges = torch.cat([phase_edges(0, cfg.boundary_index, cfg.num_detail_phases), edges])
    edges = edges.to(index.device)  # ascending, starts at 0
    pos = torch.searchsorted(edges, index, right=True) - 1  # (B,)
    return edges[pos]


def dcm_sigmas(num_steps: int, grid: SigmaGrid) -> list[float]:
    """An ``num_steps``-step DCM schedule on the grid that lands exactly on the semantic phase end.

    ``num_steps // 2`` semantic steps go from ``sigma = 1`` down to ``sigma[k-1]`` on evenly spaced grid points,
    then the detail expert walks from ``sigma[k-1]`` to 0 (the sampler appends 0) on evenly spaced grid points, except
    that a point on a detail phase edge ``e`` moves to that phase's end ``sigma_prev[e] = sigma[e-1]``: the detail
    expert maps every level of a phase to the phase end, so a step must land there, not one grid point above it in
    the next phase (with one detail phase there is no such edge). With one step the single semantic step goes
    straight to 0. For HunyuanVideo's grid (k = 38) and 4 steps this reproduces the released
    list ``[1, .992, .9818, .9124]`` (spec §5.2, §8 item 17). A single-expert grid (k = 0) gets the PCM
    schedule: the top of the grid, then the ends of ``num_steps`` equal phases (:func:`phase_edges`).

    Returns:
        The descending sigma list without the final 0.
    """
    if not 1 <= num_steps <= MAX_DCM_STEPS:
        raise ValueError(f"num_inference_steps must lie in [1, {MAX_DCM_STEPS}] for a DCM schedule, got {num_steps}")
    top, k = grid.config.num_grid_steps - 1, grid.config.boundary_index
    if grid.is_single_expert:
        edges = phase_edges(0, top + 1, num_steps).tolist()
        return [float(grid.sigma[top])] + [float(grid.sigma_prev[e]) for e in reversed(edges[1:])]
    if num_steps == 1:
        return [float(grid.sigma[top])]
    num_semantic = num_steps // 2
    num_detail = num_steps - num_semantic
    semantic = [round(top - j * (top - (k - 1)) / num_semantic) for j in range(num_semantic)]
    detail = [math.floor((k - 1) * (1 - j / num_detail)) for j in range(num_detail)]
    inner_edges = set(phase_edges(0, k, grid.config.num_detail_phases).tolist()) - {0}
    detail = detail[:1] + [i - 1 if i in inner_edges else i for i in detail[1:]]  # detail[0] = k - 1: where SemE lands
    indices = semantic + detail
    if any(a <= b for a, b in zip(indices, indices[1:])):
        raise ValueError(
            f"{num_steps} steps do not fit on a {grid.config.num_grid_steps}-point grid with boundary_index "
            f"{k}: grid indices {indices} are not strictly decreasing"
        )
    return [float(grid.sigma[i]) for i in indices]


def resolve_sigmas(num_steps: int, grid: SigmaGrid | None, sigmas: tuple[float, ...] | None = None) -> Tensor:
    """The sampler's sigma tensor (S + 1,) ending in 0: the explicit list if given, else the DCM rule on ``grid``.

    Without a grid (a plain teacher) the schedule is the shifted uniform one diffusers' flow-match scheduler uses.
    """
    if sigmas is not None:
        values = list(sigmas)
    elif grid is not None:
        values = dcm_sigmas(num_steps, grid)
    else:
        raise ValueError("a sigma list or a grid is required to build a schedule")
    return torch.tensor([*values, 0.0], dtype=torch.float64)


def teacher_sigmas(num_steps: int, shift: float) -> Tensor:
    """Uniform-in-time shifted schedule for N-step teacher sampling: ``shifted(linspace(1, 0, N+1))`` (S + 1,)."""
    if num_steps < 1:
        raise ValueError(f"num_inference_steps must be >= 1, got {num_steps}")
    base = torch.linspace(1.0, 0.0, num_steps + 1, dtype=torch.float64)
    return shift_sigma(base, shift)
