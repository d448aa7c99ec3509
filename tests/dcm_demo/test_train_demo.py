"""The demo stack's training: VAE and teacher losses go down, a teacher run resumes bit for bit, and the stages
write folders the platform loads."""

import json
from dataclasses import replace

import numpy as np
import pytest
import torch

from dcm.schedule import dcm_sigmas
from dcm_demo.evaluate import object_masks
from dcm_demo.stages import load_teacher_checkpoint, save_teacher_checkpoint
from dcm_demo.text import MAX_SEQUENCE_LENGTH
from dcm_demo.training import (
    DemoTeacherConfig,
    DemoVAEConfig,
    TeacherTrainer,
    build_teacher,
    build_vae,
    clip_batch,
    colour_contrast,
    cosine_lr,
    flow_matching_loss,
    latent_object_weights,
    object_crops,
    object_mask,
    object_weights,
    recolour_objects,
    train_teacher,
    vae_loss,
)
from dcm_demo.world import COLOURS, WorldConfig, make_clip

WORLD = WorldConfig(size=32, num_frames=9, pixels_per_frame=1.0)
TINY_VAE = DemoVAEConfig(base_dim=8, dim_mult=(1, 1, 1), num_steps=1)
TINY_TEACHER = DemoTeacherConfig(num_layers=1, num_attention_heads=2, attention_head_dim=8, ffn_dim=16)


def test_vae_and_teacher_losses_decrease_on_a_fixed_batch():
    torch.manual_seed(0)
    vae = build_vae(TINY_VAE)
    pixels, _ = clip_batch(range(2), WORLD)
    optimizer = torch.optim.AdamW(vae.parameters(), lr=3e-3)
    losses = []
    for _ in range(16):
        torch.manual_seed(1)  # the same posterior sample every step: a fixed objective
        loss = vae_loss(vae, pixels, TINY_VAE)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.8 * losses[0], losses

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


def test_object_weights_mark_the_object_pixels():
    pixels, _ = clip_batch([7], WORLD)  # (1, 3, F, H, W)
    weights = object_weights(pixels, weight=20.0, threshold=0.3)
    assert weights.shape == (1, 1, 9, 32, 32) and set(weights.unique().tolist()) == {1.0, 21.0}
    truth = make_clip(7, WORLD).frames  # the rendered object is exactly where the weights are high
    on_object = torch.from_numpy(object_masks(truth))
    assert torch.equal(weights[0, 0] > 1, on_object)
    # With a margin the weighted region is the object grown by that many pixels in every direction.
    ringed = object_weights(pixels, weight=20.0, threshold=0.3, margin=2)[0, 0] > 1
    grown = torch.nn.functional.max_pool2d(on_object.float()[:, None], 5, stride=1, padding=2)[:, 0] > 0
    assert torch.equal(ringed, grown) and ringed.sum() > on_object.sum()


def test_latent_object_weights_mark_cells_far_from_the_background():
    x0 = torch.zeros(2, 4, 3, 8, 8)
    x0[0, :, :, 2:4, 5:7] = 3.0  # a 2x2 object in clip 0, norm 6 over 4 channels; clip 1 is all background
    weights = latent_object_weights(x0, weight=4.0, threshold=4.0)
    assert weights.shape == (2, 1, 3, 8, 8)
    assert torch.equal(weights[0, 0, :, 2:4, 5:7], torch.full((3, 2, 2), 5.0)) and weights[0].sum() == 3 * (60 + 20)
    assert torch.equal(weights[1], torch.ones(1, 3, 8, 8))
    # The object cells count more: the same prediction errors give another loss.
    teacher = build_teacher(TINY_TEACHER, latent_channels=4, text_dim=8)
    text = torch.randn(2, 5, 8)
    plain = flow_matching_loss(teacher, x0, text, shift=5.0, generator=torch.Generator().manual_seed(0))
    weighted = flow_matching_loss(teacher, x0, text, shift=5.0, generator=torch.Generator().manual_seed(0),
                                  object_weight=4.0)  # fmt: skip
    assert torch.isfinite(weighted) and not torch.isclose(plain, weighted)


def test_object_crops_hold_the_object():
    world = WorldConfig(size=64, num_frames=5)
    pixels, _ = clip_batch(range(12), world)
    crops = object_crops(pixels, 32, threshold=0.3, generator=torch.Generator().manual_seed(0))
    assert crops.shape == (12, 3, 5, 32, 32)
    for seed, crop in zip(range(12), crops):
        clip = make_clip(seed, world)
        full = int(object_masks(clip.frames).sum())
        # Most of the object's pixels over the clip are inside the window (it is at most a quarter window off).
        kept = int(object_masks(((crop.permute(1, 2, 3, 0) + 1) * 127.5).round().byte().numpy()).sum())
        assert kept >= 0.6 * full, (seed, kept, full)
    with pytest.raises(ValueError, match="crop_size 80"):
        object_crops(pixels, 80, threshold=0.3, generator=torch.Generator())


def test_vae_loss_decodes_the_posterior_mean():
    torch.manual_seed(0)
    vae = build_vae(TINY_VAE)
    pixels, _ = clip_batch(range(2), WORLD)
    decoded = []
    handle = vae.post_quant_conv.register_forward_hook(lambda m, i, o: decoded.append(i[0].detach()))
    with torch.no_grad():
        mean = vae.encode(pixels).latent_dist.mode()
        vae_loss(vae, pixels, TINY_VAE)
        vae_loss(vae, pixels, TINY_VAE)
    handle.remove()
    torch.testing.assert_close(decoded[0], mean)
    torch.testing.assert_close(decoded[1], mean)


def test_teacher_training_replaces_dropped_captions_with_the_empty_prompt():
    teacher = build_teacher(TINY_TEACHER, latent_channels=16, text_dim=8)
    latents, text = torch.randn(4, 16, 3, 4, 4), torch.randn(4, 5, 8)
    config = replace(TINY_TEACHER, num_steps=3, batch_size=2, caption_dropout=1.0)
    seen = []
    handle = teacher.condition_embedder.text_embedder.register_forward_hook(lambda m, i, o: seen.append(i[0]))
    losses = train_teacher(teacher, latents=latents, text=text, negative=torch.zeros(1, 5, 8), config=config)
    handle.remove()
    assert len(losses) == 3 and all(torch.count_nonzero(t) == 0 for t in seen)


def tiny_trainer(config: DemoTeacherConfig) -> TeacherTrainer:
    torch.manual_seed(0)
    teacher = build_teacher(config, latent_channels=16, text_dim=8)
    data = torch.Generator().manual_seed(1)
    latents, text = torch.randn(6, 16, 3, 4, 4, generator=data), torch.randn(6, 5, 8, generator=data)
    return TeacherTrainer(teacher, latents=latents, text=text, negative=torch.zeros(1, 5, 8), config=config, seed=3)


def test_a_stopped_teacher_run_continues_bit_for_bit_from_its_checkpoint(tmp_path):
    config = replace(TINY_TEACHER, num_steps=6, batch_size=2, ema_decay=0.9, warmup_steps=2)
    straight = tiny_trainer(config)
    losses = [straight.train_step() for _ in range(6)]
    first = tiny_trainer(config)
    resumed_losses = [first.train_step() for _ in range(3)]
    save_teacher_checkpoint(str(tmp_path / "ckpt"), first)
    second = tiny_trainer(config)  # a fresh process: new weights, optimiser and generator
    second.load_state_dict(load_teacher_checkpoint(str(tmp_path / "ckpt"), config))
    assert second.step == 3
    resumed_losses += [second.train_step() for _ in range(3)]
    assert resumed_losses == losses
    for name, value in straight.final_state_dict().items():
        torch.testing.assert_close(second.final_state_dict()[name], value, rtol=0, atol=0)
    with pytest.raises(ValueError, match="num_steps"):
        load_teacher_checkpoint(str(tmp_path / "ckpt"), replace(config, num_steps=7))
    assert load_teacher_checkpoint(str(tmp_path / "none"), config) is None


def test_a_constant_learning_rate_run_can_be_extended(tmp_path):
    short = replace(TINY_TEACHER, num_steps=2, batch_size=2, lr=1e-3, min_lr=1e-3, warmup_steps=1, ema_decay=0.9)
    longer = replace(short, num_steps=4)
    straight = tiny_trainer(longer)
    losses = [straight.train_step() for _ in range(4)]
    first = tiny_trainer(short)
    extended_losses = [first.train_step() for _ in range(2)]
    save_teacher_checkpoint(str(tmp_path / "ckpt"), first)
    second = tiny_trainer(longer)
    second.load_state_dict(load_teacher_checkpoint(str(tmp_path / "ckpt"), longer))
    extended_losses += [second.train_step() for _ in range(2)]
    assert extended_losses == losses
    with pytest.raises(ValueError, match="lr"):  # a decaying schedule depends on num_steps: no extension
        load_teacher_checkpoint(str(tmp_path / "ckpt"), replace(longer, min_lr=1e-4))


def test_the_ema_follows_the_weights_with_a_warm_up():
    trainer = tiny_trainer(replace(TINY_TEACHER, num_steps=3, batch_size=2, ema_decay=0.99))
    before = {k: v.clone() for k, v in trainer.transformer.state_dict().items()}
    trainer.train_step()
    decay = min(0.99, 2 / 11)  # the warm-up's (1 + step) / (10 + step) after step 1
    after = trainer.transformer.state_dict()
    name = "proj_out.weight"
    torch.testing.assert_close(trainer.final_state_dict()[name], decay * before[name] + (1 - decay) * after[name])
    assert not torch.equal(trainer.final_state_dict()[name], after[name])
    plain = tiny_trainer(replace(TINY_TEACHER, num_steps=3, batch_size=2))
    plain.train_step()
    assert plain.final_state_dict()[name] is plain.transformer.state_dict()[name] or torch.equal(
        plain.final_state_dict()[name], plain.transformer.state_dict()[name])  # fmt: skip
    with pytest.raises(ValueError, match="ema_decay must be in"):
        replace(TINY_TEACHER, ema_decay=1.0)


def test_cosine_lr_warms_up_then_decays_to_the_floor():
    schedule = dict(lr=1e-3, min_lr=1e-4, num_steps=102, warmup_steps=2)
    assert cosine_lr(0, **schedule) == pytest.approx(5e-4) and cosine_lr(1, **schedule) == pytest.approx(1e-3)
    assert cosine_lr(2, **schedule) == pytest.approx(1e-3) and cosine_lr(52, **schedule) == pytest.approx(5.5e-4)
    assert cosine_lr(102, **schedule) == pytest.approx(1e-4) and cosine_lr(500, **schedule) == pytest.approx(1e-4)


@pytest.mark.slow
def test_stages_write_a_teacher_the_platform_loads(tmp_path, capsys):
    from dcm.data import LatentDataset
    from dcm.io.model_folder import load_pipeline
    from jobs.train_demo import main

    work = str(tmp_path / "demo")
    common = ["--work-dir", work, "--scale", "test", "--size", "32", "--frames", "9"]
    for stage, extra in (("vae", ["--vae-steps", "2", "--vae-finetune-steps", "1"]), ("data", ["--data-clips", "8"]),
                         ("teacher", ["--teacher-steps", "2"])):  # fmt: skip
        assert main([*common, "--stage", stage, *extra]) == 0
    vae_report = json.loads((tmp_path / "demo" / "vae" / "shapesbench.json").read_text())
    assert set(vae_report) >= {"colour_acc", "colour_separation"} and len(vae_report["colour_separation"]) == 15
    teacher = load_pipeline(f"{work}/teacher")
    assert not teacher.is_dual_expert and teacher.max_sequence_length == MAX_SEQUENCE_LENGTH
    assert teacher.with_defaults().num_inference_steps == 50 and teacher.with_defaults().guidance_scale == 5.0
    frames = teacher.generate(["a red circle moving left"], seeds=[0], config=teacher.with_defaults(
        num_inference_steps=2))  # fmt: skip
    assert frames.shape == (1, 9, 32, 32, 3) and np.isfinite(frames).all()
    data = LatentDataset(f"{work}/data")
    assert len(data) == 8 and data.tensors["encoder_hidden_states"].shape[1:] == (MAX_SEQUENCE_LENGTH, 32)
    record = json.loads((tmp_path / "demo" / "teacher" / "training.json").read_text())
    assert record["step"] == 2 and record["teacher"]["num_steps"] == 2
    # The finished run's checkpoint belongs to its config: a longer run of it is refused, in one line.
    assert main([*common, "--stage", "teacher", "--teacher-steps", "3"]) == 2
    assert "num_steps" in capsys.readouterr().err
    assert main([*common, "--stage", "teacher", "--data-clips", "0"]) == 2
    assert "data_clips must be positive, got 0" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.ray
def test_single_expert_baseline_trains_through_the_distillation_job(tmp_path, ray_cluster):
    from dcm.io.model_folder import load_pipeline
    from dcm_demo.stages import run_recipe
    from jobs.train_demo import main

    work = str(tmp_path / "demo")
    common = ["--work-dir", work, "--scale", "test", "--size", "32", "--frames", "9"]
    for stage, extra in (("vae", ["--vae-steps", "1", "--vae-finetune-steps", "1"]), ("data", ["--data-clips", "8"]),
                         ("teacher", ["--teacher-steps", "1"])):  # fmt: skip
        assert main([*common, "--stage", stage, *extra]) == 0
    run_recipe(work, "demo-pcm", f"{work}/baselines/pcm", 1, 1)
    student = load_pipeline(f"{work}/baselines/pcm/semantic")
    assert student.grid.is_single_expert and student.grid.config.num_semantic_phases == 4
    defaults = student.with_defaults()
    assert (defaults.num_inference_steps, defaults.guidance_scale) == (4, 1.0)  # the student's, not the teacher's
    assert student.sigmas(defaults).tolist() == pytest.approx([*dcm_sigmas(4, student.grid), 0.0])
    frames = student.generate(["a blue square moving up"], seeds=[1])
    assert frames.shape == (1, 9, 32, 32, 3)


def test_recolour_objects_paints_each_object_in_another_palette_colour_and_keeps_the_background():
    pixels, captions = clip_batch(range(12), WORLD)
    recoloured = recolour_objects(pixels, WORLD, threshold=0.3, generator=torch.Generator().manual_seed(0))
    mask = object_mask(pixels, threshold=0.3)
    torch.testing.assert_close(recoloured[~mask.expand_as(pixels)], pixels[~mask.expand_as(pixels)])
    palette = {name: torch.tensor(rgb) / 127.5 - 1 for name, rgb in COLOURS.items()}
    for clip, clip_mask, caption in zip(recoloured, mask[:, 0], captions):
        painted = clip.permute(1, 2, 3, 0)[clip_mask]  # (N, 3)
        assert len(painted) > 0
        names = [n for n, rgb in palette.items() if torch.allclose(painted, rgb.expand_as(painted))]
        assert len(names) == 1 and names[0] not in caption.split(), (caption, names)


def test_colour_contrast_is_the_margin_for_identical_latents_and_zero_past_it():
    latents = torch.randn(4, 16, 2, 4, 4)
    assert colour_contrast(latents, latents, margin=0.5).item() == pytest.approx(0.5)
    far = latents + 10 * torch.randn_like(latents)
    assert colour_contrast(latents, far, margin=0.5).item() == 0.0
    # Below the margin a gradient step on the recoloured latents moves them away and lowers the loss.
    recoloured = (latents + 0.01 * torch.randn_like(latents)).requires_grad_()
    before = colour_contrast(latents, recoloured, margin=0.5)
    before.backward()
    with torch.no_grad():
        after = colour_contrast(latents, recoloured - 1000.0 * recoloured.grad, margin=0.5)
    assert after.item() < before.item() - 0.05, (before.item(), after.item())


def test_vae_loss_adds_the_weighted_colour_contrast_of_the_recoloured_clips():
    torch.manual_seed(0)
    vae = build_vae(TINY_VAE)
    pixels, _ = clip_batch(range(2), WORLD)
    config = replace(TINY_VAE, colour_contrast_weight=2.0, colour_contrast_margin=0.5)
    with torch.no_grad():
        plain = vae_loss(vae, pixels, config)
        same = vae_loss(vae, pixels, config, recoloured=pixels)  # identical versions: the hinge is the full margin
        off = vae_loss(vae, pixels, replace(config, colour_contrast_weight=0.0), recoloured=pixels)
    assert same.item() == pytest.approx(plain.item() + 2.0 * 0.5, abs=1e-5)
    assert off.item() == pytest.approx(plain.item(), abs=1e-6)
