"""DCM model folders: save/load round trip, plain teacher folders, s3:// folders, and the stock-diffusers export."""

import json

import pytest
import torch
from diffusers import WanPipeline

from dcm.config import GenerationConfig
from dcm.experts import DualExpertTransformer
from dcm.io.model_folder import CONFIG_NAME, DETAIL_DIR, export_diffusers, load_pipeline, save_pretrained
from dcm.io.storage import Store
from dcm.models.wan import tiny_wan_components
from dcm.pipeline import DCMPipeline

SMALL = GenerationConfig(num_frames=9, height=32, width=32, num_inference_steps=4)
INTEROP_ATOL = 1e-4


@pytest.fixture(scope="module")
def trained_like():
    """A tiny dual-expert model whose detail expert differs from its semantic expert (as after Stage II)."""
    dcm = load_pipeline("tiny-wan")
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for _, p in dcm.transformer.detail_parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    return dcm


def latents(dcm, config=SMALL, seed=3):
    return dcm.generate(["a red circle moving left"], seeds=[seed], config=config, output_type="latent")


def test_save_load_roundtrip(trained_like, tmp_path):
    path = save_pretrained(trained_like, tmp_path / "model")
    files = {p.relative_to(path).as_posix() for p in path.rglob("*") if p.is_file()}
    assert CONFIG_NAME in files and f"{DETAIL_DIR}/diffusion_pytorch_model.safetensors" in files
    assert not any(f.endswith((".bin", ".pt", ".pth", ".ckpt")) for f in files)  # nothing to unpickle
    assert json.loads((path / CONFIG_NAME).read_text())["schedule"]["boundary_index"] == 35
    loaded = load_pipeline(str(path))
    assert isinstance(loaded.transformer, DualExpertTransformer)
    torch.testing.assert_close(latents(loaded), latents(trained_like), atol=1e-5, rtol=0)


def test_dcm_folder_is_a_stock_pipeline_folder_of_the_semantic_expert(trained_like, tmp_path):
    path = save_pretrained(trained_like, tmp_path / "model")
    stock = WanPipeline.from_pretrained(path)
    for name, tensor in trained_like.transformer.expert_state_dict("semantic").items():
        assert torch.equal(stock.transformer.state_dict()[name], tensor), name


def test_plain_diffusers_folder_loads_as_teacher(tmp_path):
    WanPipeline(**tiny_wan_components()).save_pretrained(tmp_path / "teacher")
    teacher = load_pipeline(str(tmp_path / "teacher"))
    assert not teacher.is_dual_expert and teacher.config.family == "wan"
    sigmas = teacher.sigmas(GenerationConfig(num_inference_steps=50))
    assert len(sigmas) == 51
    assert teacher.generate(["x"], seeds=[0], config=SMALL).shape == (1, 9, 32, 32, 3)


def test_missing_model_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="neither a preset"):
        load_pipeline("no-such-model")
    with pytest.raises(ValueError, match="unknown preset"):
        from dcm.presets import get_preset

        get_preset("nope")


@pytest.mark.s3
def test_load_from_s3_folder(trained_like, tmp_path, s3_bucket, monkeypatch):
    monkeypatch.setenv("DCM_MODEL_CACHE", str(tmp_path / "cache"))
    local = save_pretrained(trained_like, tmp_path / "model")
    Store(f"s3://{s3_bucket}/models/demo").upload_from(local)
    loaded = load_pipeline(f"s3://{s3_bucket}/models/demo")
    assert loaded.is_dual_expert
    torch.testing.assert_close(latents(loaded), latents(trained_like), atol=1e-5, rtol=0)


def test_stock_diffusers_runs_the_export_with_our_frames(trained_like, tmp_path):
    """Stock WanPipeline (no code of ours) on the export == our sampler, same seed and sigma list."""
    path = export_diffusers(trained_like, tmp_path / "export")
    stock = WanPipeline.from_pretrained(path)
    stock.set_progress_bar_config(disable=True)
    assert stock.transformer_2 is not None and stock.config.boundary_ratio == pytest.approx(
        trained_like.grid.boundary_ratio
    )
    steps = 4
    stock.scheduler.set_timesteps(steps)
    stock_sigmas = stock.scheduler.sigmas.tolist()
    # The stock schedule visits both experts, so the check covers the routing too.
    routed = [s >= stock.config.boundary_ratio for s in stock_sigmas[:-1]]
    assert any(routed) and not all(routed)
    config = GenerationConfig(num_frames=9, height=32, width=32, sigmas=tuple(stock_sigmas[:-1]))
    ours = trained_like.generate(["a red circle moving left"], seeds=[3], config=config, output_type="latent")
    ours_frames = trained_like.family.decode_latents(trained_like.pipe, ours)  # (1, F, H, W, 3) in [0, 1]
    theirs = stock(
        prompt="a red circle moving left",
        num_frames=9,
        height=32,
        width=32,
        num_inference_steps=steps,
        guidance_scale=1.0,
        latents=trained_like.initial_noise([3], config),
        max_sequence_length=trained_like.max_sequence_length,
        output_type="np",
    ).frames
    assert theirs.shape == tuple(ours_frames.shape)
    assert abs(theirs - ours_frames.numpy()).max() < INTEROP_ATOL


def test_export_rejects_plain_models(tmp_path):
    WanPipeline(**tiny_wan_components()).save_pretrained(tmp_path / "teacher")
    teacher = load_pipeline(str(tmp_path / "teacher"))
    with pytest.raises(ValueError, match="needs a dual-expert model"):
        export_diffusers(teacher, tmp_path / "x")
    assert isinstance(teacher, DCMPipeline)


def test_export_loads_back_into_our_sampler(trained_like, tmp_path):
    """load_pipeline on an export routes between its two transformers like the original dual expert."""
    from dcm.experts import TwoTransformerRouter

    path = export_diffusers(trained_like, tmp_path / "export")
    loaded = load_pipeline(str(path))
    assert isinstance(loaded.transformer, TwoTransformerRouter)
    assert loaded.grid.boundary_sigma == trained_like.grid.boundary_sigma
    torch.testing.assert_close(latents(loaded), latents(trained_like), atol=1e-5, rtol=0)
    # A Wan2.2-style folder without our config: k is recovered from its boundary_ratio.
    (path / CONFIG_NAME).unlink()
    assert load_pipeline(str(path)).config.schedule.boundary_index == trained_like.config.schedule.boundary_index


def test_weights_missing_from_a_folder_are_named(tmp_path):
    """diffusers leaves weights a file lacks on the meta device (the model would fail at its first forward)."""
    from safetensors.torch import load_file, save_file

    WanPipeline(**tiny_wan_components()).save_pretrained(tmp_path / "teacher")
    weights = tmp_path / "teacher" / "transformer" / "diffusion_pytorch_model.safetensors"
    state = load_file(str(weights))
    state.pop("blocks.0.ffn.net.2.weight")
    save_file(state, str(weights))
    with pytest.raises(ValueError, match=r"transformer: 1 weights are missing .*blocks\.0\.ffn\.net\.2\.weight"):
        load_pipeline(str(tmp_path / "teacher"))


def test_bf16_load_keeps_the_float32_modules(trained_like, tmp_path):
    """A DCM folder loaded in bf16 is cast as diffusers' torch_dtype casts: Wan's time embedder and modulation tables
    stay float32 in both experts; latents come back float32."""
    path = save_pretrained(trained_like, tmp_path / "model")
    loaded = load_pipeline(str(path), dtype=torch.bfloat16)
    backbone = loaded.transformer.transformer
    assert loaded.dtype == torch.bfloat16 and backbone.blocks[0].attn1.to_q.base_layer.weight.dtype == torch.bfloat16
    for expert in ("semantic", "detail"):
        embedder = backbone.condition_embedder.get_submodule(expert)
        assert embedder.time_embedder.linear_1.weight.dtype == torch.float32
    assert backbone.scale_shift_table.dtype == torch.float32
    assert latents(loaded).dtype == torch.float32
