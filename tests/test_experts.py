"""The dual-expert wrapper: routing per sample, parameter ownership, plain-diffusers state dicts (spec §4.1)."""

import copy

import pytest
import torch
from diffusers import HunyuanVideoTransformer3DModel, WanTransformer3DModel

from dcm.config import DetailExpertConfig, ScheduleConfig
from dcm.experts import DETAIL, SEMANTIC, DualExpertTransformer
from dcm.models import hunyuan, wan
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


def run(model, x, t, cond):
    return model(hidden_states=x, timestep=t, return_dict=False, **cond)[0]


@torch.no_grad()
def test_detail_expert_starts_equal_to_semantic():
    model, reference = make_wan()
    x, cond = wan_inputs()
    for sigma in (0.99, 0.3):
        t = torch.full((2,), sigma * 1000)
        torch.testing.assert_close(run(model, x, t, cond), run(reference, x, t, cond), atol=ATOL, rtol=0)


@torch.no_grad()
def test_semantic_path_ignores_detail_weights_and_detail_path_uses_them():
    model, reference = make_wan()
    perturb_detail(model)
    x, cond = wan_inputs()
    t_sem, t_det = torch.full((2,), 990.0), torch.full((2,), 500.0)
    torch.testing.assert_close(run(model, x, t_sem, cond), run(reference, x, t_sem, cond), atol=ATOL, rtol=0)
    assert (run(model, x, t_det, cond) - run(reference, x, t_det, cond)).abs().max() > 1e-3


@torch.no_grad()
def test_mixed_batch_routes_each_sample_to_its_own_expert():
    model, _ = make_wan()
    perturb_detail(model)
    x, cond = wan_inputs(batch=4)
    t = torch.tensor([990.0, 300.0, 999.0, 10.0])  # semantic, detail, semantic, detail
    mixed = run(model, x, t, cond)
    for i in range(4):
        single = run(model, x[i : i + 1], t[i : i + 1], {k: v[i : i + 1] for k, v in cond.items()})
        torch.testing.assert_close(mixed[i : i + 1], single, atol=ATOL, rtol=0)
    # The two experts really differ on the same input, so the check above could fail.
    with model.expert(SEMANTIC) as t_model:
        a = t_model(hidden_states=x[:1], timestep=t[1:2], return_dict=False, **{k: v[:1] for k, v in cond.items()})[0]
    with model.expert(DETAIL) as t_model:
        b = t_model(hidden_states=x[:1], timestep=t[1:2], return_dict=False, **{k: v[:1] for k, v in cond.items()})[0]
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
        run(model, x, torch.full((2,), 995.0), cond)
    assert {n for n, p in model.transformer.named_parameters() if p.requires_grad} == trainable
    perturb_detail(model)  # LoRA B = 0 at init would give zero grads to A
    run(model, x, torch.full((2,), 400.0), cond).square().mean().backward()
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
        t = torch.full((2,), sigma * 1000)
        torch.testing.assert_close(run(plain, x, t, cond), run(model, x, t, cond), atol=ATOL, rtol=0)


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
    t = torch.tensor([999.0, 200.0, 990.0])
    out = run(model, x, t, cond)
    ref = run(reference, x, t, cond)
    torch.testing.assert_close(out[[0, 2]], ref[[0, 2]], atol=ATOL, rtol=0)  # semantic rows untouched
    assert (out[1] - ref[1]).abs().max() > 1e-4  # detail row uses the perturbed detail expert
