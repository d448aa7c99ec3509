"""The shifted flow-matching sigma grid, the expert boundary, PCM phase edges and inference schedules.

Pure functions over :class:`dcm.config.ScheduleConfig`; no I/O, no Ray. Conventions (docs/algorithm.md, "Conventions",
"Grid and boundary"):
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

# docs/algorithm.md "Inference schedules": the lists the authors' inference scripts hard-code (the sampler appends 0).
HUNYUAN_4STEP_SIGMAS = (1.0, 0.992, 0.9818, 0.9124)
WAN_6STEP_SIGMAS = (1.0, 0.992, 0.982, 0.949, 0.905, 0.810)
RELEASED_SCHEDULES = {"hunyuan-4step": HUNYUAN_4STEP_SIGMAS, "wan-6step": WAN_6STEP_SIGMAS}
MAX_DCM_STEPS = 8
# Noise levels precise enough to route: fp32 rounds sigma by < 1e-7, far below the 2e-3 between grid levels at k.
ROUTING_DTYPES = (torch.float32, torch.float64)


def shift_sigma(sigma: Tensor | float, shift: float) -> Tensor | float:
    """Flow-matching time shift (SD3 / Wan): ``S * s / (1 + (S - 1) * s)``."""
    return shift * sigma / (1 + (shift - 1) * sigma)


@dataclass(frozen=True)
class SigmaGrid:
    """The discrete Euler grid (docs/algorithm.md, "Grid and boundary"), in float64.

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
        """The semantic expert's phase end ``sigma[k-1]``, the highest level the detail expert trains on."""
        if self.is_single_expert:
            raise ValueError("a single-expert grid (boundary_index 0) has no expert boundary")
        return float(self.sigma[self.config.boundary_index - 1])

    @property
    def boundary_ratio(self) -> float:
        """The routing threshold: the midpoint between ``sigma[k-1]`` and ``sigma[k]`` (:func:`is_detail`).

        It is also stock diffusers' Wan2.2 ``boundary_ratio`` (``transformer`` iff ``t >= ratio * T``), so the export
        routes like our sampler. Every trained level lies on its own expert's side, and so do the authors' rounded
        lists (HunyuanVideo's 0.9818 lies 0.001 below the midpoint 0.98272).
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
    """Builds the shifted grid: ``sigma[i] = shifted((i+1) * (T/G) / T)`` (the reference's ``EulerSolver`` grid)."""
    step_ratio = config.num_train_timesteps // config.num_grid_steps
    base = torch.arange(1, config.num_grid_steps + 1, dtype=torch.float64) * step_ratio / config.num_train_timesteps
    sigma = shift_sigma(base, config.shift)
    first = 0.0 if config.zero_terminal else shift_sigma(1.0 / config.num_train_timesteps, config.shift)
    sigma_prev = torch.cat([torch.tensor([first], dtype=torch.float64), sigma[:-1]])
    return SigmaGrid(sigma=sigma, sigma_prev=sigma_prev, config=config)


def is_detail(sigma: Tensor, grid: SigmaGrid) -> Tensor:
    """The routing rule (docs/algorithm.md, "Grid and boundary"): detail expert iff ``sigma < grid.boundary_ratio``.

    The one place that decides which expert denoises a noise level, for our sampler, the distillation stages and the
    stock-diffusers export alike. ``sigma`` must be the schedule's own value in float32 or float64: a bf16 sigma is
    rounded by up to 0.004 near 1, more than the gap between two grid levels at the boundary.

    Args:
        sigma: (B,) noise levels, float32 or float64.
    Returns:
        (B,) bool mask, True where the detail expert denoises.
    """
    if sigma.dtype not in ROUTING_DTYPES:
        raise ValueError(
            f"sigma must be float32 or float64 to be routed (a {sigma.dtype} sigma can land on the wrong side of "
            f"the expert boundary), got {sigma.dtype}"
        )
    return sigma.double() < grid.boundary_ratio


def phase_edges(lo: int, hi: int, num_phases: int) -> Tensor:
    """PCM phase edges inside ``[lo, hi)``: ``lo + floor(linspace(0, hi - lo, M, endpoint=False))`` (docs/algorithm.md,
    "Phases")."""
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
    """A ``num_steps``-step DCM schedule on the grid that lands on every phase end of both experts.

    An expert maps every level of a phase to that phase's end ``sigma_prev[e] = sigma[e-1]`` (docs/algorithm.md,
    "Phases"), so a step that crosses a phase edge without landing on its end extrapolates past what the expert was
    trained for. The rule (docs/algorithm.md, "Inference schedules"):

    1. Half the steps (rounded down; more if the semantic expert has more phases than that) belong to the semantic
       expert, on evenly spaced grid points from ``sigma = 1`` down to its phase end ``sigma[k-1]``; the rest belong
       to the detail expert, on evenly spaced grid points from ``sigma[k-1]`` down to 0 (the sampler appends 0).
    2. Each phase end that no step lands on takes the place of the nearest free point of its expert.

    With one phase per expert step 2 changes nothing, and for HunyuanVideo's grid (k = 38) and 4 steps this gives the
    released list ``[1, .992, .9818, .9124]``. One step goes straight from 1 to 0. A single-expert grid (k = 0) gets
    the PCM schedule: the top of the grid, then the ends of ``num_steps`` equal phases, then step 2 for the model's
    own phases.

    Returns:
        The descending sigma list without the final 0.
    Raises:
        ValueError: for a step count outside ``[1, MAX_DCM_STEPS]``, fewer steps (other than 1) than the experts have
            phases, or more steps than the grid has room for.
    """
    cfg = grid.config
    if not 1 <= num_steps <= MAX_DCM_STEPS:
        raise ValueError(f"num_inference_steps must lie in [1, {MAX_DCM_STEPS}] for a DCM schedule, got {num_steps}")
    top, k = cfg.num_grid_steps - 1, cfg.boundary_index
    if num_steps == 1:
        return [float(grid.sigma[top])]
    num_phases = cfg.num_semantic_phases + (0 if grid.is_single_expert else cfg.num_detail_phases)
    if num_steps < num_phases:
        raise ValueError(
            f"num_inference_steps must be 1 or at least the number of phases ({num_phases}: a step per phase end) "
            f"for this model, got {num_steps}"
        )
    semantic_ends = [e - 1 for e in phase_edges(k, top + 1, cfg.num_semantic_phases).tolist()[1:]]
    if grid.is_single_expert:
        even = [top] + [e - 1 for e in reversed(phase_edges(0, top + 1, num_steps).tolist()[1:])]
        indices = _land_on_phase_ends(even, semantic_ends)
    else:
        num_semantic = max(cfg.num_semantic_phases, min(num_steps // 2, num_steps - cfg.num_detail_phases))
        num_detail = num_steps - num_semantic
        semantic = [round(top - j * (top - (k - 1)) / num_semantic) for j in range(num_semantic)]
        detail = [math.floor((k - 1) * (1 - j / num_detail)) for j in range(num_detail)]  # detail[0] = k - 1
        detail_ends = [e - 1 for e in phase_edges(0, k, cfg.num_detail_phases).tolist()[1:]]
        indices = _land_on_phase_ends(semantic, semantic_ends) + _land_on_phase_ends(detail, detail_ends)
    if any(a <= b for a, b in zip(indices, indices[1:])):
        raise ValueError(
            f"{num_steps} steps do not fit on a {cfg.num_grid_steps}-point grid with boundary_index "
            f"{k}: grid indices {indices} are not strictly decreasing"
        )
    return [float(grid.sigma[i]) for i in indices]


def _land_on_phase_ends(points: list[int], ends: list[int]) -> list[int]:
    """``points`` (descending grid indices, the first one fixed) with each of ``ends`` that is missing put in place of
    the nearest point not already moved, sorted descending again."""
    points = list(points)
    movable = [i for i in range(1, len(points)) if points[i] not in ends]
    for end in ends:
        if end in points:
            continue
        nearest = min(movable, key=lambda i: abs(points[i] - end))
        points[nearest] = end
        movable.remove(nearest)
    return sorted(points, reverse=True)


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
