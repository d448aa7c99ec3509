"""Sampler contracts and denoiser wrappers (k-diffusion-style signature, Euler on velocity, the dtype boundary)."""

import inspect

import pytest
import torch

from dcm.config import DetailExpertConfig, ScheduleConfig
from dcm.experts import DualExpertTransformer
from dcm.models import cast_model, wan
from dcm.sampling import CFGDenoiser, CountingDenoiser, TransformerDenoiser, append_dims, sample_euler
from dcm.schedule import build_grid


class LinearVelocity(torch.nn.Module):
    """v = a * x + cond["b"]: simple enough to integrate by hand."""

    def __init__(self, a: float):
        super().__init__()
        self.a = a

    def forward(self, x, sigma, cond):
        assert sigma.shape == (x.shape[0],)
        return self.a * x + cond["b"]


@pytest.mark.parametrize("num_steps", [1, 2, 4, 8])
def test_euler_contract(num_steps):
    sigmas = torch.linspace(1.0, 0.0, num_steps + 1, dtype=torch.float64)
    x = torch.randn(2, 3, 2, 4, 4, generator=torch.Generator().manual_seed(0))
    cond = {"b": torch.full((2, 3, 2, 4, 4), 0.5)}
    seen = []
    out = sample_euler(LinearVelocity(0.3), x, sigmas, cond=cond, callback=seen.append)
    assert out.shape == x.shape and out.dtype == x.dtype
    assert [s["i"] for s in seen] == list(range(num_steps))
    assert float(seen[0]["sigma"]) == 1.0 and float(seen[-1]["sigma_next"]) == 0.0
    # Hand-integrated Euler: x <- x + dt * (a x + b) = (1 + a dt) x + b dt.
    expected = x.clone()
    for i in range(num_steps):
        dt = float(sigmas[i + 1] - sigmas[i])
        expected = (1 + 0.3 * dt) * expected + 0.5 * dt
    torch.testing.assert_close(out, expected)
    again = sample_euler(LinearVelocity(0.3), x, sigmas, cond=cond)
    assert torch.equal(out, again)


def test_callback_denoised_is_x0_estimate():
    sigmas = torch.tensor([1.0, 0.0], dtype=torch.float64)
    x0 = torch.randn(1, 2, 1, 2, 2)
    noise = torch.randn_like(x0)
    # A perfect velocity model for this sample: v = noise - x0.
    seen = []
    sample_euler(lambda x, s, c: noise - x0, noise, sigmas, cond={}, callback=seen.append)
    torch.testing.assert_close(seen[0]["denoised"], x0)


def test_bad_sigmas_rejected():
    x = torch.zeros(1, 1, 1, 1, 1)
    with pytest.raises(ValueError, match="strictly decreasing"):
        sample_euler(LinearVelocity(0.0), x, torch.tensor([0.5, 0.7]), cond={"b": x})
    with pytest.raises(ValueError, match="at least 2"):
        sample_euler(LinearVelocity(0.0), x, torch.tensor([1.0]), cond={"b": x})


def test_cfg_combines_branches_in_one_batched_call():
    inner = CountingDenoiser(LinearVelocity(1.0))
    x = torch.randn(2, 1, 1, 2, 2)
    sigma = torch.full((2,), 0.5)
    cond = {"b": torch.ones_like(x), "negative_b": torch.zeros_like(x)}
    guided = CFGDenoiser(inner, 5.0)(x, sigma, cond)
    v_c, v_u = x + 1, x
    torch.testing.assert_close(guided, v_u + 5.0 * (v_c - v_u))
    assert inner.nfe == 4  # 2 samples x 2 branches, in one forward
    plain = CountingDenoiser(LinearVelocity(1.0))
    torch.testing.assert_close(CFGDenoiser(plain, 1.0)(x, sigma, cond), v_c)
    assert plain.nfe == 2  # guidance 1 runs only the conditional branch


def test_append_dims():
    assert append_dims(torch.ones(3), 5).shape == (3, 1, 1, 1, 1)
    with pytest.raises(ValueError):
        append_dims(torch.ones(3, 2), 1)


def test_shared_signature_has_no_unused_arguments():
    params = inspect.signature(sample_euler).parameters
    assert list(params) == ["denoiser", "x", "sigmas", "cond", "callback"]
    assert all(params[name].kind is inspect.Parameter.KEYWORD_ONLY for name in ("cond", "callback"))


def test_loop_stays_in_x_dtype_and_denoiser_sees_the_schedules_sigma():
    """float32 latents stay float32; each step's sigma reaches the denoiser as the schedule's float64 value."""
    seen = []

    def denoiser(x, sigma, cond):
        seen.append((x.dtype, sigma.dtype, sigma.tolist()))
        return torch.ones_like(x)

    sigmas = torch.tensor([1.0, 0.9818, 0.0], dtype=torch.float64)
    out = sample_euler(denoiser, torch.zeros(2, 1, 1, 1, 1), sigmas, cond={})
    assert out.dtype == torch.float32
    assert seen == [(torch.float32, torch.float64, [1.0, 1.0]), (torch.float32, torch.float64, [0.9818, 0.9818])]
    with pytest.raises(ValueError, match="float32 or float64"):
        sample_euler(denoiser, torch.zeros(1, 1, 1, 1, 1), sigmas.bfloat16(), cond={})


@torch.no_grad()
def test_transformer_denoiser_casts_only_the_transformer_input():
    """A bf16 transformer gets bf16 latents and text and a float32 timestep t = 1000 sigma; v comes back float32."""
    transformer = cast_model(wan.tiny_wan_components()["transformer"].eval(), torch.bfloat16)
    seen = {}

    def record(module, args, kwargs):
        seen.update({k: (v.dtype, v.clone()) for k, v in kwargs.items() if isinstance(v, torch.Tensor)})

    transformer.register_forward_pre_hook(record, with_kwargs=True)
    x = torch.randn(2, 16, 2, 4, 4)
    cond = {"encoder_hidden_states": torch.randn(2, 6, 32), "negative_encoder_hidden_states": torch.zeros(2, 6, 32)}
    sigma = torch.tensor([0.9754098, 0.5], dtype=torch.float64)
    v = TransformerDenoiser(transformer, 1000, wan.COND_KEYS)(x, sigma, cond)
    assert v.dtype == torch.float32 and v.shape == x.shape
    assert seen["hidden_states"][0] == torch.bfloat16 and seen["encoder_hidden_states"][0] == torch.bfloat16
    assert seen["timestep"][0] == torch.float32
    torch.testing.assert_close(seen["timestep"][1], torch.tensor([975.4098, 500.0]))  # not bf16's 976
    assert "sigma" not in seen  # a plain transformer gets no routing input
    # float32-kept modules stayed float32 (diffusers' _keep_in_fp32_modules).
    assert transformer.condition_embedder.time_embedder.linear_1.weight.dtype == torch.float32


@torch.no_grad()
def test_transformer_denoiser_passes_sigma_to_a_router():
    grid = build_grid(ScheduleConfig(boundary_index=35))
    config = DetailExpertConfig(duplicated_modules=wan.DUPLICATED_MODULES, lora_rank=2, lora_alpha=4.0)
    router = DualExpertTransformer(wan.tiny_wan_components()["transformer"].eval(), grid, config)
    seen = {}
    router.register_forward_pre_hook(lambda m, a, kw: seen.update(kw), with_kwargs=True)
    sigma = torch.tensor([grid.boundary_sigma], dtype=torch.float64)
    TransformerDenoiser(router, 1000, wan.COND_KEYS)(torch.randn(1, 16, 2, 4, 4), sigma,
                                                     {"encoder_hidden_states": torch.randn(1, 6, 32)})  # fmt: skip
    assert seen["sigma"] is sigma and seen["timestep"].dtype == torch.float32


def test_cfg_broadcasts_one_negative_and_names_a_missing_one():
    inner = CountingDenoiser(LinearVelocity(1.0))
    x = torch.randn(3, 1, 1, 2, 2)
    sigma = torch.full((3,), 0.5)
    cond = {"b": torch.ones_like(x), "negative_b": torch.zeros(1, 1, 1, 2, 2)}
    torch.testing.assert_close(CFGDenoiser(inner, 6.0)(x, sigma, cond), x + 6.0)
    assert inner.nfe == 6
    with pytest.raises(ValueError, match="needs cond\\['negative_b'\\]"):
        CFGDenoiser(inner, 6.0)(x, sigma, {"b": cond["b"]})
