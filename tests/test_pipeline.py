"""DCMPipeline.generate on tiny real diffusers models: shapes, determinism, batch invariance, input checks."""

import numpy as np
import pytest
import torch

from dcm.config import GenerationConfig
from dcm.io.model_folder import load_pipeline
from dcm.sampling import CFGDenoiser, CountingDenoiser

SMALL = GenerationConfig(num_frames=9, height=32, width=32, num_inference_steps=2)
# tiny-wan, prompt "a red circle", seed 0, SMALL: first and last 8 latent values (regression pin).
EXPECTED_SLICE = [-1.8198, -0.3379, -0.0326, -1.0017, 1.0094, 0.944, 0.1259, -1.5319,
                  -0.8633, -1.9365, 0.7374, -0.6504, -0.7572, 1.991, 0.8197, -0.7815]  # fmt: skip


def test_output_shape_and_slice(tiny_wan):
    latents = tiny_wan.generate(["a red circle"], seeds=[0], config=SMALL, output_type="latent")
    assert latents.shape == (1, 16, 3, 4, 4)
    flat = latents.flatten()
    torch.testing.assert_close(torch.cat([flat[:8], flat[-8:]]), torch.tensor(EXPECTED_SLICE), atol=1e-3, rtol=0)
    frames = tiny_wan.generate(["a red circle"], seeds=[0], config=SMALL)
    assert frames.shape == (1, 9, 32, 32, 3) and frames.dtype == np.uint8


def test_seed_determinism_and_batch_invariance(tiny_wan):
    prompts = ["a red circle", "a blue square moving up", "green"]
    batched = tiny_wan.generate(prompts, seeds=[5, 6, 7], config=SMALL, output_type="latent")
    for i, (p, s) in enumerate(zip(prompts, [5, 6, 7])):
        alone = tiny_wan.generate([p], seeds=[s], config=SMALL, output_type="latent")
        torch.testing.assert_close(batched[i : i + 1], alone, atol=1e-5, rtol=0)
    other = tiny_wan.generate(["a red circle"], seeds=[6], config=SMALL, output_type="latent")
    assert (other[0] - batched[0]).abs().max() > 1e-2  # the seed matters


def test_dual_expert_uses_dcm_schedule_and_counts_nfe(tiny_wan):
    sigmas = tiny_wan.sigmas(GenerationConfig(num_inference_steps=4))
    assert len(sigmas) == 5 and float(sigmas[0]) == 1.0 and float(sigmas[-1]) == 0.0
    assert tiny_wan.grid.boundary_sigma in sigmas.tolist()
    cond = tiny_wan.encode_prompts(["a"], [""])
    noise = tiny_wan.initial_noise([0], SMALL)
    for guidance, expected in ((1.0, 4), (5.0, 8)):
        inner = CountingDenoiser(tiny_wan.denoiser(guidance).inner)
        tiny_wan.denoise(noise, cond, sigmas, denoiser=CFGDenoiser(inner, guidance))
        assert inner.nfe == expected


@pytest.mark.parametrize(
    "field, value, match",
    [
        ("num_frames", 10, "num_frames must be 4"),
        ("height", 60, "height must be a multiple of 16"),
        ("width", 528, "width must be <= 512 for this model"),
        ("width", 40, "width must be a multiple of 16"),
    ],
)
def test_geometry_errors_name_the_field(tiny_wan, field, value, match):
    config = GenerationConfig(**{**SMALL.__dict__, field: value})
    with pytest.raises(ValueError, match=match):
        tiny_wan.generate(["a"], seeds=[0], config=config)


@pytest.mark.parametrize(
    "prompts, seeds, match",
    [
        ([""], [0], "prompt must be a non-empty"),
        (["a"], [-1], "seed must be an integer"),
        (["a"], [0, 1], "one entry per prompt"),
        ([], [], "at least one prompt"),
        (["a"], ["3"], "seed must be an integer"),
    ],
)
def test_input_errors(tiny_wan, prompts, seeds, match):
    with pytest.raises(ValueError, match=match):
        tiny_wan.generate(prompts, seeds=seeds, config=SMALL)


def test_generation_config_validation():
    with pytest.raises(ValueError, match="guidance_scale"):
        GenerationConfig(guidance_scale=0.5)
    with pytest.raises(ValueError, match="sigmas"):
        GenerationConfig(sigmas=(0.5, 0.9))
    with pytest.raises(ValueError, match="num_frames"):
        GenerationConfig(num_frames=0)


def test_hunyuan_generates_with_embedded_guidance():
    dcm = load_pipeline("tiny-hunyuan")
    cond = dcm.encode_prompts(["a red circle"])
    assert set(cond) == {"encoder_hidden_states", "encoder_attention_mask", "pooled_projections", "guidance"}
    assert float(cond["guidance"][0]) == 6000.0
    frames = dcm.generate(["a red circle", "b"], seeds=[0, 1])
    assert frames.shape == (2, 9, 32, 32, 3)
    alone = dcm.generate(["b"], seeds=[1], output_type="latent")
    both = dcm.generate(["a red circle", "b"], seeds=[0, 1], output_type="latent")
    torch.testing.assert_close(both[1:], alone, atol=1e-5, rtol=0)
