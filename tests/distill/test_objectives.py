"""DCM objectives against hand-computed values, per-sample phase ends, and losses that decrease (no Ray)."""

import pytest
import torch

from dcm.config import ScheduleConfig
from dcm.distill.adversarial import (
    discriminator_hinge,
    feature_matching,
    generator_hinge,
    renoise,
    renoise_indices,
)
from dcm.distill.consistency import consistency_pair, euler_move, noisy, pseudo_huber
from dcm.distill.discriminator import Discriminator, DiscriminatorConfig
from dcm.distill.features import TappedTeacher, num_taps
from dcm.distill.steps import discriminator_loss
from dcm.distill.temporal import frame_differences, temporal_coherence_loss
from dcm.models import hunyuan, wan
from dcm.sampling import TransformerDenoiser
from dcm.schedule import build_grid, phase_edges

GRID = build_grid(ScheduleConfig(boundary_index=35))


def test_pseudo_huber_hand_value():
    a, b = torch.tensor([0.0, 3.0]), torch.tensor([4.0, 3.0])
    c = 1e-3
    expected = ((16 + c**2) ** 0.5 - c + 0.0) / 2
    assert pseudo_huber(a, b, c).item() == pytest.approx(expected, rel=1e-6)


def test_tcl_hand_values():
    # x[:, :, t] = t^2 along time; target = 0: D[t] = (t+3)^2 - t^2 = 6t + 9, i.e. 9 and 15.
    x = torch.arange(5.0).pow(2).view(1, 1, 5, 1, 1)
    diffs = frame_differences(x, 3).flatten().tolist()
    assert diffs == [9.0, 15.0]
    loss = temporal_coherence_loss(x, torch.zeros_like(x), 3)
    assert loss.item() == pytest.approx((81 + 225) / 2)
    assert temporal_coherence_loss(x[:, :, :3], x[:, :, :3], 3) is None  # too few latent frames


def test_renoise_hand_values():
    x, xi = torch.full((1, 1, 1, 1, 1), 2.0), torch.full((1, 1, 1, 1, 1), -1.0)
    sa, se = torch.tensor([0.5]), torch.tensor([0.1])
    expected = ((1 - 0.5) * 2.0 + (0.5 - 0.1) * -1.0) / (1 - 0.1)
    assert renoise(x, xi, sa, se).item() == pytest.approx(expected)
    assert renoise(x, xi, se, se).item() == pytest.approx(2.0)  # adv index at the phase end: no noise


def test_hinge_and_feature_matching_hand_values():
    fake, real = [torch.tensor([0.5, -2.0])], [torch.tensor([2.0, 0.0])]
    assert generator_hinge(fake, 5.0).item() == pytest.approx(5 * (0.5 + 3.0) / 2)
    assert discriminator_hinge(fake, real).item() == pytest.approx((1.5 + 0.0) / 2 + (0.0 + 1.0) / 2)
    assert feature_matching([torch.ones(1, 4)], [torch.zeros(1, 4)]).item() == 1.0


def test_consistency_pair_matches_the_formulas_per_sample():
    """Linear velocity models make every step checkable by hand, and each sample uses its own phase end."""
    student = lambda x, s, cond: 0.5 * x  # noqa: E731
    teacher = lambda x, s, cond: -x  # noqa: E731
    target = lambda x, s, cond: 2 * x  # noqa: E731
    x0, eps = torch.randn(4, 2, 3, 2, 2), torch.randn(4, 2, 3, 2, 2)
    index = torch.tensor([40, 3, 35, 0])  # semantic, detail, semantic phase start, detail phase start
    x_hat, x_tilde, sigma_end = consistency_pair(student=student, teacher=teacher, target=target, x0=x0, eps=eps,
                                                 index=index, grid=GRID, cond={})  # fmt: skip
    for i, n in enumerate(index.tolist()):
        s, sp = float(GRID.sigma[n]), float(GRID.sigma_prev[n])
        end = 35 if n >= 35 else 0
        se = float(GRID.sigma_prev[end])
        assert sigma_end[i].item() == pytest.approx(se)
        x_n = s * eps[i] + (1 - s) * x0[i]
        torch.testing.assert_close(x_hat[i], x_n + (se - s) * 0.5 * x_n)
        x_prev = x_n + (sp - s) * -x_n
        torch.testing.assert_close(x_tilde[i], x_prev + (se - sp) * 2 * x_prev)
    # At the phase start (n == end) the target is exactly one teacher Euler step.
    x_n = noisy(x0[2:3], eps[2:3], GRID.sigma[35:36].float())
    step = euler_move(x_n, -x_n, GRID.sigma[35:36].float(), GRID.sigma_prev[35:36].float())
    torch.testing.assert_close(x_tilde[2:3], step)


def tapped(transformer, family, cond_keys, stride=1):
    return TappedTeacher(TransformerDenoiser(transformer, 1000, cond_keys), family, stride)


def test_teacher_feature_taps_and_discriminator_grid():
    transformer = wan.tiny_wan_components()["transformer"].eval()
    assert num_taps(transformer, "wan", 1) == 2 and num_taps(transformer, "wan", 2) == 1
    with pytest.raises(ValueError, match="stride must divide the teacher depth 2, got 3"):
        num_taps(transformer, "wan", 3)
    teacher = tapped(transformer, "wan", wan.COND_KEYS)
    x = torch.randn(2, 16, 3, 8, 8)
    cond = {"encoder_hidden_states": torch.randn(2, 5, 32)}
    sigma = torch.tensor([0.5, 0.9])
    v, tokens, readouts = teacher(x, sigma, cond, taps=True)
    assert [tuple(f.shape) for f in tokens] == [(2, 3 * 4 * 4, 24)] * 2
    assert all(r.shape == x.shape for r in readouts)
    # The read-out of the last block's output is the model's own output, and the velocity is the plain denoiser's.
    torch.testing.assert_close(readouts[-1], v, atol=1e-5, rtol=0)
    torch.testing.assert_close(teacher(x, sigma, cond), v)
    teacher.remove()
    disc = Discriminator(2, 24, DiscriminatorConfig(hidden=16, groups=4))
    logits = disc(tokens, (3, 4, 4))
    assert [tuple(lg.shape) for lg in logits] == [(6, 1, 4, 4)] * 2
    with pytest.raises(ValueError, match="do not fill the token grid"):
        disc(tokens, (3, 4, 5))
    # The discriminator step runs fake and real as one batch: the same hinge as two separate calls.
    fake, real = [t.detach() for t in tokens], [torch.randn_like(t) for t in tokens]
    separate = discriminator_hinge(disc(fake, (3, 4, 4)), disc(real, (3, 4, 4)))
    torch.testing.assert_close(discriminator_loss(disc, fake, real, (3, 4, 4)), separate)


def test_feature_taps_survive_activation_checkpointing():
    """Under checkpointing the blocks run again in the backward pass; the taps and their gradients are unchanged."""
    results = []
    for checkpointing in (False, True):
        transformer = wan.tiny_wan_components()["transformer"].eval().requires_grad_(False)
        if checkpointing:
            transformer.enable_gradient_checkpointing()
        calls = []
        transformer.blocks[0].register_forward_pre_hook(lambda *_, calls=calls: calls.append(1))
        teacher = tapped(transformer, "wan", wan.COND_KEYS)
        x = torch.randn(2, 16, 3, 8, 8, generator=torch.Generator().manual_seed(0)).requires_grad_(True)
        cond = {"encoder_hidden_states": torch.ones(2, 5, 32)}
        _, tokens, readouts = teacher(x, torch.tensor([0.3, 0.6]), cond, taps=True)
        (sum(t.square().mean() for t in tokens) + sum(r.square().mean() for r in readouts)).backward()
        results.append(([t.detach() for t in tokens], x.grad.clone(), len(calls)))
        assert not teacher._tokens  # nothing retained from the recompute
    (tokens_plain, grad_plain, calls_plain), (tokens_ckpt, grad_ckpt, calls_ckpt) = results
    assert (calls_plain, calls_ckpt) == (1, 2)  # the checkpointed block really ran again
    for a, b in zip(tokens_plain, tokens_ckpt):
        torch.testing.assert_close(a, b)
    torch.testing.assert_close(grad_plain, grad_ckpt)


def test_renoising_stays_inside_the_sample_s_own_detail_phase():
    """With several detail phases the re-noise level is never below the phase end (the coefficient is >= 0)."""
    for phases in (1, 2, 5):
        grid = build_grid(ScheduleConfig(boundary_index=35, num_detail_phases=phases))
        index = torch.arange(35).repeat(40)  # every detail index, many draws
        adv = renoise_indices(index, grid, torch.Generator().manual_seed(0))
        edges = phase_edges(0, 35, phases).tolist() + [35]
        for n, a in zip(index.tolist(), adv.tolist()):
            lo = max(e for e in edges if e <= n)
            hi = min(e for e in edges if e > n)
            assert lo <= a < hi, (phases, n, a)
        end = torch.tensor([max(e for e in edges if e <= n) for n in index.tolist()])
        coefficient = grid.sigma_prev[adv] - grid.sigma_prev[end]
        assert bool((coefficient >= 0).all())
        if phases == 1:  # the reference's U{0, ..., k - 1}
            assert set(adv.tolist()) == set(range(35))
    with pytest.raises(ValueError, match="re-noising needs detail-range indices in \\[0, 35\\), got \\[40\\]"):
        renoise_indices(torch.tensor([40]), GRID)


def test_hunyuan_feature_taps_read_out_like_the_model():
    transformer = hunyuan.tiny_hunyuan_components(hunyuan.TinyHunyuanSpec(num_single_layers=2))["transformer"].eval()
    teacher = tapped(transformer, "hunyuan", hunyuan.COND_KEYS)
    x = torch.randn(2, 4, 2, 4, 4)
    cond = {
        "encoder_hidden_states": torch.randn(2, 5, 16),
        "encoder_attention_mask": torch.ones(2, 5, dtype=torch.long),
        "pooled_projections": torch.randn(2, 8),
        "guidance": torch.full((2,), 6000.0),
    }
    v, tokens, readouts = teacher(x, torch.tensor([0.3, 0.8]), cond, taps=True)
    assert [tuple(f.shape) for f in tokens] == [(2, 2 * 4 * 4, 20)] * 2  # latent tokens only, no text tokens
    torch.testing.assert_close(readouts[-1], v, atol=1e-5, rtol=0)
    teacher.remove()
