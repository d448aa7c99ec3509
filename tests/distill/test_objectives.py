"""DCM objectives against hand-computed values, per-sample phase ends, and losses that decrease (no Ray)."""

import copy

import pytest
import torch

from dcm.config import ScheduleConfig
from dcm.distill.adversarial import discriminator_hinge, feature_matching, generator_hinge, renoise
from dcm.distill.consistency import consistency_pair, euler_move, noisy, pseudo_huber
from dcm.distill.discriminator import Discriminator, DiscriminatorConfig
from dcm.distill.features import TeacherFeatures, num_taps
from dcm.distill.temporal import frame_differences, temporal_coherence_loss
from dcm.models import wan
from dcm.schedule import build_grid

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
    student = lambda x, s: 0.5 * x  # noqa: E731
    teacher = lambda x, s: -x  # noqa: E731
    target = lambda x, s: 2 * x  # noqa: E731
    x0, eps = torch.randn(4, 2, 3, 2, 2), torch.randn(4, 2, 3, 2, 2)
    index = torch.tensor([40, 3, 35, 0])  # semantic, detail, semantic phase start, detail phase start
    x_hat, x_tilde, sigma_end = consistency_pair(student=student, teacher=teacher, target=target, x0=x0, eps=eps,
                                                 index=index, grid=GRID)  # fmt: skip
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


def test_teacher_feature_taps_and_discriminator_grid():
    transformer = wan.tiny_wan_components()["transformer"].eval()
    assert num_taps(transformer, "wan", 1) == 2 and num_taps(transformer, "wan", 2) == 1
    with pytest.raises(ValueError, match="stride must divide the teacher depth 2, got 3"):
        num_taps(transformer, "wan", 3)
    features = TeacherFeatures(transformer, "wan", 1)
    x = torch.randn(2, 16, 3, 8, 8)
    cond = {"encoder_hidden_states": torch.randn(2, 5, 32)}
    t = torch.tensor([500.0, 900.0])
    tokens, readouts = features(x, t, cond)
    assert [tuple(f.shape) for f in tokens] == [(2, 3 * 4 * 4, 24)] * 2
    assert all(r.shape == x.shape for r in readouts)
    # The read-out of the last block's output is the model's own output.
    out = transformer(hidden_states=x, timestep=t, return_dict=False, **cond)[0]
    torch.testing.assert_close(readouts[-1], out, atol=1e-5, rtol=0)
    features.remove()
    disc = Discriminator(2, 24, DiscriminatorConfig(hidden=16, groups=4))
    logits = disc(tokens, (3, 4, 4))
    assert [tuple(lg.shape) for lg in logits] == [(6, 1, 4, 4)] * 2
    with pytest.raises(ValueError, match="do not fill the token grid"):
        disc(tokens, (3, 4, 5))


def test_semantic_objective_decreases_on_a_fixed_batch():
    from dcm.distill.config import SemanticStageConfig
    from dcm.distill.steps import guided_velocity, semantic_loss, velocity

    teacher = wan.tiny_wan_components()["transformer"].eval().requires_grad_(False)
    student = copy.deepcopy(teacher).train().requires_grad_(True)
    with torch.no_grad():  # start away from the teacher so there is something to learn
        for p in student.parameters():
            p.add_(0.05 * torch.randn_like(p))
    cond = {"encoder_hidden_states": torch.randn(2, 5, 32)}
    negative = {"encoder_hidden_states": torch.zeros(1, 5, 32)}
    x0, eps, index = torch.randn(2, 16, 5, 4, 4), torch.randn(2, 16, 5, 4, 4), torch.tensor([36, 45])
    optimizer = torch.optim.AdamW(student.parameters(), lr=1e-3)
    losses = []
    for _ in range(15):
        loss, metrics = semantic_loss(
            student=velocity(student, cond, 1000), teacher=guided_velocity(teacher, cond, negative, 5.0, 1000),
            target=velocity(student, cond, 1000), x0=x0, eps=eps, index=index, grid=GRID,
            config=SemanticStageConfig(num_steps=1), huber_c=1e-3,
        )  # fmt: skip
        assert "loss_tc" in metrics  # 5 latent frames > stride 3
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.7 * losses[0], losses


def test_hunyuan_feature_taps_read_out_like_the_model():
    from dcm.models import hunyuan

    transformer = hunyuan.tiny_hunyuan_components(hunyuan.TinyHunyuanSpec(num_single_layers=2))["transformer"].eval()
    features = TeacherFeatures(transformer, "hunyuan", 1)
    x = torch.randn(2, 4, 2, 4, 4)
    cond = {
        "encoder_hidden_states": torch.randn(2, 5, 16),
        "encoder_attention_mask": torch.ones(2, 5, dtype=torch.long),
        "pooled_projections": torch.randn(2, 8),
        "guidance": torch.full((2,), 6000.0),
    }
    t = torch.tensor([300.0, 800.0])
    tokens, readouts = features(x, t, cond)
    assert [tuple(f.shape) for f in tokens] == [(2, 2 * 4 * 4, 20)] * 2  # latent tokens only, no text tokens
    out = transformer(hidden_states=x, timestep=t, return_dict=False, **cond)[0]
    torch.testing.assert_close(readouts[-1], out, atol=1e-5, rtol=0)
    features.remove()
