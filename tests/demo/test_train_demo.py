"""The demo stack's training: VAE and teacher losses go down; the stages write folders the platform loads."""

import numpy as np
import pytest
import torch

from dcm.demo.training import (
    DemoTeacherConfig,
    DemoVAEConfig,
    build_teacher,
    build_vae,
    clip_batch,
    flow_matching_loss,
    vae_loss,
)
from dcm.shapes.world import WorldConfig

WORLD = WorldConfig(size=32, num_frames=9, pixels_per_frame=1.0)
TINY_VAE = DemoVAEConfig(base_dim=8, dim_mult=(1, 1, 1, 1), num_steps=1)
TINY_TEACHER = DemoTeacherConfig(num_layers=1, num_attention_heads=2, attention_head_dim=8, ffn_dim=16)


def test_vae_and_teacher_losses_decrease_on_a_fixed_batch():
    torch.manual_seed(0)
    vae = build_vae(TINY_VAE)
    pixels, _ = clip_batch(range(2), WORLD)
    optimizer = torch.optim.AdamW(vae.parameters(), lr=3e-3)
    losses = []
    for _ in range(12):
        torch.manual_seed(1)  # the same posterior sample every step: a fixed objective
        loss = vae_loss(vae, pixels, TINY_VAE)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.7 * losses[0], losses

    teacher = build_teacher(TINY_TEACHER, latent_channels=16, text_dim=8)
    x0, text = torch.randn(2, 16, 3, 4, 4), torch.randn(2, 5, 8)
    optimizer = torch.optim.AdamW(teacher.parameters(), lr=3e-3)
    losses = []
    for _ in range(15):
        loss = flow_matching_loss(teacher, x0, text, shift=5.0, generator=torch.Generator().manual_seed(0))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.8 * losses[0], losses


@pytest.mark.slow
def test_stages_write_a_teacher_the_platform_loads(tmp_path):
    from dcm.data import LatentDataset
    from dcm.io.model_folder import load_pipeline
    from jobs.train_demo import main

    work = str(tmp_path / "demo")
    common = ["--work-dir", work, "--scale", "test", "--size", "32", "--frames", "9"]
    for stage, extra in (("vae", ["--vae-steps", "2"]), ("teacher", ["--teacher-steps", "2"]),
                         ("data", ["--data-clips", "4"])):  # fmt: skip
        assert main([*common, "--stage", stage, *extra]) == 0
    teacher = load_pipeline(f"{work}/teacher")
    assert not teacher.is_dual_expert and teacher.max_sequence_length == 32
    frames = teacher.generate(["a red circle moving left"], seeds=[0])
    assert frames.shape == (1, 9, 32, 32, 3) and np.isfinite(frames).all()
    assert len(LatentDataset(f"{work}/data")) == 4
