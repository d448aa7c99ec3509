"""Sampler contracts and denoiser wrappers (k-diffusion-style signature, Euler on velocity)."""

import pytest
import torch

from dcm.sampling import CFGDenoiser, CountingDenoiser, append_dims, sample_euler


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
