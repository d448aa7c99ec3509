"""The authors' released checkpoint layout: tiny Wan (fp32) and HunyuanVideo (bf16) folders written exactly as the
released ``DCM_WAN`` / ``DCM_HY`` are (peft adapter ``lora1``, ``*_lora`` layers, one safetensors file), loaded through
``load_pipeline`` and checked against experts computed by hand from the same tensors."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import HunyuanVideoPipeline, WanPipeline
from peft import LoraConfig
from safetensors.torch import load_file, save_file

from dcm.experts import DETAIL, SEMANTIC, DualExpertTransformer, TwoTransformerRouter, record_experts
from dcm.generation import VideoGenerator, VideoRequest
from dcm.io.model_folder import load_pipeline
from dcm.io.released import convert_released, inspect_released
from dcm.io.video import decode_mp4
from dcm.models import hunyuan, wan
from dcm.sampling import TransformerDenoiser
from dcm.schedule import HUNYUAN_4STEP_SIGMAS, WAN_6STEP_SIGMAS

TARGETS = ["to_q", "to_k", "to_v", "to_out.0"]
FAMILIES = {
    "wan": (WanPipeline, wan.tiny_wan_components, wan.DUPLICATED_MODULES, wan.COND_KEYS, torch.float32),
    "hunyuan": (HunyuanVideoPipeline, hunyuan.tiny_hunyuan_components, hunyuan.DUPLICATED_MODULES, hunyuan.COND_KEYS,
                torch.bfloat16),
}  # fmt: skip
WEIGHTS = Path("transformer") / "diffusion_pytorch_model.safetensors"
# The reference's inference rule (docs/algorithm.md, "Inference schedules"): detail iff int(t) <= 981 (HunyuanVideo)
# or 978 (Wan).
REFERENCE_THRESHOLD = {"wan": 978, "hunyuan": 981}
SMALL = dict(num_frames=9, height=32, width=32)
ATOL = 1e-5


def write_released(folder: Path, family: str, *, rank: int = 4, alpha: float | None = None, seed: int = 0) -> Path:
    """A tiny pipeline folder in the released layout, made the way the authors' code made theirs: peft's add_adapter
    (adapter "lora1") and a ``<module>_lora`` copy of each timestep layer on the stock transformer, trained away from
    their initial values (here: random), the whole state dict saved as one safetensors file in the family's dtype."""
    pipeline_class, components, duplicated, _, dtype = FAMILIES[family]
    parts = components(seed=seed)
    pipeline_class(**parts).save_pretrained(folder)
    transformer = parts["transformer"]
    transformer.add_adapter(
        LoraConfig(r=rank, lora_alpha=alpha or 2.0 * rank, init_lora_weights=True, target_modules=TARGETS),
        adapter_name="lora1",
    )
    for name in duplicated:
        transformer.add_module(f"{name}_lora", copy.deepcopy(transformer.get_submodule(name)))
    g = torch.Generator().manual_seed(seed + 1)
    state = {}
    for key, tensor in transformer.state_dict().items():
        if ".lora_" in key or key.split(".")[0].endswith("_lora"):
            tensor = tensor + 0.1 * torch.randn(tensor.shape, generator=g)
        state[key] = tensor.to(dtype).contiguous()
    (folder / WEIGHTS).unlink()
    save_file(state, str(folder / WEIGHTS))
    return folder


def stock_expert(folder: Path, family: str, expert: str, *, scale: float) -> torch.nn.Module:
    """One expert as a stock diffusers transformer, computed by hand from the released file (float32): semantic =
    the base weights; detail = base + scale * B @ A on every LoRA target, and the ``*_lora`` layers in place of the
    originals."""
    _, components, duplicated, _, _ = FAMILIES[family]
    state = {k: v.float() for k, v in load_file(str(folder / WEIGHTS)).items()}
    plain = {}
    for key, tensor in state.items():
        head, _, rest = key.partition(".")
        if ".lora_" in key:
            continue
        if head.endswith("_lora"):
            if expert == DETAIL:
                plain[f"{head[: -len('_lora')]}.{rest}"] = tensor
            continue
        if head in duplicated and expert == DETAIL:
            continue
        name = key.replace(".base_layer.", ".")
        if expert == DETAIL and key.endswith(".base_layer.weight"):
            module = key[: -len(".base_layer.weight")]
            tensor = tensor + scale * state[f"{module}.lora_B.lora1.weight"] @ state[f"{module}.lora_A.lora1.weight"]
        plain[name] = tensor
    model = type(components()["transformer"]).from_config(json.loads((folder / "transformer/config.json").read_text()))
    model.load_state_dict(plain, strict=True)
    return model.eval()


def inputs(family: str, batch: int = 2):
    g = torch.Generator().manual_seed(7)
    if family == "wan":
        x = torch.randn(batch, 16, 2, 8, 8, generator=g)
        return x, {"encoder_hidden_states": torch.randn(batch, 6, 32, generator=g)}
    cond = {
        "encoder_hidden_states": torch.randn(batch, 5, 16, generator=g),
        "encoder_attention_mask": torch.ones(batch, 5, dtype=torch.long),
        "pooled_projections": torch.randn(batch, 8, generator=g),
        "guidance": torch.full((batch,), 6000.0),
    }
    return torch.randn(batch, 4, 2, 4, 4, generator=g), cond


@pytest.fixture(scope="module")
def released(tmp_path_factory):
    """family -> a released-layout folder (written once per module)."""
    return {f: write_released(tmp_path_factory.mktemp(f"DCM_{f}"), f) for f in FAMILIES}


@pytest.mark.parametrize("family", list(FAMILIES))
@torch.no_grad()
def test_each_expert_equals_the_hand_computed_one(released, family):
    folder = released[family]
    layout = inspect_released(folder)
    assert (layout.adapter_name, layout.lora_rank, layout.lora_alpha) == ("lora1", 4, 8.0)
    assert set(layout.duplicated_modules) == set(FAMILIES[family][2])
    dcm = load_pipeline(str(folder), dtype=torch.float32)
    assert isinstance(dcm.transformer, DualExpertTransformer) and dcm.is_dual_expert
    x, cond = inputs(family)
    keys = FAMILIES[family][3]
    ours = TransformerDenoiser(dcm.transformer, 1000, keys)
    for expert, sigma in ((SEMANTIC, 0.999), (DETAIL, 0.5)):
        reference = TransformerDenoiser(stock_expert(folder, family, expert, scale=layout.lora_scale), 1000, keys)
        s = torch.full((2,), sigma, dtype=torch.float64)
        with record_experts(dcm.transformer) as calls:
            v = ours(x, s, cond)
        assert calls == [expert]
        torch.testing.assert_close(v, reference(x, s, cond), atol=ATOL, rtol=1e-4)
    # The experts differ, so the comparisons above tell them apart.
    s_sem, s_det = torch.full((2,), 0.999, dtype=torch.float64), torch.full((2,), 0.5, dtype=torch.float64)
    semantic_only = TransformerDenoiser(stock_expert(folder, family, SEMANTIC, scale=layout.lora_scale), 1000, keys)
    assert (ours(x, s_det, cond) - semantic_only(x, s_det, cond)).abs().max() > 1e-3
    torch.testing.assert_close(ours(x, s_sem, cond), semantic_only(x, s_sem, cond), atol=ATOL, rtol=1e-4)


def test_file_dtype_is_kept_and_defaults_are_the_released_ones(released):
    hy = load_pipeline(str(released["hunyuan"]))  # dtype None: as in the file
    assert {p.dtype for _, p in hy.transformer.named_parameters()} == {torch.bfloat16}
    assert hy.config.default_generation.sigmas == HUNYUAN_4STEP_SIGMAS
    assert hy.config.default_generation.guidance_scale == 1.0 and hy.family.embedded_guidance == 6.0
    wan_dcm = load_pipeline(str(released["wan"]))
    assert wan_dcm.dtype == torch.float32
    assert wan_dcm.config.default_generation.sigmas == WAN_6STEP_SIGMAS
    assert wan_dcm.config.default_generation.guidance_scale == 1.0
    # bf16 on request keeps Wan's float32 modules (diffusers' _keep_in_fp32_modules) in float32.
    bf16 = load_pipeline(str(released["wan"]), dtype=torch.bfloat16).transformer.transformer
    assert bf16.blocks[0].attn1.to_q.base_layer.weight.dtype == torch.bfloat16
    assert bf16.condition_embedder.detail.time_embedder.linear_1.weight.dtype == torch.float32
    assert bf16.scale_shift_table.dtype == torch.float32


@pytest.mark.parametrize("family", list(FAMILIES))
def test_released_lists_route_like_the_reference(released, family):
    dcm = load_pipeline(str(released[family]))
    config = dcm.with_defaults(**SMALL)  # the released sigma list, a tiny video
    with record_experts(dcm.transformer) as calls:
        dcm.generate(["a red circle"], seeds=[0], config=config, output_type="latent")
    reference = [DETAIL if int(s * 1000) <= REFERENCE_THRESHOLD[family] else SEMANTIC for s in config.sigmas]
    assert calls == reference
    assert calls == {"wan": [SEMANTIC] * 3 + [DETAIL] * 3, "hunyuan": [SEMANTIC] * 2 + [DETAIL] * 2}[family]


def test_generate_job_writes_videos_from_a_released_folder(released, tmp_path):
    from dcm.cli import run_job
    from jobs.generate import main, parse_args

    out = tmp_path / "videos"
    args = parse_args(["--prompt", "a red circle", "--model", str(released["wan"]), "--output", str(out),
                       "--num-frames", "9", "--height", "32", "--width", "32"])  # fmt: skip
    assert run_job(main, args) == 0
    videos = sorted(out.glob("*.mp4"))
    assert len(videos) == 1
    frames = decode_mp4(videos[0].read_bytes()).frames
    assert frames.shape == (9, 32, 32, 3)


def test_video_generator_serves_a_released_folder(released):
    generator = VideoGenerator(str(released["hunyuan"]), device="cpu", dtype=torch.float32)
    results = generator.generate([VideoRequest(id="a", prompt="a blue square", seed=3, **SMALL),
                                  VideoRequest(id="b", prompt="", **SMALL)])  # fmt: skip
    assert results[0].ok and results[1].error_field == "prompt"
    assert decode_mp4(results[0].mp4).frames.shape == (9, 32, 32, 3)


@torch.no_grad()
def test_alpha_and_rank_come_from_the_folder(tmp_path):
    """A rank-3 adapter whose peft adapter_config.json says alpha 9 (scale 3, not the authors' 2)."""
    folder = write_released(tmp_path / "r3", "wan", rank=3, alpha=9.0)
    (folder / "transformer" / "adapter_config.json").write_text(json.dumps({"r": 3, "lora_alpha": 9.0}))
    layout = inspect_released(folder)
    assert (layout.lora_rank, layout.lora_alpha, layout.lora_scale) == (3, 9.0, 3.0)
    dcm = load_pipeline(str(folder))
    x, cond = inputs("wan")
    s = torch.full((2,), 0.5, dtype=torch.float64)
    reference = TransformerDenoiser(stock_expert(folder, "wan", DETAIL, scale=3.0), 1000, wan.COND_KEYS)
    torch.testing.assert_close(TransformerDenoiser(dcm.transformer, 1000, wan.COND_KEYS)(x, s, cond),
                               reference(x, s, cond), atol=ATOL, rtol=1e-4)  # fmt: skip


def _edit_weights(folder: Path, edit) -> None:
    state = load_file(str(folder / WEIGHTS))
    edit(state)
    save_file(state, str(folder / WEIGHTS))


@pytest.mark.parametrize(
    "edit, match",
    [
        (lambda s: s.pop("blocks.1.ffn.net.2.weight"), r"1 missing \(blocks\.1\.ffn\.net\.2\.weight\)"),
        (lambda s: s.update({"blocks.7.norm2.weight": torch.ones(24)}), r"1 unexpected \(blocks\.7\.norm2\.weight\)"),
        (lambda s: s.update({"proj_out_lora.bias": torch.zeros(65)}),
         r"proj_out\.detail\.bias: file \(65,\) vs model \(64,\)"),
    ],
)  # fmt: skip
def test_keys_that_do_not_fit_the_config_are_named(tmp_path, edit, match):
    folder = write_released(tmp_path / "bad", "wan")
    _edit_weights(folder, edit)
    with pytest.raises(ValueError, match=match):
        load_pipeline(str(folder))


def test_bad_folders_are_named(tmp_path):
    folder = write_released(tmp_path / "ranks", "wan")
    rank_2 = {"blocks.0.attn1.to_q.lora_A.lora1.weight": torch.zeros(2, 24),
              "blocks.0.attn1.to_q.lora_B.lora1.weight": torch.zeros(24, 2)}  # fmt: skip
    _edit_weights(folder, lambda s: s.update(rank_2))
    with pytest.raises(ValueError, match="rank differs between modules"):
        load_pipeline(str(folder))
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "notes.txt").write_text("x")
    with pytest.raises(ValueError, match=r"not a model folder.*found \['notes.txt'\]"):
        load_pipeline(str(tmp_path / "junk"))
    pickled = write_released(tmp_path / "pickled", "wan")
    (pickled / WEIGHTS).unlink()
    torch.save({}, pickled / "transformer" / "diffusion_pytorch_model.bin")
    with pytest.raises(ValueError, match=r"pickled weights \['diffusion_pytorch_model.bin'\]: refused"):
        load_pipeline(str(pickled))


def test_converter_writes_our_folder_and_a_stock_export(released, tmp_path):
    """jobs/convert_released.py: the DCM folder loads back to the same model; stock diffusers (no code of ours) runs
    the Wan export like our sampler on the released folder, step for step on a 4-step stock schedule."""
    from jobs.convert_released import main

    folder = released["wan"]
    out, export = tmp_path / "dcm", tmp_path / "export"
    assert main(["--model", str(folder), "--output", str(out), "--export", str(export)]) == 0
    original = load_pipeline(str(folder))
    converted = load_pipeline(str(out))
    assert isinstance(converted.transformer, DualExpertTransformer)
    config = original.with_defaults(**SMALL)
    latents = original.generate(["a red circle"], seeds=[1], config=config, output_type="latent")
    torch.testing.assert_close(converted.generate(["a red circle"], seeds=[1], config=config, output_type="latent"),
                               latents, atol=ATOL, rtol=0)  # fmt: skip
    assert isinstance(load_pipeline(str(export)).transformer, TwoTransformerRouter)
    stock = WanPipeline.from_pretrained(export)
    stock.set_progress_bar_config(disable=True)
    stock.scheduler.set_timesteps(4)
    sigmas = stock.scheduler.sigmas.tolist()[:-1]
    routed = [s >= stock.config.boundary_ratio for s in sigmas]
    assert any(routed) and not all(routed)  # the stock loop visits both experts
    ours = original.generate(["a red circle"], seeds=[1], config=original.with_defaults(**SMALL, sigmas=tuple(sigmas)),
                             output_type="latent")  # fmt: skip
    theirs = stock(prompt="a red circle", **SMALL, num_inference_steps=4, guidance_scale=1.0,
                   latents=original.initial_noise([1], config), max_sequence_length=original.max_sequence_length,
                   output_type="latent").frames  # fmt: skip
    torch.testing.assert_close(theirs, ours, atol=1e-4, rtol=0)


def test_converter_shards_a_large_transformer(released, tmp_path):
    convert_released(released["hunyuan"], tmp_path / "dcm", max_shard_bytes=20_000)
    index = json.loads((tmp_path / "dcm/transformer/diffusion_pytorch_model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 2
    converted = load_pipeline(str(tmp_path / "dcm"), dtype=torch.float32)
    original = load_pipeline(str(released["hunyuan"]), dtype=torch.float32)
    x, cond = inputs("hunyuan")
    s = torch.tensor([0.999, 0.5], dtype=torch.float64)
    denoise = [TransformerDenoiser(m.transformer, 1000, hunyuan.COND_KEYS) for m in (converted, original)]
    torch.testing.assert_close(denoise[0](x, s, cond), denoise[1](x, s, cond), atol=ATOL, rtol=0)
    with pytest.raises(ValueError, match="Wan family only"):
        convert_released(released["hunyuan"], tmp_path / "dcm2", export=tmp_path / "export")
    with pytest.raises(ValueError, match="exists and is not empty"):
        convert_released(released["hunyuan"], tmp_path / "dcm")
    assert not (tmp_path / "dcm2").exists() and not any(p.name.endswith(".partial") for p in tmp_path.iterdir())


# Runs in its own process so the measurement sees this load alone. Resident memory counts anonymous pages and the
# pages of mapped files alike (safetensors maps the file and may hand out tensors backed by the mapping).
MEMORY_PROBE = textwrap.dedent("""
    import sys
    from dcm.io.released import inspect_released, load_released_transformer

    def status_kb(field):
        for line in open("/proc/self/status"):
            if line.startswith(field + ":"):
                return int(line.split()[1])

    layout = inspect_released(sys.argv[1])
    base = status_kb("VmRSS")
    model = load_released_transformer(layout)
    total = sum(float(p.sum()) for p in model.parameters())  # reads every weight: all of them are resident now
    peak = status_kb("VmHWM")
    print((peak - base) * 1024, sum(p.numel() * p.element_size() for p in model.parameters()))
""")


@pytest.mark.slow
def test_loading_streams_and_holds_one_copy(tmp_path):
    """A ~0.4 GB transformer (a Wan block of the real width) loads with one copy of its weights in memory: the peak
    resident memory of loading it and reading every weight stays within 1.3x the weights (two copies would be 2x;
    safetensors maps the file, so the weights may stay file-backed until read)."""
    folder = write_released(tmp_path / "DCM_WAN", "wan")  # the pipeline around it; its transformer is replaced
    spec = wan.TinyWanSpec(num_layers=1, num_attention_heads=12, attention_head_dim=128, ffn_dim=8960, text_dim=4096)
    torch.manual_seed(0)
    transformer = wan.tiny_wan_components(spec)["transformer"]
    transformer.add_adapter(LoraConfig(r=8, lora_alpha=16, target_modules=TARGETS), adapter_name="lora1")
    for name in wan.DUPLICATED_MODULES:
        transformer.add_module(f"{name}_lora", copy.deepcopy(transformer.get_submodule(name)))
    transformer.save_config(folder / "transformer")
    save_file({k: v.contiguous() for k, v in transformer.state_dict().items()}, str(folder / WEIGHTS))
    del transformer
    probe = subprocess.run([sys.executable, "-c", MEMORY_PROBE, str(folder)], capture_output=True, text=True,
                           check=True, cwd=Path(__file__).parents[2] / "platform")  # fmt: skip
    peak, weights = map(int, probe.stdout.split()[-2:])
    assert weights > 300e6
    assert 0.9 * weights < peak < 1.3 * weights, (peak, weights)


def test_frames_are_finite_and_decodable_in_bf16(released):
    """The HunyuanVideo file in its own bf16 through the whole pipeline."""
    dcm = load_pipeline(str(released["hunyuan"]))
    frames = dcm.generate(["a red circle"], seeds=[0], config=dcm.with_defaults(**SMALL))
    assert frames.shape == (1, 9, 32, 32, 3) and frames.dtype == np.uint8
