"""Train the demo stack on the shapes world, on a CPU: VAE -> data -> teacher -> DCM -> baselines.

    python jobs/train_demo.py --work-dir outputs/demo                 # every stage, each resumable by its folder
    python jobs/train_demo.py --work-dir outputs/demo --stage vae --vae-steps 1500

Stages and what they write under --work-dir:
    vae        vae/          a small AutoencoderKLWan (+ shapesbench.json: ShapesBench of held-out reconstructions)
    data       text/ data/   the word tokenizer + tiny UMT5 encoder; latents and prompt embeddings of training clips
                             (the teacher trains on them and jobs/distill.py distils on them)
    teacher    teacher/      a WanPipeline folder (trained VAE, text encoder, flow-matching transformer) + dcm_config
    distill    dcm/          jobs/distill.py's `demo` recipe: semantic/, final/ (DCM model), export/ (stock diffusers)
    baselines  baselines/    the ShapesBench comparison students: lcm/, pcm/, no-tcl/, no-gan/ (same step budget)
    package    (not in "all") copies dcm/final and dcm/export into the package data (platform/dcm/assets), the
               export's weights stored in float16 to keep the package small (they load back as float32)
A stage whose folder exists is skipped, so an interrupted run continues where it stopped.
"""

from __future__ import annotations

import argparse
import glob
import json
import logging
import os
import shutil
import sys
import time
from dataclasses import replace

import torch
from diffusers import AutoencoderKLWan, FlowMatchEulerDiscreteScheduler, WanPipeline
from safetensors.torch import load_file, save_file
from transformers import PreTrainedTokenizerFast, UMT5EncoderModel

from dcm.cluster.runtime import init_ray, shutdown_ray
from dcm.config import DCMModelConfig, GenerationConfig, ScheduleConfig, to_dict
from dcm.data import DatasetWriter, LatentDataset
from dcm.io.model_folder import CONFIG_NAME
from dcm.models.wan import WanFamily
from dcm.presets import DEMO_EXPORT_FOLDER, DEMO_FOLDER
from dcm_demo import text as demo_text
from dcm_demo.geometry import colour_separation
from dcm_demo.recipes import DEMO_BOUNDARY_INDEX, DEMO_SHIFT, DEMO_STEPS
from dcm_demo.training import (
    DemoTeacherConfig,
    DemoVAEConfig,
    build_teacher,
    build_vae,
    clip_batch,
    finetune_vae,
    make_deterministic,
    reconstruction_report,
    set_latent_stats,
    train_teacher,
    train_vae,
)
from dcm_demo.world import WorldConfig

logger = logging.getLogger("train_demo")
STAGES = ("vae", "data", "teacher", "distill", "baselines")
PACKAGE_STAGE = "package"
RAY_STAGES = ("distill", "baselines")
STAGE_FOLDERS = {"distill": "dcm"}
# Seed ranges: VAE clips, teacher/distillation clips, VAE check clips and ShapesBench clips never overlap.
VAE_SEEDS, DATA_SEEDS = 0, 1_000_000
# Held-out clips whose reconstructions check the VAE (ShapesBench prompts use their own seeds, dcm_demo.bench).
CHECK_SEEDS, CHECK_CLIPS = 5_000_000, 32
# Clips (each encoded in every palette colour) for the VAE's colour separation in latent space (dcm_demo.geometry).
SEPARATION_CLIPS = 8
ENCODE_BATCH = 32
LOG_EVERY = 50
# Width of the demo's UMT5 text encoder (2 layers).
TEXT_DIM, TEXT_LAYERS = 32, 2
# Generation defaults stored with the teacher: 50 Euler steps, CFG 5 (the benchmark's reference row).
TEACHER_STEPS, TEACHER_GUIDANCE, DEMO_FPS = 50, 5.0, 8
# Model sizes: "demo" is what ships; "test" is a seconds-long smoke run of every stage.
SCALES = {
    "demo": (DemoVAEConfig(), DemoTeacherConfig()),
    "test": (
        DemoVAEConfig(base_dim=8, dim_mult=(1, 1, 1)),
        DemoTeacherConfig(num_layers=1, num_attention_heads=2, attention_head_dim=8, ffn_dim=16, batch_size=4),
    ),
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work-dir", default="outputs/demo")
    p.add_argument("--stage", choices=[*STAGES, PACKAGE_STAGE, "all"], default="all")
    p.add_argument("--scale", choices=sorted(SCALES), default="demo", help="model sizes")
    p.add_argument("--size", type=int, default=WorldConfig().size, help="clip height and width")
    p.add_argument("--frames", type=int, default=WorldConfig().num_frames, help="frames per clip (1 + 4k)")
    p.add_argument("--vae-steps", type=int, default=DemoVAEConfig().num_steps, help="VAE steps on short clips")
    p.add_argument("--vae-finetune-steps", type=int, default=DemoVAEConfig().finetune_steps,
                   help="VAE fine-tune steps on full-length clips")  # fmt: skip
    p.add_argument("--data-clips", type=int, default=2048, help="clips the teacher and the distillation train on")
    p.add_argument("--teacher-steps", type=int, default=DemoTeacherConfig().num_steps)
    p.add_argument("--semantic-steps", type=int, default=DEMO_STEPS, help="DCM stage I steps")
    p.add_argument("--detail-steps", type=int, default=DEMO_STEPS, help="DCM stage II steps")
    return p.parse_args(argv)


def log_progress(stage: str, total: int):
    start = time.perf_counter()

    def callback(step: int, loss: float) -> None:
        if step % LOG_EVERY == 0 or step == total - 1:
            elapsed = time.perf_counter() - start
            eta = elapsed / (step + 1) * (total - step - 1)
            logger.info("[%s] step %d/%d loss %.4f (%.0f s, eta %.0f s)", stage, step + 1, total, loss, elapsed, eta)

    return callback


def demo_model_config(world: WorldConfig, *, steps: int, guidance_scale: float) -> DCMModelConfig:
    """The demo family's DCMModelConfig: Wan, the demo grid (shift 5, k 25), word-level prompts, world-sized video."""
    return DCMModelConfig(
        family="wan", schedule=ScheduleConfig(boundary_index=DEMO_BOUNDARY_INDEX, shift=DEMO_SHIFT),
        max_sequence_length=demo_text.MAX_SEQUENCE_LENGTH,
        default_generation=GenerationConfig(num_frames=world.num_frames, height=world.size, width=world.size,
                                            num_inference_steps=steps, guidance_scale=guidance_scale, fps=DEMO_FPS),
    )  # fmt: skip


def stage_vae(work: str, steps: int, finetune_steps: int, world: WorldConfig, base: DemoVAEConfig) -> None:
    config = replace(base, num_steps=steps, finetune_steps=finetune_steps)
    torch.manual_seed(0)
    vae = build_vae(config)
    train_vae(vae, config, world, first_seed=VAE_SEEDS, callback=log_progress("vae", steps))
    finetune_vae(vae, config, world, first_seed=VAE_SEEDS,
                 callback=log_progress("vae-full-length", config.finetune_steps))  # fmt: skip
    make_deterministic(vae)
    set_latent_stats(vae, world, first_seed=VAE_SEEDS)
    report = reconstruction_report(vae.eval(), world, range(CHECK_SEEDS, CHECK_SEEDS + CHECK_CLIPS))
    logger.info("[vae] ShapesBench of %d held-out reconstructions: %s", CHECK_CLIPS, report)
    separation = colour_separation(vae, world, range(CHECK_SEEDS, CHECK_SEEDS + SEPARATION_CLIPS))
    closest = min(separation, key=separation.get)
    logger.info("[vae] closest colours in latent space: %s at %.2f of a new layout's distance", closest,
                separation[closest])  # fmt: skip
    report["colour_separation"] = separation
    folder = os.path.join(work, "vae")
    vae.save_pretrained(folder)
    with open(os.path.join(folder, "shapesbench.json"), "w") as f:
        json.dump(report, f, indent=2)


def text_pipeline(work: str) -> WanPipeline:
    """A WanPipeline without a transformer: the trained VAE and the demo text side, for encoding."""
    return WanPipeline(
        transformer=None, vae=AutoencoderKLWan.from_pretrained(os.path.join(work, "vae")).eval(),
        text_encoder=UMT5EncoderModel.from_pretrained(os.path.join(work, "text", "text_encoder")).eval(),
        tokenizer=PreTrainedTokenizerFast.from_pretrained(os.path.join(work, "text", "tokenizer")),
        scheduler=FlowMatchEulerDiscreteScheduler(shift=DEMO_SHIFT),
    )  # fmt: skip


def encode_prompts(pipe: WanPipeline, prompts: list[str]) -> dict[str, torch.Tensor]:
    return WanFamily().encode_prompts(pipe, prompts, max_sequence_length=demo_text.MAX_SEQUENCE_LENGTH)


@torch.no_grad()
def stage_data(work: str, num_clips: int, world: WorldConfig) -> None:
    tokenizer = demo_text.word_tokenizer()
    tokenizer.save_pretrained(os.path.join(work, "text", "tokenizer"))
    demo_text.text_encoder(tokenizer, dim=TEXT_DIM, layers=TEXT_LAYERS).save_pretrained(
        os.path.join(work, "text", "text_encoder")
    )
    pipe = text_pipeline(work)
    writer = DatasetWriter(os.path.join(work, "data"), family="wan", negative=encode_prompts(pipe, [""]),
                           source="shapes world")  # fmt: skip
    generator = torch.Generator().manual_seed(DATA_SEEDS)
    start_time = time.perf_counter()
    for start in range(0, num_clips, ENCODE_BATCH):
        seeds = range(DATA_SEEDS + start, DATA_SEEDS + min(start + ENCODE_BATCH, num_clips))
        pixels, captions = clip_batch(seeds, world)
        video = (pixels.permute(0, 2, 3, 4, 1) + 1) / 2  # (B, F, H, W, 3) in [0, 1]
        latents = WanFamily().encode_video(pipe, video, generator=generator)
        writer.add(latents, encode_prompts(pipe, captions), captions)
        logger.info("[data] %d/%d clips encoded (%.0f s)", start + len(seeds), num_clips,
                    time.perf_counter() - start_time)  # fmt: skip
    writer.close()


def stage_teacher(work: str, steps: int, world: WorldConfig, base: DemoTeacherConfig) -> None:
    pipe = text_pipeline(work)
    data = LatentDataset(os.path.join(work, "data"))
    config = replace(base, num_steps=steps)
    torch.manual_seed(0)
    transformer = build_teacher(config, latent_channels=pipe.vae.config.z_dim, text_dim=TEXT_DIM)
    key = "encoder_hidden_states"
    train_teacher(transformer, latents=data.tensors["latents"], text=data.tensors[key], negative=data.negative[key],
                  config=config, seed=DATA_SEEDS, callback=log_progress("teacher", steps))  # fmt: skip
    pipe = WanPipeline(**{**pipe.components, "transformer": transformer,
                          "scheduler": FlowMatchEulerDiscreteScheduler(shift=config.shift)})  # fmt: skip
    folder = os.path.join(work, "teacher")
    pipe.save_pretrained(folder)
    dcm_config = demo_model_config(world, steps=TEACHER_STEPS, guidance_scale=TEACHER_GUIDANCE)
    with open(os.path.join(folder, CONFIG_NAME), "w") as f:
        json.dump(to_dict(dcm_config), f, indent=2)


def run_recipe(work: str, recipe: str, output: str, semantic_steps: int, detail_steps: int) -> None:
    """One jobs/distill.py recipe on the demo teacher and data, on the connected Ray (see :func:`main`)."""
    from dcm.cluster.train import run_distillation
    from dcm_demo.recipes import RECIPES, with_budget

    config = RECIPES[recipe](teacher=os.path.join(work, "teacher"), data=os.path.join(work, "data"), output=output)
    config = replace(with_budget(config, semantic_steps, detail_steps), storage_path=os.path.join(work, "runs"))
    run_distillation(config)


def stage_baselines(work: str, semantic_steps: int, detail_steps: int) -> None:
    """The comparison students of ShapesBench, each in baselines/<name>; a finished one is kept."""
    from dcm_demo.recipes import DEMO_BASELINES

    for name, recipe in DEMO_BASELINES.items():
        output = os.path.join(work, "baselines", name)
        if os.path.exists(os.path.join(output, "final" if name.startswith("no-") else "semantic")):
            logger.info("[baselines] %s exists: skipped", output)
            continue
        start = time.perf_counter()
        run_recipe(work, recipe, output, semantic_steps, detail_steps)
        logger.info("[baselines] %s done in %.1f s", name, time.perf_counter() - start)


def stage_package(work: str) -> None:
    """Replaces the bundled demo model (package data) with this work dir's DCM folder and export."""
    targets = ((os.path.join(work, "dcm", "final"), DEMO_FOLDER, None),
               (os.path.join(work, "dcm", "export"), DEMO_EXPORT_FOLDER, torch.float16))  # fmt: skip
    for source, target, dtype in targets:
        if not os.path.isdir(source):
            raise FileNotFoundError(f"{source} does not exist: run the distill stage first")
        shutil.rmtree(target, ignore_errors=True)
        shutil.copytree(source, target)
        if dtype is not None:
            for path in glob.glob(os.path.join(target, "**", "*.safetensors"), recursive=True):
                state = load_file(path)
                save_file({k: v.to(dtype) if v.is_floating_point() else v for k, v in state.items()}, path)
        size = sum(os.path.getsize(p) for p in glob.glob(os.path.join(target, "**"), recursive=True)
                   if os.path.isfile(p))  # fmt: skip
        logger.info("[package] %s -> %s (%.1f MB)", source, target, size / 1e6)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    args = parse_args(argv)
    world = WorldConfig(size=args.size, num_frames=args.frames, pixels_per_frame=args.size / 64 * 1.5)
    vae_config, teacher_config = SCALES[args.scale]
    if args.stage == PACKAGE_STAGE:
        stage_package(args.work_dir)
        return 0
    stages = STAGES if args.stage == "all" else (args.stage,)
    os.makedirs(args.work_dir, exist_ok=True)
    total = time.perf_counter()
    run_stages(args, [s for s in stages if s not in RAY_STAGES], world, vae_config, teacher_config)
    ray_stages = [s for s in stages if s in RAY_STAGES]  # the last ones: they distil the teacher
    if ray_stages:
        # One Ray for every distillation run: a local one on 127.0.0.1, or $RAY_ADDRESS under `ray job submit`.
        owns_ray = init_ray()
        try:
            run_stages(args, ray_stages, world, vae_config, teacher_config)
        finally:
            if owns_ray:
                shutdown_ray()
    logger.info("all requested stages done in %.1f s", time.perf_counter() - total)
    return 0


def run_stages(args, stages, world: WorldConfig, vae_config: DemoVAEConfig, teacher_config: DemoTeacherConfig) -> None:
    for stage in stages:
        folder = os.path.join(args.work_dir, STAGE_FOLDERS.get(stage, stage))
        if os.path.exists(folder) and args.stage == "all" and stage != "baselines":
            logger.info("[%s] %s exists: skipped", stage, folder)
            continue
        start = time.perf_counter()
        if stage == "vae":
            stage_vae(args.work_dir, args.vae_steps, args.vae_finetune_steps, world, vae_config)
        elif stage == "data":
            stage_data(args.work_dir, args.data_clips, world)
        elif stage == "teacher":
            stage_teacher(args.work_dir, args.teacher_steps, world, teacher_config)
        elif stage == "distill":
            run_recipe(args.work_dir, "demo", folder, args.semantic_steps, args.detail_steps)
        else:
            stage_baselines(args.work_dir, args.semantic_steps, args.detail_steps)
        logger.info("[%s] done in %.1f s -> %s", stage, time.perf_counter() - start, folder)


if __name__ == "__main__":
    sys.exit(main())
