"""The dual-expert wrapper: routing per sample by the schedule's sigma, parameter ownership, plain-diffusers state
dicts (docs/algorithm.md, "Stage II: detail expert")."""

import copy

import pytest
import torch
from diffusers import HunyuanVideoTransformer3DModel, WanTransformer3DModel

from dcm.config import DetailExpertConfig, ScheduleConfig
from dcm.experts import DETAIL, SEMANTIC, DualExpertTransformer, TwoTransformerRouter, record_experts
from dcm.models import hunyuan, wan
from dcm.sampling import TransformerDenoiser
from dcm.schedule import build_grid

GRID = build_grid(ScheduleConfig(boundary_index=35))
ATOL = 1e-5


def wan_inputs(batch=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, 16, 2, 8, 8, generator=g)
    text = torch.randn(batch, 6, 32, generator=g)
    return x, {"encoder_hidden_states": text}


def make_wan(rank=4):
    transformer = wan.tiny_wan_components()["transformer"].eval()
    reference = copy.deepcopy(transformer)
    config = DetailExpertConfig(duplicated_modules=wan.DUPLICATED_MODULES, lora_rank=rank, lora_alpha=2.0 * rank)
    return DualExpertTransformer(transformer, GRID, config), reference


def perturb_detail(model, scale=0.1):
    g = torch.Generator().manual_seed(123)
    with torch.no_grad():
        for _, p in model.detail_parameters():
            p.add_(scale * torch.randn(p.shape, generator=g))


def run(model, x, sigma, cond, cond_keys=wan.COND_KEYS):
    """The model's velocity through the denoiser wrapper every caller uses (sigma -> t, and sigma to the router)."""
    return TransformerDenoiser(model, 1000, cond_keys)(x, sigma, cond)


def full(value, batch=2):
    return torch.full((batch,), value, dtype=torch.float64)


@torch.no_grad()
def test_detail_expert_starts_equal_to_semantic():
    model, reference = make_wan()
    x, cond = wan_inputs()
    for sigma in (0.99, 0.3):
        torch.testing.assert_close(run(model, x, full(sigma), cond), run(reference, x, full(sigma), cond), atol=ATOL,
                                   rtol=0)  # fmt: skip


@torch.no_grad()
def test_semantic_path_ignores_detail_weights_and_detail_path_uses_them():
    model, reference = make_wan()
    perturb_detail(model)
    x, cond = wan_inputs()
    s_sem, s_det = full(0.99), full(0.5)
    torch.testing.assert_close(run(model, x, s_sem, cond), run(reference, x, s_sem, cond), atol=ATOL, rtol=0)
    assert (run(model, x, s_det, cond) - run(reference, x, s_det, cond)).abs().max() > 1e-3


@torch.no_grad()
def test_mixed_batch_routes_each_sample_to_its_own_expert():
    model, _ = make_wan()
    perturb_detail(model)
    x, cond = wan_inputs(batch=4)
    sigma = torch.tensor([0.99, 0.3, 0.999, 0.01], dtype=torch.float64)  # semantic, detail, semantic, detail
    with record_experts(model) as calls:
        mixed = run(model, x, sigma, cond)
    assert calls == [SEMANTIC, DETAIL]  # one call per expert, each on its own rows
    for i in range(4):
        single = run(model, x[i : i + 1], sigma[i : i + 1], {k: v[i : i + 1] for k, v in cond.items()})
        torch.testing.assert_close(mixed[i : i + 1], single, atol=ATOL, rtol=0)
    # The two experts really differ on the same input, so the check above could fail.
    t = torch.tensor([300.0])
    with model.expert(SEMANTIC) as t_model:
        a = t_model(hidden_states=x[:1], timestep=t, return_dict=False, **{k: v[:1] for k, v in cond.items()})[0]
    with model.expert(DETAIL) as t_model:
        b = t_model(hidden_states=x[:1], timestep=t, return_dict=False, **{k: v[:1] for k, v in cond.items()})[0]
    assert (a - b).abs().max() > 1e-3


def test_no_class_or_forward_patching():
    model, _ = make_wan()
    assert type(model.transformer) is WanTransformer3DModel
    assert "forward" not in vars(model.transformer)
    fresh = wan.tiny_wan_components()["transformer"]
    assert not any("lora" in n for n, _ in fresh.named_parameters())


def test_trainable_sets_and_gradients():
    model, _ = make_wan()
    model.set_trainable(DETAIL)
    detail = {n for n, _ in model.detail_parameters()}
    trainable = {n for n, p in model.transformer.named_parameters() if p.requires_grad}
    assert detail and trainable == detail
    x, cond = wan_inputs()
    # A semantic forward toggles peft's adapters off and on: requires_grad must survive it.
    with torch.no_grad():
        run(model, x, full(0.995), cond)
    assert {n for n, p in model.transformer.named_parameters() if p.requires_grad} == trainable
    perturb_detail(model)  # LoRA B = 0 at init would give zero grads to A
    run(model, x, full(0.4), cond).square().mean().backward()
    grads = {n for n, p in model.transformer.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    assert grads and grads <= detail
    model.set_trainable(SEMANTIC)
    assert not any(p.requires_grad for _, p in model.detail_parameters())


@torch.no_grad()
def test_expert_state_dicts_load_into_stock_class():
    model, _ = make_wan()
    perturb_detail(model)
    x, cond = wan_inputs()
    for expert, sigma in ((SEMANTIC, 0.99), (DETAIL, 0.4)):
        plain = WanTransformer3DModel.from_config(model.transformer.config).eval()
        plain.load_state_dict(model.expert_state_dict(expert), strict=True)
        s = full(sigma)
        torch.testing.assert_close(run(plain, x, s, cond), run(model, x, s, cond), atol=ATOL, rtol=0)


def test_detail_state_dict_roundtrip_and_mismatch():
    model, _ = make_wan()
    perturb_detail(model)
    state = model.detail_state_dict()
    other, _ = make_wan()
    other.load_detail_state_dict(state)
    for (n, a), (_, b) in zip(model.detail_parameters(), other.detail_parameters()):
        assert torch.equal(a, b), n
    with pytest.raises(ValueError, match="missing"):
        other.load_detail_state_dict({k: v for k, v in list(state.items())[1:]})


def test_bad_duplicated_module_is_rejected():
    transformer = wan.tiny_wan_components()["transformer"]
    with pytest.raises(ValueError, match="time_text_embed"):
        DualExpertTransformer(transformer, GRID, DetailExpertConfig(duplicated_modules=("time_text_embed",)))


@torch.no_grad()
def test_hunyuan_dual_expert_routes_per_sample():
    components = hunyuan.tiny_hunyuan_components()
    transformer = components["transformer"].eval()
    reference = copy.deepcopy(transformer)
    config = DetailExpertConfig(duplicated_modules=hunyuan.DUPLICATED_MODULES, lora_rank=2, lora_alpha=4.0)
    model = DualExpertTransformer(transformer, build_grid(ScheduleConfig(boundary_index=38)), config)
    assert type(model.transformer) is HunyuanVideoTransformer3DModel
    # The single-stream blocks' own proj_out must not be duplicated (only the top-level one is).
    from dcm.experts import ExpertSwitch

    switched = [n for n, m in model.transformer.named_modules() if isinstance(m, ExpertSwitch)]
    assert sorted(switched) == sorted(hunyuan.DUPLICATED_MODULES)
    perturb_detail(model)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 4, 2, 4, 4, generator=g)
    cond = {
        "encoder_hidden_states": torch.randn(3, 5, 16, generator=g),
        "encoder_attention_mask": torch.ones(3, 5, dtype=torch.long),
        "pooled_projections": torch.randn(3, 8, generator=g),
        "guidance": torch.full((3,), 6000.0),
    }
    sigma = torch.tensor([0.999, 0.2, 0.99], dtype=torch.float64)
    out = run(model, x, sigma, cond, hunyuan.COND_KEYS)
    ref = run(reference, x, sigma, cond, hunyuan.COND_KEYS)
    torch.testing.assert_close(out[[0, 2]], ref[[0, 2]], atol=ATOL, rtol=0)  # semantic rows untouched
    assert (out[1] - ref[1]).abs().max() > 1e-4  # detail row uses the perturbed detail expert


@torch.no_grad()
def test_router_needs_the_schedules_sigma_not_a_timestep():
    """Routing reads the schedule's own float32/float64 sigma; a bf16 one (0.9754 -> 0.9766) is refused."""
    model, _ = make_wan()
    x, cond = wan_inputs()
    with pytest.raises(TypeError, match="sigma"):
        model(hidden_states=x, timestep=torch.full((2,), 975.4), return_dict=False, **cond)
    boundary = torch.full((2,), GRID.boundary_sigma, dtype=torch.float64)  # sigma[k-1]: the detail expert's top level
    with record_experts(model) as calls:
        run(model, x, boundary, cond)
        run(model, x, boundary.float(), cond)
    assert calls == [DETAIL, DETAIL]
    with pytest.raises(ValueError, match="float32 or float64"):
        run(model, x, boundary.bfloat16(), cond)


@torch.no_grad()
def test_two_transformer_router_routes_like_the_dual_expert():
    model, _ = make_wan()
    perturb_detail(model)
    router = TwoTransformerRouter(
        WanTransformer3DModel.from_config(model.transformer.config).eval(),
        WanTransformer3DModel.from_config(model.transformer.config).eval(),
        GRID,
    )
    router.semantic.load_state_dict(model.expert_state_dict(SEMANTIC))
    router.detail.load_state_dict(model.expert_state_dict(DETAIL))
    x, cond = wan_inputs(batch=3)
    sigma = torch.tensor([float(GRID.sigma[35]), GRID.boundary_sigma, 0.5], dtype=torch.float64)
    with record_experts(router) as calls:
        out = run(router, x, sigma, cond)
    assert calls == [SEMANTIC, DETAIL]
    torch.testing.assert_close(out, run(model, x, sigma, cond), atol=ATOL, rtol=0)
