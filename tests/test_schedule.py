"""Sigma grid, expert boundary and routing rule, phase edges and inference schedules (docs/algorithm.md, "Grid and
boundary", "Phases", "Inference schedules")."""

from dataclasses import replace

import pytest
import torch

from dcm.config import ScheduleConfig
from dcm.schedule import (
    HUNYUAN_4STEP_SIGMAS,
    MAX_DCM_STEPS,
    WAN_6STEP_SIGMAS,
    build_grid,
    dcm_sigmas,
    is_detail,
    phase_edges,
    phase_end_index,
    resolve_sigmas,
    shift_sigma,
    teacher_sigmas,
)

# docs/algorithm.md "Grid and boundary", shift 17: index -> (sigma[i], sigma_prev[i]).
SPEC_TABLE = {
    0: (0.25758, 0.01673),
    9: (0.80952, 0.78866),
    17: (0.90533, None),
    18: (0.91243, None),
    25: (0.94850, None),
    34: (0.97541, 0.97306),
    35: (0.97764, 0.97541),
    37: (0.98176, 0.97975),
    38: (0.98368, 0.98176),
    43: (0.99204, None),
    49: (1.00000, 0.99880),
}


@pytest.fixture
def wan_grid():
    return build_grid(ScheduleConfig(boundary_index=35))


@pytest.fixture
def hy_grid():
    return build_grid(ScheduleConfig(boundary_index=38))


def test_grid_matches_spec_table(wan_grid):
    for i, (sigma, sigma_prev) in SPEC_TABLE.items():
        assert float(wan_grid.sigma[i]) == pytest.approx(sigma, abs=1e-5), i
        if sigma_prev is not None:
            assert float(wan_grid.sigma_prev[i]) == pytest.approx(sigma_prev, abs=1e-5), i


def test_grid_is_ascending_and_prev_is_shifted_by_one(wan_grid):
    assert torch.all(wan_grid.sigma[1:] > wan_grid.sigma[:-1])
    assert torch.equal(wan_grid.sigma_prev[1:], wan_grid.sigma[:-1])
    assert float(wan_grid.sigma[-1]) == 1.0


def test_shift_7_reference_values():
    grid = build_grid(ScheduleConfig(boundary_index=35, shift=7.0))
    assert float(grid.sigma[35]) == pytest.approx(0.94737, abs=1e-5)
    assert float(grid.sigma_prev[0]) == pytest.approx(0.00696, abs=1e-5)


def test_zero_terminal_option():
    grid = build_grid(ScheduleConfig(boundary_index=35, zero_terminal=True))
    assert float(grid.sigma_prev[0]) == 0.0


def test_boundary_derivations(wan_grid, hy_grid):
    assert wan_grid.semantic_range() == (35, 50) and wan_grid.detail_range() == (0, 35)
    assert wan_grid.boundary_sigma == pytest.approx(0.97541, abs=1e-5)
    assert hy_grid.boundary_sigma == pytest.approx(0.98176, abs=1e-5)
    # The stock-diffusers boundary ratio lies strictly between the two grid levels around the boundary.
    assert float(wan_grid.sigma[34]) < wan_grid.boundary_ratio < float(wan_grid.sigma[35])


def test_routing_is_per_sample_and_matches_grid_ranges(wan_grid):
    for sigma in (wan_grid.sigma, wan_grid.sigma.float()):  # the schedule's own values, float64 or float32
        mask = is_detail(sigma, wan_grid)
        assert mask[:35].all() and not mask[35:].any()
    mixed = torch.tensor([1.0, 0.5, 0.9754098, 0.9776])
    assert is_detail(mixed, wan_grid).tolist() == [False, True, True, False]


def test_routing_threshold_is_the_export_boundary_ratio(wan_grid, hy_grid):
    """One rule: detail iff sigma < the midpoint of sigma[k-1] and sigma[k], the stock export's boundary_ratio."""
    for grid in (wan_grid, hy_grid):
        k = grid.config.boundary_index
        ratio = grid.boundary_ratio
        assert ratio == pytest.approx((float(grid.sigma[k - 1]) + float(grid.sigma[k])) / 2)
        below, above = torch.tensor([ratio - 1e-9], dtype=torch.float64), torch.tensor([ratio], dtype=torch.float64)
        assert is_detail(below, grid).item() and not is_detail(above, grid).item()  # stock: transformer iff t >= r*T


@pytest.mark.parametrize(
    "k, sigmas, expected",
    [
        (38, HUNYUAN_4STEP_SIGMAS, [False, False, True, True]),  # 0.9818 is 4e-6 above sigma[37]: still detail
        (35, WAN_6STEP_SIGMAS, [False, False, False, True, True, True]),
    ],
)
def test_released_lists_route_like_the_reference(k, sigmas, expected):
    """The reference routes by int(t) <= 981 (HunyuanVideo) / 978 (Wan inference); our rule agrees on its lists, in
    float64 and float32 alike. A bf16 sigma is refused: bf16 moves levels near 1 by up to 0.002 (0.9754 -> 0.9766)."""
    grid = build_grid(ScheduleConfig(boundary_index=k))
    threshold = {38: 981, 35: 978}[k]
    assert [int(s * 1000) <= threshold for s in sigmas] == expected
    for dtype in (torch.float64, torch.float32):
        assert is_detail(torch.tensor(sigmas, dtype=dtype), grid).tolist() == expected
    with pytest.raises(ValueError, match="float32 or float64"):
        is_detail(torch.tensor(sigmas, dtype=torch.bfloat16), grid)


@pytest.mark.parametrize("k", [50, -1])  # 0 is valid: a single-expert grid (below)
def test_boundary_outside_grid_is_rejected(k):
    with pytest.raises(ValueError, match="boundary_index"):
        ScheduleConfig(boundary_index=k)


def test_single_phase_ends_match_spec(wan_grid):
    index = torch.tensor([0, 10, 34, 35, 40, 49])
    ends = phase_end_index(index, wan_grid)
    assert ends.tolist() == [0, 0, 0, 35, 35, 35]
    # Semantic phase end sigma_prev[k] equals sigma[k-1].
    assert float(wan_grid.sigma_prev[35]) == wan_grid.boundary_sigma


def test_multiphase_edges_stay_inside_each_expert():
    grid = build_grid(ScheduleConfig(boundary_index=35, num_semantic_phases=3, num_detail_phases=2))
    assert phase_edges(35, 50, 3).tolist() == [35, 40, 45]
    assert phase_edges(0, 35, 2).tolist() == [0, 17]
    index = torch.arange(50)
    ends = phase_end_index(index, grid)
    assert ends[:17].eq(0).all() and ends[17:35].eq(17).all()
    assert ends[35:40].eq(35).all() and ends[40:45].eq(40).all() and ends[45:].eq(45).all()
    assert torch.all(ends <= index)


def test_too_many_phases_rejected():
    with pytest.raises(ValueError, match="num_semantic_phases"):
        ScheduleConfig(boundary_index=35, num_semantic_phases=16)


def test_dcm_4_steps_reproduces_released_hunyuan_schedule(hy_grid):
    sigmas = dcm_sigmas(4, hy_grid)
    assert sigmas == pytest.approx(list(HUNYUAN_4STEP_SIGMAS), abs=5e-5)
    assert is_detail(torch.tensor(sigmas), hy_grid).tolist() == is_detail(torch.tensor(HUNYUAN_4STEP_SIGMAS),
                                                                         hy_grid).tolist()  # fmt: skip


@pytest.mark.parametrize("steps", list(range(1, MAX_DCM_STEPS + 1)))
@pytest.mark.parametrize("k", [35, 38])
def test_dcm_schedule_hits_semantic_phase_end(steps, k):
    grid = build_grid(ScheduleConfig(boundary_index=k))
    sigmas = dcm_sigmas(steps, grid)
    assert len(sigmas) == steps and sigmas[0] == 1.0
    assert all(a > b for a, b in zip(sigmas, sigmas[1:]))
    if steps >= 2:
        assert grid.boundary_sigma in sigmas  # exactly on sigma[k-1]: no extrapolation past the SemE phase end
        n_semantic = sum(not bool(is_detail(torch.tensor([s]), grid)) for s in sigmas)
        assert n_semantic == steps // 2


def phase_ends(grid) -> list[float]:
    """Every phase end above 0 of both experts: sigma_prev[e] for each phase edge e > 0."""
    cfg = grid.config
    edges = phase_edges(cfg.boundary_index, cfg.num_grid_steps, cfg.num_semantic_phases).tolist()
    if not grid.is_single_expert:
        edges += phase_edges(0, cfg.boundary_index, cfg.num_detail_phases).tolist()
    return sorted((float(grid.sigma_prev[e]) for e in edges if e > 0), reverse=True)


@pytest.mark.parametrize("k, shift", [(35, 17.0), (38, 17.0), (25, 5.0)])
@pytest.mark.parametrize("semantic_phases, detail_phases", [(1, 1), (2, 1), (1, 2), (2, 2)])
def test_dcm_schedule_lands_on_every_phase_end(k, shift, semantic_phases, detail_phases):
    """For 1-8 steps: each step starts in a phase and ends at or above that phase's end, so every phase end of both
    experts is in the list (docs/algorithm.md, "Phases"), and no step crosses the expert boundary without landing on
    sigma[k-1]. Fewer steps than phases (other than 1) are refused."""
    grid = build_grid(ScheduleConfig(boundary_index=k, shift=shift, num_semantic_phases=semantic_phases,
                                     num_detail_phases=detail_phases))  # fmt: skip
    ends = phase_ends(grid)
    assert grid.boundary_sigma in ends and len(ends) == semantic_phases + detail_phases - 1
    for steps in range(1, MAX_DCM_STEPS + 1):
        if 1 < steps < semantic_phases + detail_phases:
            with pytest.raises(ValueError, match="at least the number of phases"):
                dcm_sigmas(steps, grid)
            continue
        sigmas = dcm_sigmas(steps, grid)
        assert len(sigmas) == steps and sigmas[0] == 1.0 and all(a > b for a, b in zip(sigmas, sigmas[1:]))
        if steps > 1:
            assert set(ends) <= set(sigmas), (steps, ends, sigmas)
            assert sum(not is_detail(torch.tensor([s]), grid).item() for s in sigmas) >= semantic_phases


def test_two_semantic_phases_land_on_the_first_phase_end():
    """The issue's case: with two semantic phases (edges 35, 42) the sampler lands on sigma_prev[42] = sigma[41]."""
    grid = build_grid(ScheduleConfig(boundary_index=35, num_semantic_phases=2))
    for steps in (4, 6, 8):
        assert float(grid.sigma[41]) in dcm_sigmas(steps, grid)


@pytest.mark.parametrize("steps", [4, 8])
def test_dcm_schedule_lands_on_detail_phase_ends(steps):
    """The demo grid (k = 25, shift 5) with two detail phases (edges 0, 12): every detail step starting in the upper
    phase lands on its end sigma_prev[12] = sigma[11], never on sigma[12], which belongs to the upper phase."""
    grid = build_grid(ScheduleConfig(boundary_index=25, shift=5.0, num_detail_phases=2))
    sigmas = dcm_sigmas(steps, grid)
    detail = [s for s in sigmas if bool(is_detail(torch.tensor([s]), grid))]
    assert detail[0] == grid.boundary_sigma
    assert float(grid.sigma_prev[12]) in detail and float(grid.sigma[12]) not in detail
    expected = {4: [24, 11], 8: [24, 18, 11, 6]}[steps]
    assert detail == [float(grid.sigma[i]) for i in expected]
    # One detail phase: no inner edge, the even spacing stays (24, 12).
    one_phase = build_grid(ScheduleConfig(boundary_index=25, shift=5.0))
    assert dcm_sigmas(4, one_phase)[2:] == [float(one_phase.sigma[24]), float(one_phase.sigma[12])]


def test_dcm_schedule_rejects_bad_step_counts(hy_grid):
    for steps in (0, MAX_DCM_STEPS + 1):
        with pytest.raises(ValueError, match="num_inference_steps"):
            dcm_sigmas(steps, hy_grid)


def test_resolve_and_teacher_sigmas(hy_grid):
    s = resolve_sigmas(4, hy_grid, (1.0, 0.5))
    assert s.tolist() == [1.0, 0.5, 0.0]
    t = teacher_sigmas(50, 5.0)
    assert len(t) == 51 and float(t[0]) == 1.0 and float(t[-1]) == 0.0
    assert float(t[25]) == pytest.approx(shift_sigma(0.5, 5.0))


# -- single-expert grids (k = 0): the LCM/PCM-style baselines ---------------------------------------------------


def test_single_expert_grid_covers_the_whole_grid_with_pcm_phases():
    grid = build_grid(ScheduleConfig(boundary_index=0, shift=5.0, num_semantic_phases=4))
    assert grid.is_single_expert and grid.semantic_range() == (0, 50)
    # 4 phases over [0, 50): edges 0, 12, 25, 37; every index maps to the largest edge <= it.
    index = torch.tensor([0, 11, 12, 24, 25, 36, 37, 49])
    assert phase_end_index(index, grid).tolist() == [0, 0, 12, 12, 25, 25, 37, 37]
    # The sampler starts at the top and then visits the phase ends sigma_prev[37], [25], [12] (then 0).
    sigmas = dcm_sigmas(4, grid)
    expected = [grid.sigma[49], grid.sigma_prev[37], grid.sigma_prev[25], grid.sigma_prev[12]]
    assert sigmas == pytest.approx([float(s) for s in expected])
    assert dcm_sigmas(1, grid) == [1.0]


def test_single_expert_grid_with_one_phase_maps_every_index_to_x0():
    grid = build_grid(ScheduleConfig(boundary_index=0, shift=5.0))
    assert phase_end_index(torch.arange(50), grid).tolist() == [0] * 50


def test_single_expert_grid_has_no_boundary():
    grid = build_grid(ScheduleConfig(boundary_index=0))
    with pytest.raises(ValueError, match="no expert boundary"):
        _ = grid.boundary_sigma
    with pytest.raises(ValueError, match="no expert boundary"):
        _ = grid.boundary_ratio


def test_detail_stage_needs_a_boundary():
    from dcm_demo.recipes import demo, demo_lcm

    config = demo_lcm(teacher="t", data="d", output="o")
    assert config.stages == ("semantic",) and config.schedule.boundary_index == 0
    # Same budget as the two DCM stages together.
    full = demo(teacher="t", data="d", output="o")
    assert config.semantic.num_steps == full.semantic.num_steps + full.detail.num_steps
    with pytest.raises(ValueError, match="detail stage needs a boundary_index >= 1"):
        replace(config, stages=("semantic", "detail"))
