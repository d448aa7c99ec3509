"""Stage II trains only the detail expert and discriminator; checkpoints restore optimizer state exactly (no Ray)."""

from dataclasses import replace
from pathlib import Path

import pytest
import torch

from dcm.cluster.train import DISC_OPTIMIZER, OPTIMIZER, adamw, build_models, load_checkpoint, save_checkpoint
from dcm.distill.config import DETAIL_STAGE
from dcm.distill.consistency import sample_indices
from dcm.distill.recipes import tiny, tiny_hunyuan
from dcm.distill.steps import detail_generator_loss, discriminator_loss, guided_velocity, velocity
from dcm.experts import SEMANTIC
from dcm.io.model_folder import load_pipeline
from dcm_demo.synthetic import write_synthetic_dataset


def detail_setup(tmp_path, recipe=tiny, teacher="tiny-wan"):
    data = str(tmp_path / "data")
    write_synthetic_dataset(load_pipeline(teacher), data, num_samples=4, num_frames=9, height=32, width=32)
    config = replace(recipe(data=data, output=str(tmp_path / "out")), stages=(DETAIL_STAGE,))
    models = build_models(config, DETAIL_STAGE, torch.device("cpu"))
    optimizers = {
        OPTIMIZER: adamw(list(models.trainable.values()), config.detail.optimizer),
        DISC_OPTIMIZER: adamw(models.discriminator.parameters(), config.detail.disc_optimizer),
    }
    return config, models, optimizers


def run_detail_steps(config, models, optimizers, num_steps, rng):
    from dcm.data import LatentDataset

    data = LatentDataset(config.data)
    grid = models.student.grid
    lo, hi = grid.detail_range()
    batch = {k: v[:2] for k, v in data.tensors.items()}
    x0 = batch.pop("latents")
    cond = batch
    losses = []
    for _ in range(num_steps):
        eps, xi = torch.randn(x0.shape, generator=rng), torch.randn(x0.shape, generator=rng)
        index, adv = sample_indices(2, lo, hi, rng), sample_indices(2, lo, hi, rng)
        token_grid = models.pipeline.geometry.token_grid(tuple(x0.shape))
        loss, metrics, (fake, real) = detail_generator_loss(
            student=velocity(models.student, cond, 1000),
            teacher=guided_velocity(models.teacher, cond, data.negative, config.teacher_cfg_weight, 1000),
            target=velocity(models.student, cond, 1000), features=models.features,
            discriminator=models.discriminator, cond=cond, x0=x0, eps=eps, index=index, adv_index=adv, xi=xi,
            grid=grid, token_grid=token_grid, config=config.detail, huber_c=config.huber_c,
        )  # fmt: skip
        optimizers[OPTIMIZER].zero_grad()
        loss.backward()
        optimizers[OPTIMIZER].step()
        optimizers[DISC_OPTIMIZER].zero_grad()
        discriminator_loss(models.discriminator, fake, real, token_grid).backward()
        optimizers[DISC_OPTIMIZER].step()
        losses.append(metrics["loss_cd"])
    return losses


@pytest.mark.parametrize("recipe, teacher", [(tiny, "tiny-wan"), (tiny_hunyuan, "tiny-hunyuan")])
def test_stage_two_changes_only_detail_and_discriminator(tmp_path, recipe, teacher):
    config, models, optimizers = detail_setup(tmp_path, recipe, teacher)
    teacher_before = {k: v.clone() for k, v in models.teacher.state_dict().items()}
    semantic_before = models.student.expert_state_dict(SEMANTIC)
    detail_before = {k: v.detach().clone() for k, v in models.trainable.items()}
    disc_before = {k: v.clone() for k, v in models.discriminator.state_dict().items()}
    run_detail_steps(config, models, optimizers, 3, torch.Generator().manual_seed(0))
    for name, tensor in models.teacher.state_dict().items():
        assert torch.equal(tensor, teacher_before[name]), f"teacher weight {name} changed"
    for name, tensor in models.student.expert_state_dict(SEMANTIC).items():
        assert torch.equal(tensor, semantic_before[name]), f"semantic expert weight {name} changed"
    changed = [k for k, v in models.trainable.items() if not torch.equal(v.detach(), detail_before[k])]
    assert any(".lora_B." in k for k in changed) and any(".detail." in k for k in changed)
    assert set(changed) <= set(detail_before)
    assert any(not torch.equal(v, disc_before[k]) for k, v in models.discriminator.state_dict().items())


def test_checkpoint_restores_weights_optimizers_and_rng(tmp_path):
    config, models, optimizers = detail_setup(tmp_path)
    rng = torch.Generator().manual_seed(1)
    run_detail_steps(config, models, optimizers, 2, rng)
    path = Path(tmp_path / "ckpt")
    path.mkdir()
    save_checkpoint(path, models, optimizers, 2, rng)
    expected_next = torch.randn(3, generator=rng)  # drawn after the save: what a resumed run must draw next

    _, fresh, fresh_opts = detail_setup(tmp_path / "again")
    rng2 = torch.Generator().manual_seed(99)
    assert load_checkpoint(path, fresh, fresh_opts, rng2) == 2
    for name in models.trainable:
        assert torch.equal(fresh.trainable[name], models.trainable[name]), name
    for key in (OPTIMIZER, DISC_OPTIMIZER):
        saved, loaded = optimizers[key].state_dict(), fresh_opts[key].state_dict()
        assert saved["param_groups"] == loaded["param_groups"]
        for pid, state in saved["state"].items():
            for field, value in state.items():
                assert torch.equal(torch.as_tensor(value), torch.as_tensor(loaded["state"][pid][field])), (key, field)
    assert torch.equal(torch.randn(3, generator=rng2), expected_next)  # the noise stream continues where it was


def test_stage_two_consistency_loss_decreases_on_a_fixed_batch(tmp_path):
    config, models, optimizers = detail_setup(tmp_path)
    config = replace(config, detail=replace(config.detail, adv_weight=0.0))
    for group in optimizers[OPTIMIZER].param_groups:
        group["lr"] = 3e-3
    # Same noise and indices every step: the objective is fixed, so it must go down.
    losses = []
    for _ in range(12):
        losses += run_detail_steps(config, models, optimizers, 1, torch.Generator().manual_seed(0))
    assert losses[-1] < 0.8 * losses[0], losses
