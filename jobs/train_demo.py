"""Train the demo stack on the shapes world, on a CPU: VAE -> teacher -> distillation data -> DCM distillation.

    python jobs/train_demo.py --work-dir outputs/demo                 # every stage, each resumable by its folder
    python jobs/train_demo.py --work-dir outputs/demo --stage vae --vae-steps 1500

Stages write <work-dir>/vae, <work-dir>/teacher (a WanPipeline folder: trained VAE, tiny UMT5 text encoder with a
ByT5 tokenizer, trained transformer, Euler flow-matching scheduler), <work-dir>/data (distillation data of shapes
clips) and <work-dir>/dcm (jobs/distill.py's output: semantic/, final/, export/). A stage whose folder exists is
skipped, so an interrupted run continues where it stopped.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from dataclasses import replace

import torch
from diffusers import AutoencoderKLWan, FlowMatchEulerDiscreteScheduler, WanPipeline

from dcm.config import DCMModelConfig, GenerationConfig, ScheduleConfig, to_dict
from dcm.data import DatasetWriter
from dcm.demo.training import (
    DemoTeacherConfig,
    DemoVAEConfig,
    build_teacher,
    build_vae,
    clip_batch,
    set_latent_stats,
    train_teacher,
    train_vae,
)
from dcm.io.model_folder import CONFIG_NAME, load_pipeline
from dcm.models.wan import TinyWanSpec, tiny_wan_components
from dcm.presets import WAN_BOUNDARY_INDEX
from dcm.shapes.world import WorldConfig

logger = logging.getLogger("train_demo")
STAGES = ("vae", "teacher", "data", "distill")
# Seed ranges: training clips, distillation clips and ShapesBench clips never overlap.
VAE_SEEDS, TEACHER_SEEDS, DATA_SEEDS = 0, 1_000_000, 2_000_000
LOG_EVERY = 50
# Model sizes: "demo" is what ships; "test" is a seconds-long smoke run of every stage.
SCALES = {
    "demo": (DemoVAEConfig(), DemoTeacherConfig()),
    "test": (
        DemoVAEConfig(base_dim=8, dim_mult=(1, 1, 1, 1)),
        DemoTeacherConfig(num_layers=1, num_attention_heads=2, attention_head_dim=8, ffn_dim=16),
    ),
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work-dir", default="outputs/demo")
    p.add_argument("--stage", choices=[*STAGES, "all"], default="all")
    p.add_argument("--scale", choices=sorted(SCALES), default="demo", help="model sizes")
    p.add_argument("--size", type=int, default=WorldConfig().size, help="clip height and width")
    p.add_argument("--frames", type=int, default=WorldConfig().num_frames, help="frames per clip")
    p.add_argument("--vae-steps", type=int, default=DemoVAEConfig().num_steps)
    p.add_argument("--teacher-steps", type=int, default=DemoTeacherConfig().num_steps)
    p.add_argument("--data-clips", type=int, default=256)
    p.add_argument("--semantic-steps", type=int, default=200)
    p.add_argument("--detail-steps", type=int, default=200)
    return p.parse_args(argv)


def log_progress(stage: str, total: int, start: float):
    def callback(step: int, loss: float) -> None:
        if step % LOG_EVERY == 0 or step == total - 1:
            logger.info(
                "[%s] step %d/%d loss %.4f (%.1f s)", stage, step + 1, total, loss, time.perf_counter() - start
            )

    return callback


def stage_vae(work: str, steps: int, world: WorldConfig, base: DemoVAEConfig) -> None:
    config = replace(base, num_steps=steps)
    torch.manual_seed(0)
    vae = build_vae(config)
    train_vae(vae, config, world, first_seed=VAE_SEEDS, callback=log_progress("vae", steps, time.perf_counter()))
    set_latent_stats(vae, world, first_seed=VAE_SEEDS)
    vae.save_pretrained(os.path.join(work, "vae"))


def stage_teacher(work: str, steps: int, world: WorldConfig, base: DemoTeacherConfig) -> None:
    vae = AutoencoderKLWan.from_pretrained(os.path.join(work, "vae")).eval()
    spec = TinyWanSpec()
    components = tiny_wan_components(spec)
    config = replace(base, num_steps=steps)
    torch.manual_seed(0)
    transformer = build_teacher(config, latent_channels=vae.config.z_dim, text_dim=spec.text_dim)
    pipe = WanPipeline(transformer=transformer, vae=vae, text_encoder=components["text_encoder"].eval(),
                       tokenizer=components["tokenizer"],
                       scheduler=FlowMatchEulerDiscreteScheduler(shift=config.shift))  # fmt: skip
    mean = torch.tensor(vae.config.latents_mean).view(1, -1, 1, 1, 1)
    std = torch.tensor(vae.config.latents_std).view(1, -1, 1, 1, 1)

    def encode_latents(pixels):
        return (vae.encode(pixels).latent_dist.sample() - mean) / std

    def encode_text(captions):
        embeds, _ = pipe.encode_prompt(captions, do_classifier_free_guidance=False,
                                       max_sequence_length=spec.max_sequence_length)  # fmt: skip
        return embeds

    train_teacher(transformer, encode_latents=encode_latents, encode_text=encode_text, config=config, world=world,
                  first_seed=TEACHER_SEEDS, callback=log_progress("teacher", steps, time.perf_counter()))  # fmt: skip
    folder = os.path.join(work, "teacher")
    pipe.save_pretrained(folder)
    dcm_config = DCMModelConfig(
        family="wan", schedule=ScheduleConfig(boundary_index=WAN_BOUNDARY_INDEX),
        max_sequence_length=spec.max_sequence_length,
        default_generation=GenerationConfig(num_frames=world.num_frames, height=world.size, width=world.size,
                                            num_inference_steps=50, guidance_scale=5.0, fps=8),
    )  # fmt: skip
    with open(os.path.join(folder, CONFIG_NAME), "w") as f:
        json.dump(to_dict(dcm_config), f, indent=2)


@torch.no_grad()
def stage_data(work: str, num_clips: int, world: WorldConfig) -> None:
    teacher = load_pipeline(os.path.join(work, "teacher"))
    writer = DatasetWriter(os.path.join(work, "data"), family="wan", negative=teacher.encode_prompts([""]),
                           source="shapes world")  # fmt: skip
    batch = 16
    for start in range(0, num_clips, batch):
        seeds = range(DATA_SEEDS + start, DATA_SEEDS + min(start + batch, num_clips))
        pixels, captions = clip_batch(seeds, world)
        video = (pixels.permute(0, 2, 3, 4, 1) + 1) / 2  # (B, F, H, W, 3) in [0, 1]
        writer.add(teacher.family.encode_video(teacher.pipe, video), teacher.encode_prompts(captions), captions)
    writer.close()


def stage_distill(work: str, output: str, semantic_steps: int, detail_steps: int) -> None:
    """jobs/distill.py's tiny recipe on the demo teacher and data (a local Ray on 127.0.0.1)."""
    from dcm.cluster.runtime import init_ray, shutdown_ray
    from dcm.cluster.train import run_distillation
    from dcm.distill.recipes import tiny

    config = tiny(teacher=os.path.join(work, "teacher"), data=os.path.join(work, "data"), output=output)
    config = replace(config, semantic=replace(config.semantic, num_steps=semantic_steps),
                     detail=replace(config.detail, num_steps=detail_steps), batch_size=4,
                     storage_path=os.path.join(work, "runs"))  # fmt: skip
    owns_ray = init_ray()
    try:
        run_distillation(config)
    finally:
        if owns_ray:
            shutdown_ray()


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    args = parse_args(argv)
    world = WorldConfig(size=args.size, num_frames=args.frames, pixels_per_frame=args.size / 64 * 1.5)
    vae_config, teacher_config = SCALES[args.scale]
    stages = STAGES if args.stage == "all" else (args.stage,)
    os.makedirs(args.work_dir, exist_ok=True)
    for stage in stages:
        folder = os.path.join(args.work_dir, {"distill": "dcm"}.get(stage, stage))
        if os.path.exists(folder) and args.stage == "all":
            logger.info("[%s] %s exists: skipped", stage, folder)
            continue
        start = time.perf_counter()
        if stage == "vae":
            stage_vae(args.work_dir, args.vae_steps, world, vae_config)
        elif stage == "teacher":
            stage_teacher(args.work_dir, args.teacher_steps, world, teacher_config)
        elif stage == "data":
            stage_data(args.work_dir, args.data_clips, world)
        else:
            stage_distill(args.work_dir, folder, args.semantic_steps, args.detail_steps)
        logger.info("[%s] done in %.1f s -> %s", stage, time.perf_counter() - start, folder)
    return 0


if __name__ == "__main__":
    sys.exit(main())
