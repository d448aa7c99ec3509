"""GPU check of distillation at real size: one Stage II step of the Wan2.1-T2V-1.3B architecture (random weights),
bf16 autocast, activation checkpointing on, at the largest 480x832 video the memory plan fits on this GPU; its peak
memory is printed next to the plan's figure.

    python bench/gpu_check_train.py --out outputs/gpu-check-train           # on a CUDA GPU (minutes)
    python bench/gpu_check_train.py --smoke --out /tmp/gpu-check-smoke      # tiny Wan on a CPU (seconds)

Writes ``<out>/stage_two_step.json``. Needs only torch, diffusers, transformers, peft and safetensors: no Ray, imageio,
boto3 or pyarrow on its import chain, so it runs on a bare GPU machine. The step is the job's own
(:func:`dcm.distill.steps.detail_train_step`) on models wired as one DDP worker wires them (teacher in bf16, fp32
student with the detail expert, the discriminator); only the data are random latents and random text embeddings.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

from dcm.distill.config import DETAIL_STAGE, TrainingVideo
from dcm.distill.discriminator import Discriminator
from dcm.distill.features import TappedTeacher
from dcm.distill.memory import GiB, architecture, format_plan, plan_memory
from dcm.distill.parallel import build_optimizer, parallelize, replicate
from dcm.distill.recipes import tiny, wan_2_1_1_3b
from dcm.distill.steps import Optimizers, StageModels, detail_train_step
from dcm.experts import DETAIL, DualExpertTransformer
from dcm.geometry import VideoGeometry
from dcm.models import wan
from dcm.models.real_size import build_transformer, real_transformer_config
from dcm.sampling import TransformerDenoiser
from dcm.schedule import build_grid

RESULT_NAME = "stage_two_step.json"
REAL_ARCHITECTURE = "wan2.1-t2v-1.3b"
# Wan's VAE: 4x temporal, 8x spatial compression (the geometry of every Wan2.1 checkpoint).
VAE_TEMPORAL, VAE_SPATIAL = 4, 8
# Frames tried, 4n + 1 up to 321 (81 latent frames, 4x the recipe's clip); the largest the plan fits is run.
MAX_FRAMES = 321
TEXT_LEN = wan.DEFAULT_MAX_SEQUENCE_LENGTH
SMOKE_TEXT_LEN = wan.TinyWanSpec().max_sequence_length


def largest_fitting_video(config, arch, capacity_bytes: int) -> tuple[TrainingVideo, object]:
    """The longest 480x832 clip (4n + 1 frames) whose Stage II plan fits ``capacity_bytes`` (the GPU's free memory)
    after the plan's reserve."""
    best = None
    for frames in range(5, MAX_FRAMES + 1, VAE_TEMPORAL):
        video = replace(config.video, num_frames=frames)
        plan = plan_for(replace(config, video=video, gpu_memory_gb=capacity_bytes / GiB), arch, "cuda")
        if not plan.fits:
            break
        best = (video, plan)
    if best is None:
        raise ValueError(f"not even a 5-frame clip fits {capacity_bytes / GiB:.1f} GiB by the plan")
    return best


def latent_shape(video: TrainingVideo, channels: int) -> tuple[int, int, int, int]:
    """(C, F, H, W) of a clip: Wan's VAE factors (what dcm.geometry derives from the VAE config)."""
    return (channels, (video.num_frames - 1) // VAE_TEMPORAL + 1, video.height // VAE_SPATIAL,
            video.width // VAE_SPATIAL)  # fmt: skip


def plan_for(config, arch, device_type: str):
    shape = latent_shape(config.video, arch.patch_values // math.prod(arch.patch_size))
    text_len = SMOKE_TEXT_LEN if device_type == "cpu" else TEXT_LEN
    return plan_memory(config, arch, latent_shape=shape, text_len=text_len, device_type=device_type)


def build_models(config, transformer_config: dict, device: torch.device) -> tuple[StageModels, Optimizers]:
    """One DDP worker's Stage II models with random weights: bf16 teacher on a GPU, fp32 student with a detail
    expert, activation checkpointing on both, the discriminator; then the optimizers."""
    teacher = build_transformer("wan", transformer_config, device=device)
    student = copy.deepcopy(teacher)
    if device.type == "cuda":
        teacher.to(dtype=torch.bfloat16)
    teacher.eval().requires_grad_(False)
    grid = build_grid(config.schedule)
    dual = DualExpertTransformer(student, grid, config.detail_expert)
    dual.set_trainable(DETAIL)
    denoiser = TransformerDenoiser(teacher, config.schedule.num_train_timesteps, wan.COND_KEYS)
    tapped = TappedTeacher(denoiser, "wan", config.detail.feature_stride)
    dual, tapped = parallelize(dual.train(), student, tapped, teacher, strategy=config.strategy, device=device,
                               activation_checkpointing=True)  # fmt: skip
    hidden = teacher.config.num_attention_heads * teacher.config.attention_head_dim
    disc = replicate(Discriminator(len(tapped.indices), hidden, config.detail.discriminator).train(), device)
    geometry = VideoGeometry(scale_factor_temporal=VAE_TEMPORAL, scale_factor_spatial=VAE_SPATIAL,
                             patch_size=tuple(transformer_config["patch_size"]),
                             latent_channels=transformer_config["in_channels"])  # fmt: skip
    models = StageModels(stage=DETAIL_STAGE, student=dual, teacher=tapped, grid=grid, geometry=geometry,
                         cond_keys=wan.COND_KEYS, discriminator=disc)  # fmt: skip
    optimizers = Optimizers(generator=build_optimizer(dual, config.detail.optimizer),
                            discriminator=build_optimizer(disc, config.detail.disc_optimizer))  # fmt: skip
    return models, optimizers


def random_batch(shape: tuple[int, ...], text_len: int, text_dim: int, device: torch.device) -> dict:
    """One sample: random latents (fp32), a random text embedding and the empty prompt's (for the teacher's CFG)."""
    generator = torch.Generator().manual_seed(0)
    batch = {
        "latents": torch.randn(1, *shape, generator=generator),
        "encoder_hidden_states": torch.randn(1, text_len, text_dim, generator=generator),
        "negative_encoder_hidden_states": torch.randn(1, text_len, text_dim, generator=generator),
    }
    return {k: v.to(device) for k, v in batch.items()}


def stage_two_step(out_dir: Path, *, smoke: bool = False) -> dict:
    """Runs the check and writes ``<out_dir>/stage_two_step.json``; returns what it wrote.

    Args:
        smoke: tiny Wan on the CPU (the tiny recipe's sizes): the same code path, no GPU needed.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    # 1. architecture, device and the largest clip the plan fits
    if smoke:
        config = tiny(data="(random latents)", output=str(out_dir))
        transformer_config = dict(wan.tiny_wan_components()["transformer"].config)
        device, text_len = torch.device("cpu"), SMOKE_TEXT_LEN
    else:
        if not torch.cuda.is_available():
            raise SystemExit("no CUDA device: run with --smoke on a CPU")
        config = wan_2_1_1_3b(data="(random latents)", output=str(out_dir))
        transformer_config = real_transformer_config(REAL_ARCHITECTURE)
        device, text_len = torch.device("cuda"), TEXT_LEN
    config = replace(config, stages=(DETAIL_STAGE,), num_workers=1, activation_checkpointing=True)
    arch = architecture("wan", transformer_config, detail_expert=config.detail_expert,
                        boundary_index=config.schedule.boundary_index, discriminator=config.detail.discriminator,
                        feature_stride=config.detail.feature_stride)  # fmt: skip
    baseline = 0
    if smoke:
        video, plan = config.video, plan_for(config, arch, "cpu")
    else:
        # What this process and others already hold is not ours to plan with (bench/gpu_check.py runs this after
        # other checks in the same process): plan for the free memory, and count the peak above what is allocated.
        torch.cuda.empty_cache()
        baseline = torch.cuda.memory_allocated(device)
        video, plan = largest_fitting_video(config, arch, torch.cuda.mem_get_info(device)[0])
    shape = latent_shape(video, transformer_config["in_channels"])

    # 2. models and one step (peak memory from the CUDA allocator, above the baseline; none on a CPU)
    models, optimizers = build_models(config, transformer_config, device)
    batch = random_batch(shape, text_len, transformer_config["text_dim"], device)
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats(device)
    started = time.perf_counter()
    metrics = detail_train_step(models, optimizers, batch, torch.Generator().manual_seed(1), config=config)
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - started
    peak = torch.cuda.max_memory_allocated(device) - baseline if device.type == "cuda" else None

    # 3. the report
    stage = plan.stages[0]
    result = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "architecture": "tiny-wan" if smoke else REAL_ARCHITECTURE,
        "video": {"num_frames": video.num_frames, "height": video.height, "width": video.width},
        "latent_shape": list(shape),
        "tokens": plan.tokens,
        "step_seconds": round(seconds, 3),
        "metrics": {k: round(v, 6) for k, v in metrics.items()},
        "peak_allocated_gib": None if peak is None else round(peak / GiB, 3),
        "plan_total_gib": round(stage.total / GiB, 3),
        "plan_rows_gib": {k: round(v / GiB, 3) for k, v in stage.rows.items()},
        "peak_over_plan": None if peak is None else round(peak / stage.total, 3),
        "plan": format_plan(plan),
    }
    (out_dir / RESULT_NAME).write_text(json.dumps(result, indent=2) + "\n")
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, type=Path, help="folder for stage_two_step.json")
    parser.add_argument("--smoke", action="store_true", help="tiny Wan on the CPU instead of the real size on a GPU")
    args = parser.parse_args(argv)
    result = stage_two_step(args.out, smoke=args.smoke)
    print(result["plan"])
    shown = {k: v for k, v in result.items() if k != "plan"}
    print(json.dumps(shown, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
