"""DCMPipeline.generate on tiny real diffusers models: shapes, determinism, batch invariance, input checks."""

import numpy as np
import pytest
import torch

from dcm.config import GenerationConfig
from dcm.experts import DETAIL, SEMANTIC, record_experts
from dcm.io.model_folder import load_pipeline
from dcm.sampling import CFGDenoiser, CountingDenoiser
from dcm.schedule import HUNYUAN_4STEP_SIGMAS, MAX_DCM_STEPS, WAN_6STEP_SIGMAS, is_detail

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


# bf16 vs fp32 on the same tiny weights: a few times the differences measured (docs/models.md, "Numerics").
BF16_FRAME_MEAN_ATOL = 3.0
BF16_LATENT_RTOL = 0.05
TINY = dict(num_frames=5, height=32, width=32)


@pytest.fixture(scope="module")
def by_dtype():
    """(preset, dtype) -> the tiny preset loaded in that dtype (same seeded weights)."""
    return {(name, dtype): load_pipeline(name, dtype=dtype)
            for name in ("tiny-wan", "tiny-hunyuan") for dtype in (torch.float32, torch.bfloat16)}  # fmt: skip


def routed_experts(dcm, config, cond) -> list[str]:
    """The expert of each step of the pipeline's denoising loop (the prompt encoded once by the caller)."""
    with record_experts(dcm.transformer) as calls:
        latents = dcm.denoise(dcm.initial_noise([0], config), cond, dcm.sigmas(config))
    assert latents.dtype == torch.float32  # the loop stays float32 whatever the model's dtype
    return calls


@pytest.mark.parametrize("preset", ["tiny-wan", "tiny-hunyuan"])
def test_bf16_routes_exactly_like_fp32(by_dtype, preset):
    """For 1-8 steps and both released lists, a bf16 model takes the same expert at every step as fp32 does, and as
    the schedule's float64 values say (bf16 timesteps would send Wan's sigma[34] = 975.4 -> 976 to the semantic
    expert)."""
    fp32, bf16 = by_dtype[(preset, torch.float32)], by_dtype[(preset, torch.bfloat16)]
    assert bf16.dtype == torch.bfloat16
    configs = [GenerationConfig(**TINY, num_inference_steps=n) for n in range(1, MAX_DCM_STEPS + 1)]
    configs += [GenerationConfig(**TINY, num_inference_steps=len(s), sigmas=s)
                for s in (HUNYUAN_4STEP_SIGMAS, WAN_6STEP_SIGMAS)]  # fmt: skip
    conds = {dcm: dcm.encode_prompts(["a red circle"]) for dcm in (fp32, bf16)}
    for config in configs:
        sigmas = fp32.sigmas(config)[:-1]
        expected = [DETAIL if d else SEMANTIC for d in is_detail(sigmas, fp32.grid).tolist()]
        assert routed_experts(fp32, config, conds[fp32]) == expected, config
        assert routed_experts(bf16, config, conds[bf16]) == expected, config
    four = fp32.sigmas(GenerationConfig(**TINY, num_inference_steps=4))
    assert fp32.grid.boundary_sigma in four.tolist()  # the level bf16 used to misroute is visited


@pytest.mark.parametrize("preset", ["tiny-wan", "tiny-hunyuan"])
def test_bf16_frames_are_close_to_fp32_frames(by_dtype, preset):
    fp32, bf16 = by_dtype[(preset, torch.float32)], by_dtype[(preset, torch.bfloat16)]
    config = GenerationConfig(num_frames=9, height=32, width=32, num_inference_steps=4)
    a = fp32.generate(["a red circle"], seeds=[0], config=config, output_type="latent")
    b = bf16.generate(["a red circle"], seeds=[0], config=config, output_type="latent")
    assert float((a - b).norm() / a.norm()) < BF16_LATENT_RTOL
    other_seed = bf16.generate(["a red circle"], seeds=[1], config=config, output_type="latent")
    assert float((other_seed - b).norm() / b.norm()) > 10 * BF16_LATENT_RTOL  # the tolerance tells videos apart
    frames_a = fp32.generate(["a red circle"], seeds=[0], config=config).astype(np.float64)
    frames_b = bf16.generate(["a red circle"], seeds=[0], config=config).astype(np.float64)
    assert frames_a.shape == frames_b.shape == (1, 9, 32, 32, 3)
    assert np.abs(frames_a - frames_b).mean() < BF16_FRAME_MEAN_ATOL
