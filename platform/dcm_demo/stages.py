"""The stages of the demo stack's training (``jobs/train_demo.py``): each writes one folder under the work dir.

    vae        vae/          a small AutoencoderKLWan (+ shapesbench.json: ShapesBench of held-out reconstructions)
    data       text/ data/   the word tokenizer + tiny UMT5 encoder; latents and prompt embeddings of training clips
    teacher    teacher/      a WanPipeline folder (trained VAE, text encoder, flow-matching transformer) + dcm_config;
                             teacher-checkpoint/ holds the run's state, so a stopped run continues where it stopped
    distill    dcm/          jobs/distill.py's `demo` recipe: semantic/, final/ (DCM model), export/ (stock diffusers)
    baselines  baselines/    the ShapesBench comparison students: lcm/, pcm/, no-tcl/, no-gan/ (same step budget)
    package    (not in "all") copies dcm/final and dcm/export into the package data (platform/dcm/assets), the
               export's weights stored in float16 to keep the package small (they load back as float32)

A finished stage's folder is written last (from a temporary folder), so its existence means the stage is done.
The distill and baselines stages need a connected Ray; the job starts and stops it.
"""

from __future__ import annotations

import dataclasses
import glob
import json
import logging
import os
import shutil
import time
from dataclasses import dataclass, replace

import torch
from diffusers import AutoencoderKLWan, FlowMatchEulerDiscreteScheduler, WanPipeline
from safetensors.torch import load_file, save_file
from transformers import PreTrainedTokenizerFast, UMT5EncoderModel

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
    TeacherTrainer,
    build_teacher,
    build_vae,
    clip_batch,
    finetune_vae,
    make_deterministic,
    reconstruction_report,
    set_latent_stats,
    train_vae,
)
from dcm_demo.world import WorldConfig

logger = logging.getLogger("train_demo")
STAGES = ("vae", "data", "teacher", "distill", "baselines")
PACKAGE_STAGE = "package"
RAY_STAGES = ("distill", "baselines")
STAGE_FOLDERS = {"distill": "dcm"}
TEACHER_CHECKPOINT = "teacher-checkpoint"
TEACHER_SNAPSHOTS = "teacher-snapshots"
# Seed ranges: VAE clips, teacher/distillation clips, VAE check clips, validation and ShapesBench clips
# (dcm_demo.bench, from 8e6) never overlap.
VAE_SEEDS, DATA_SEEDS = 0, 1_000_000
# Held-out clips whose reconstructions check the VAE.
CHECK_SEEDS, CHECK_CLIPS = 5_000_000, 32
# Clips (each encoded in every palette colour) for the VAE's colour separation in latent space (dcm_demo.geometry).
SEPARATION_CLIPS = 8
ENCODE_BATCH = 32
LOG_EVERY = 50
TEACHER_CHECKPOINT_EVERY = 250  # steps: at most a few minutes of a CPU run lost to a stop
DEFAULT_DATA_CLIPS = 2048
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


@dataclass(frozen=True, kw_only=True)
class DemoRun:
    """One invocation of the demo training: where, which stages, and the configs of each.

    Args:
        work_dir: folder every stage writes under.
        stages: the stages to run, in order.
        rerun: run a named stage even when its folder exists (``False``: skip finished stages).
        world: clip size, length and speed.
        vae: the VAE stage's config.
        teacher: the teacher stage's config.
        data_clips: clips encoded by the data stage.
        semantic_steps: DCM stage I steps (distill and baselines).
        detail_steps: DCM stage II steps.
        snapshot_every: also write the teacher's shippable weights every this many steps (0: never).
    """

    work_dir: str
    stages: tuple[str, ...]
    rerun: bool
    world: WorldConfig
    vae: DemoVAEConfig
    teacher: DemoTeacherConfig
    data_clips: int = DEFAULT_DATA_CLIPS
    semantic_steps: int = DEMO_STEPS
    detail_steps: int = DEMO_STEPS
    snapshot_every: int = 0

    def __post_init__(self) -> None:
        unknown = [s for s in self.stages if s not in (*STAGES, PACKAGE_STAGE)]
        if unknown:
            raise ValueError(f"stages must be among {(*STAGES, PACKAGE_STAGE)}, got {unknown}")
        for name in ("data_clips", "semantic_steps", "detail_steps"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if self.snapshot_every < 0:
            raise ValueError(f"snapshot_every must be >= 0, got {self.snapshot_every}")


def log_progress(stage: str, total: int, *, first: int = 0):
    """A ``callback(step, loss)`` that logs every :data:`LOG_EVERY` steps with the elapsed time and an ETA."""
    start = time.perf_counter()

    def callback(step: int, loss: float) -> None:
        if step % LOG_EVERY == 0 or step == total - 1:
            elapsed = time.perf_counter() - start
            eta = elapsed / (step + 1 - first) * (total - step - 1)
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


def _publish(tmp: str, folder: str) -> None:
    """Moves a finished temporary folder into place, replacing an older one."""
    shutil.rmtree(folder, ignore_errors=True)
    os.replace(tmp, folder)


def stage_vae(run: DemoRun) -> None:
    config, world = run.vae, run.world
    torch.manual_seed(0)
    vae = build_vae(config)
    train_vae(vae, config, world, first_seed=VAE_SEEDS, callback=log_progress("vae", config.num_steps))
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
    folder = os.path.join(run.work_dir, "vae")
    vae.save_pretrained(folder + ".tmp")
    with open(os.path.join(folder + ".tmp", "shapesbench.json"), "w") as f:
        json.dump(report, f, indent=2)
    _publish(folder + ".tmp", folder)


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
def stage_data(run: DemoRun) -> None:
    work, world = run.work_dir, run.world
    tokenizer = demo_text.word_tokenizer()
    tokenizer.save_pretrained(os.path.join(work, "text", "tokenizer"))
    demo_text.text_encoder(tokenizer, dim=TEXT_DIM, layers=TEXT_LAYERS).save_pretrained(
        os.path.join(work, "text", "text_encoder")
    )
    pipe = text_pipeline(work)
    folder = os.path.join(work, "data")
    writer = DatasetWriter(folder + ".tmp", family="wan", negative=encode_prompts(pipe, [""]),
                           source="shapes world")  # fmt: skip
    generator = torch.Generator().manual_seed(DATA_SEEDS)
    start_time = time.perf_counter()
    for start in range(0, run.data_clips, ENCODE_BATCH):
        seeds = range(DATA_SEEDS + start, DATA_SEEDS + min(start + ENCODE_BATCH, run.data_clips))
        pixels, captions = clip_batch(seeds, world)
        video = (pixels.permute(0, 2, 3, 4, 1) + 1) / 2  # (B, F, H, W, 3) in [0, 1]
        latents = WanFamily().encode_video(pipe, video, generator=generator)
        writer.add(latents, encode_prompts(pipe, captions), captions)
        logger.info("[data] %d/%d clips encoded (%.0f s)", start + len(seeds), run.data_clips,
                    time.perf_counter() - start_time)  # fmt: skip
    writer.close()
    _publish(folder + ".tmp", folder)


def save_teacher_checkpoint(folder: str, trainer: TeacherTrainer) -> None:
    """Writes the trainer's whole state: weights and EMA as safetensors, optimiser moments, step and generator state
    through ``torch.save`` (read back with ``weights_only=True``), the config as JSON. The previous checkpoint is
    replaced only once the new one is complete."""
    state, tmp = trainer.state_dict(), folder + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    for key in ("model", "ema"):
        if key in state:
            save_file({k: v.contiguous() for k, v in state[key].items()}, os.path.join(tmp, f"{key}.safetensors"))
    torch.save({k: state[k] for k in ("optimizer", "step", "generator")}, os.path.join(tmp, "trainer.pt"))
    with open(os.path.join(tmp, "config.json"), "w") as f:
        json.dump(dataclasses.asdict(trainer.config), f, indent=2)
    _publish(tmp, folder)


def load_teacher_checkpoint(folder: str, config: DemoTeacherConfig) -> dict | None:
    """The state :func:`save_teacher_checkpoint` wrote (``None`` without a checkpoint); raises ValueError when it was
    written with another config, naming the fields that differ. A run on a constant learning rate (``lr ==
    min_lr``) may continue with a larger ``num_steps``: its first steps are the same whatever the total."""
    if not os.path.isfile(os.path.join(folder, "trainer.pt")):
        return None
    with open(os.path.join(folder, "config.json")) as f:
        saved = json.load(f)
    current = json.loads(json.dumps(dataclasses.asdict(config)))  # tuples as lists, as they were saved
    # With a constant learning rate after the warm-up nothing depends on num_steps: such a run may be extended.
    extendable = config.lr == config.min_lr and saved.get("lr") == saved.get("min_lr")
    changed = {k: (saved.get(k), v) for k, v in current.items()
               if saved.get(k) != v and not (k == "num_steps" and extendable)}  # fmt: skip
    if changed:
        raise ValueError(f"{folder} was written with another teacher config (field: (checkpoint, now)): {changed}; "
                         f"resume with the same config or delete the checkpoint")  # fmt: skip
    state = torch.load(os.path.join(folder, "trainer.pt"), weights_only=True)
    for key in ("model", "ema"):
        path = os.path.join(folder, f"{key}.safetensors")
        if os.path.isfile(path):
            state[key] = load_file(path)
    return state


def save_teacher(folder: str, pipe: WanPipeline, transformer, run: DemoRun, *, step: int) -> None:
    """A WanPipeline folder of the teacher with its DCM config and its training record (config, step)."""
    # The teacher samples on the demo grid's shift, whatever noise levels it was trained on.
    pipe = WanPipeline(**{**pipe.components, "transformer": transformer,
                          "scheduler": FlowMatchEulerDiscreteScheduler(shift=DEMO_SHIFT)})  # fmt: skip
    pipe.save_pretrained(folder + ".tmp")
    dcm_config = demo_model_config(run.world, steps=TEACHER_STEPS, guidance_scale=TEACHER_GUIDANCE)
    with open(os.path.join(folder + ".tmp", CONFIG_NAME), "w") as f:
        json.dump(to_dict(dcm_config), f, indent=2)
    with open(os.path.join(folder + ".tmp", "training.json"), "w") as f:
        json.dump({"teacher": dataclasses.asdict(run.teacher), "step": step, "data_clips": run.data_clips}, f,
                  indent=2)  # fmt: skip
    _publish(folder + ".tmp", folder)


def stage_teacher(run: DemoRun) -> None:
    """Trains the teacher, resuming from ``teacher-checkpoint/`` when it holds a run of the same config, and
    checkpointing every :data:`TEACHER_CHECKPOINT_EVERY` steps."""
    work, config = run.work_dir, run.teacher
    pipe, data = text_pipeline(work), LatentDataset(os.path.join(work, "data"))
    torch.manual_seed(0)
    transformer = build_teacher(config, latent_channels=pipe.vae.config.z_dim, text_dim=TEXT_DIM)
    key = "encoder_hidden_states"
    trainer = TeacherTrainer(transformer, latents=data.tensors["latents"], text=data.tensors[key],
                             negative=data.negative[key], config=config, seed=DATA_SEEDS)  # fmt: skip
    checkpoint = os.path.join(work, TEACHER_CHECKPOINT)
    state = load_teacher_checkpoint(checkpoint, config)
    if state is not None:
        trainer.load_state_dict(state)
        logger.info("[teacher] resumed from %s at step %d", checkpoint, trainer.step)
    progress = log_progress("teacher", config.num_steps, first=trainer.step)
    while trainer.step < config.num_steps:
        loss = trainer.train_step()
        progress(trainer.step - 1, loss)
        if trainer.step % TEACHER_CHECKPOINT_EVERY == 0 or trainer.step == config.num_steps:
            save_teacher_checkpoint(checkpoint, trainer)
        if run.snapshot_every and trainer.step % run.snapshot_every == 0 and trainer.step < config.num_steps:
            snapshot = build_teacher(config, latent_channels=pipe.vae.config.z_dim, text_dim=TEXT_DIM)
            snapshot.load_state_dict(trainer.final_state_dict())
            save_teacher(os.path.join(work, TEACHER_SNAPSHOTS, f"step-{trainer.step:06d}"), pipe, snapshot.eval(),
                         run, step=trainer.step)  # fmt: skip
    transformer.load_state_dict(trainer.final_state_dict())
    save_teacher(os.path.join(work, "teacher"), pipe, transformer.eval(), run, step=trainer.step)


def run_recipe(work: str, recipe: str, output: str, semantic_steps: int, detail_steps: int) -> None:
    """One jobs/distill.py recipe on the demo teacher and data, on the connected Ray."""
    from dcm.cluster.train import run_distillation
    from dcm_demo.recipes import RECIPES, with_budget

    config = RECIPES[recipe](teacher=os.path.join(work, "teacher"), data=os.path.join(work, "data"), output=output)
    config = replace(with_budget(config, semantic_steps, detail_steps), storage_path=os.path.join(work, "runs"))
    run_distillation(config)


def stage_distill(run: DemoRun) -> None:
    run_recipe(run.work_dir, "demo", os.path.join(run.work_dir, "dcm"), run.semantic_steps, run.detail_steps)


def stage_baselines(run: DemoRun) -> None:
    """The comparison students of ShapesBench, each in baselines/<name>; a finished one is kept."""
    from dcm_demo.recipes import DEMO_BASELINES

    for name, recipe in DEMO_BASELINES.items():
        output = os.path.join(run.work_dir, "baselines", name)
        if os.path.exists(os.path.join(output, "final" if name.startswith("no-") else "semantic")):
            logger.info("[baselines] %s exists: skipped", output)
            continue
        start = time.perf_counter()
        run_recipe(run.work_dir, recipe, output, run.semantic_steps, run.detail_steps)
        logger.info("[baselines] %s done in %.1f s", name, time.perf_counter() - start)


def stage_package(run: DemoRun) -> None:
    """Replaces the bundled demo model (package data) with this work dir's DCM folder and export."""
    work = run.work_dir
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


STAGE_FUNCTIONS = {
    "vae": stage_vae, "data": stage_data, "teacher": stage_teacher, "distill": stage_distill,
    "baselines": stage_baselines, PACKAGE_STAGE: stage_package,
}  # fmt: skip


def run_stages(run: DemoRun, stages: tuple[str, ...]) -> None:
    """Runs these stages of ``run`` in order; without ``run.rerun`` a stage whose folder exists is skipped (the
    baselines stage skips each finished student instead)."""
    for stage in stages:
        folder = os.path.join(run.work_dir, STAGE_FOLDERS.get(stage, stage))
        if stage != PACKAGE_STAGE and os.path.exists(folder) and not run.rerun and stage != "baselines":
            logger.info("[%s] %s exists: skipped", stage, folder)
            continue
        start = time.perf_counter()
        STAGE_FUNCTIONS[stage](run)
        logger.info("[%s] done in %.1f s -> %s", stage, time.perf_counter() - start, folder)
