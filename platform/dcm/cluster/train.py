"""Ray Train glue for DCM distillation: the per-worker loop, its checkpoints and resume, and the driver.

    run_distillation(config)   # one TorchTrainer per stage: semantic -> <output>/semantic, detail -> <output>/final

The worker loop streams its share of the data, calls the stage's train step (:mod:`dcm.distill.steps`), and every
``checkpoint_every`` steps writes a sharded checkpoint (:mod:`dcm.distill.checkpoint`) that Ray Train uploads to
``<storage>/<run_name>-<stage>``. Ray Train hands the latest one back when a worker group restarts after a failure
(``max_failures``) or when the same run is submitted again; the run's fingerprint, stored with its checkpoints and
beside its folders, keeps another run from resuming from them or overwriting them. The process group is Ray Train's
(``TorchConfig``: gloo on CPUs, NCCL on GPUs).
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path

import torch
import torch.distributed as dist

from dcm.data import EpochSampler, LatentDataset, with_negative
from dcm.distill.build import STAGE_DIRS, build_stage, output_pipeline
from dcm.distill.checkpoint import (
    consolidated_state,
    fingerprint,
    identity_difference,
    load_checkpoint,
    run_identity,
    save_checkpoint,
    stage_identity,
)
from dcm.distill.config import DETAIL_STAGE, DistillConfig
from dcm.distill.memory import GiB, format_plan
from dcm.distill.preflight import check_inputs, plan_run
from dcm.distill.steps import TRAIN_STEPS
from dcm.distill.validation import Validator
from dcm.io.model_folder import export_diffusers, load_pipeline, save_pretrained
from dcm.io.storage import Store
from dcm.io.video import encode_mp4

logger = logging.getLogger("dcm.distill")

EXPORT_DIR = "export"
VALIDATION_DIR = "validation"
RUN_RECORD = "dcm_run.json"  # the run's identity and fingerprint, beside its outputs and checkpoints


# -- the worker loop ---------------------------------------------------------------------------------------------


def train_loop_per_worker(loop_config: dict) -> None:
    """One worker of one stage. ``loop_config``: ``{"config": DistillConfig, "stage": str, "fingerprint": str}``."""
    import ray.train
    import ray.train.torch

    config: DistillConfig = loop_config["config"]
    stage: str = loop_config["stage"]
    run_fingerprint: str = loop_config["fingerprint"]
    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    device = ray.train.torch.get_device()
    log0 = logger.info if rank == 0 else _silent
    torch.manual_seed(config.seed + rank)
    rng = torch.Generator().manual_seed(config.seed + rank)  # noise and indices: seed + rank per worker
    num_steps = config.stage_config(stage).num_steps

    # 1. data: this worker's share of every epoch, streamed
    data = LatentDataset(config.data)
    sampler = EpochSampler(data.shard_sizes, rank=rank, num_replicas=world, seed=config.seed)
    loader = torch.utils.data.DataLoader(data, batch_size=config.batch_size, sampler=sampler, drop_last=True)
    steps_per_epoch = sampler.per_replica // config.batch_size
    latent_frames = data.latent_shape[1]
    if stage != DETAIL_STAGE and latent_frames <= config.semantic.tcl_stride:
        log0("[%s] Temporal Coherence Loss off: %d latent frames, stride %d", stage, latent_frames,
             config.semantic.tcl_stride)  # fmt: skip

    # 2. models (the validation prompt is encoded first: the text encoders visit the device before the models do)
    base = load_pipeline(config.teacher)
    validator = None
    if config.validate_every:
        validator = Validator(base, prompt=config.validation_prompt, seed=config.seed, latent_shape=data.latent_shape,
                              device=device)  # fmt: skip
    models, optimizers, base = build_stage(config, stage, device, base=base)

    # 3. resume
    step = resumed_from = 0
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as path:
            step = resumed_from = load_checkpoint(path, models, optimizers, rng, rank=rank,
                                                  run_fingerprint=run_fingerprint)  # fmt: skip
        log0("[%s] resumed from the checkpoint of step %d", stage, step)

    # 4. loop
    started = last = time.perf_counter()
    metrics: dict[str, float] = {}
    while step < num_steps:
        epoch, offset = divmod(step, steps_per_epoch)
        sampler.set_epoch(epoch, offset * config.batch_size)  # a resumed run continues mid-epoch
        for batch in loader:
            batch = {k: v.to(device) for k, v in with_negative(batch, data.negative).items()}
            metrics = TRAIN_STEPS[stage](models, optimizers, batch, rng, config=config)
            step += 1
            now = time.perf_counter()
            metrics.update(steps_per_s=1 / max(now - last, 1e-9))
            last = now
            done = step == num_steps
            save = step % config.checkpoint_every == 0 or done
            if step % config.log_every == 0 or step % config.report_every == 0 or save:
                metrics = mean_across_workers(metrics)  # a collective: every worker is here at the same steps
                summary = " ".join(f"{k}={v:.4g}" for k, v in metrics.items())
                log0("[%s] step %d/%d %s", stage, step, num_steps, summary)
            if validator is not None and step % config.validate_every == 0:
                write_validation(config, validator, models, stage, step, rank, fps=base.config.default_generation.fps)
            report = {**metrics, "step": step, "stage": stage, "resumed_from": resumed_from}
            if save:
                with tempfile.TemporaryDirectory() as tmp:
                    save_checkpoint(tmp, models, optimizers, rng, step=step, rank=rank,
                                    run_fingerprint=run_fingerprint)  # fmt: skip
                    ray.train.report(report, checkpoint=ray.train.Checkpoint.from_directory(tmp),
                                     checkpoint_dir_name=f"checkpoint-step{step:06d}")  # fmt: skip
            elif step % config.report_every == 0:
                ray.train.report(report)
            if done:
                break

    # 5. the stage's model folder, from the whole student gathered on rank 0
    state = consolidated_state(models)
    if rank == 0:
        save_stage_output(config, stage, output_pipeline(config, stage, base, state))
    log0("[%s] %d steps in %.1f s on %d worker(s)", stage, step - resumed_from, time.perf_counter() - started, world)


def _silent(*args, **kwargs) -> None:
    """The log of the workers other than rank 0."""


def mean_across_workers(metrics: dict[str, float]) -> dict[str, float]:
    """Every metric averaged over the workers (a collective); the same dict when there is one worker."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return metrics
    keys = sorted(metrics)
    values = torch.tensor([float(metrics[k]) for k in keys], dtype=torch.float64)
    backend_device = "cuda" if dist.get_backend() == "nccl" else "cpu"
    values = values.to(backend_device)
    dist.all_reduce(values)
    return {k: v / dist.get_world_size() for k, v in zip(keys, values.tolist())}


def write_validation(config: DistillConfig, validator: Validator, models, stage: str, step: int, rank: int, *,
                     fps: int) -> None:  # fmt: skip
    """Every worker samples (FSDP's forwards are collectives); rank 0 decodes and writes the MP4."""
    latents = validator.sample(models)
    if rank == 0:
        frames = validator.decode(latents)
        name = f"{VALIDATION_DIR}/{stage}-step{step:06d}.mp4"
        Store(config.output).put_bytes(name, encode_mp4(frames[0], fps=fps))


def save_stage_output(config: DistillConfig, stage: str, dcm) -> None:
    """Rank 0: the stage's DCM folder (and, after Stage II for Wan, the stock-diffusers export) into the output."""
    with tempfile.TemporaryDirectory() as tmp:
        local = save_pretrained(dcm, Path(tmp) / "model")
        Store(f"{config.output.rstrip('/')}/{STAGE_DIRS[stage]}").upload_from(local)
        if stage == DETAIL_STAGE and dcm.config.family == "wan":
            exported = export_diffusers(dcm, Path(tmp) / EXPORT_DIR)
            Store(f"{config.output.rstrip('/')}/{EXPORT_DIR}").upload_from(exported)


# -- the driver --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PreparedRun:
    """A run whose inputs passed every check (paths resolved) and whose folders are claimed; one fingerprint per
    stage, stored with that stage's checkpoints."""

    config: DistillConfig
    fingerprints: dict[str, str]


def prepare_distillation(
    config: DistillConfig, *, enforce_memory_plan: bool = True, on_cluster: bool | None = None
) -> PreparedRun:
    """Everything that can fail on input, before Ray or any worker starts, as a one-line ValueError: paths, teacher
    and data, the memory plan (GPU runs; ``enforce_memory_plan=False`` starts anyway), and another run owning the
    output or the checkpoint folders. Needs no Ray.

    Args:
        on_cluster: the driver runs against a Ray cluster (default: ``RAY_ADDRESS`` is set), so relative local paths
            are refused.
    """
    on_cluster = bool(os.environ.get("RAY_ADDRESS")) if on_cluster is None else on_cluster
    config = resolve_paths(config, on_cluster=on_cluster)
    inputs = check_inputs(config)
    if config.use_gpu:
        plan = plan_run(config, inputs)
        logger.info("%s", format_plan(plan))
        if not plan.fits and enforce_memory_plan:
            raise ValueError(
                f"the memory plan needs {plan.peak / GiB:.1f} GiB per GPU, more than the {plan.usable / GiB:.1f} GiB "
                f"usable of gpu_memory_gb={config.gpu_memory_gb}; see `jobs/distill.py --plan` (more workers, "
                "--strategy fsdp, a smaller video or batch), or pass --ignore-memory-plan"
            )
    identity = run_identity(config, inputs.data_meta)
    return PreparedRun(config=config, fingerprints=claim_run(config, identity))


def train_stages(run: PreparedRun) -> dict[str, dict]:
    """Runs a prepared run's stages one after the other on the connected Ray; returns the final metrics per stage."""
    from ray.train import FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    config = run.config
    results = {}
    for stage in config.stages:
        trainer = TorchTrainer(
            train_loop_per_worker,
            train_loop_config={"config": config, "stage": stage, "fingerprint": run.fingerprints[stage]},
            scaling_config=ScalingConfig(num_workers=config.num_workers, use_gpu=config.use_gpu),
            torch_config=TorchConfig(backend="nccl" if config.use_gpu else "gloo"),
            run_config=RunConfig(
                name=stage_run_name(config, stage),
                storage_path=config.storage(),
                failure_config=FailureConfig(max_failures=config.max_failures),
            ),
        )
        result = trainer.fit()
        results[stage] = dict(result.metrics or {})
        logger.info("[%s] finished: %s", stage, results[stage])
    return results


def run_distillation(
    config: DistillConfig, *, enforce_memory_plan: bool = True, on_cluster: bool | None = None
) -> dict[str, dict]:
    """:func:`prepare_distillation`, then :func:`train_stages` on the connected Ray; the final metrics per stage."""
    return train_stages(prepare_distillation(config, enforce_memory_plan=enforce_memory_plan, on_cluster=on_cluster))


def stage_run_name(config: DistillConfig, stage: str) -> str:
    """Ray Train's run folder of a stage, under the storage path."""
    return f"{config.run_name}-{stage}"


def resolve_paths(config: DistillConfig, *, on_cluster: bool) -> DistillConfig:
    """Local paths made absolute on the driver (workers run in their own working directory); the storage path
    defaults to ``<output>/checkpoints``.

    Raises:
        ValueError: a relative local output or storage path on a Ray cluster, where the driver's working directory
            is Ray's job folder (``ray job submit --working-dir``), which goes away with the job and the head node.
    """
    fields = {"output": config.output, "storage_path": config.storage()}
    if on_cluster:
        for name, path in fields.items():
            if not Store(path).is_s3 and not os.path.isabs(path):
                raise ValueError(
                    f"{name} {path!r} is relative: on a Ray cluster the driver runs in Ray's job working directory "
                    f"({os.getcwd()}), which does not outlive the job; pass an absolute path or an s3:// URI"
                )

    def absolute(path: str) -> str:
        return path if Store(path).is_s3 else os.path.abspath(path)

    def existing(path: str) -> str:  # teacher and data: a local folder that exists, else a preset or hub id as given
        return os.path.abspath(path) if not Store(path).is_s3 and os.path.exists(path) else path

    return replace(config, teacher=existing(config.teacher), data=existing(config.data),
                   output=absolute(config.output), storage_path=absolute(config.storage()))  # fmt: skip


def claim_run(config: DistillConfig, identity: dict) -> dict[str, str]:
    """Writes the run's record beside its output and each stage's identity beside that stage's checkpoint folder,
    after checking that no other run owns them; returns each stage's fingerprint. A folder another run wrote (another
    fingerprint), or one holding files without a record, is refused.

    Raises:
        ValueError: naming the folder, the other run and how the two differ.
    """
    stages = {s: stage_identity(identity, config, s) for s in config.stages}
    claims = [(config.output, identity, [f"{config.output.rstrip('/')}/{d}" for d in STAGE_DIRS.values()])]
    for stage, ours in stages.items():
        folder = f"{config.storage().rstrip('/')}/{stage_run_name(config, stage)}"
        claims.append((folder, ours, [folder]))
    for folder, ours, owned in claims:
        store = Store(folder)
        if store.exists(RUN_RECORD):
            theirs = json.loads(store.get_bytes(RUN_RECORD))
            if theirs["fingerprint"] != fingerprint(ours):
                raise ValueError(
                    f"{folder} belongs to another run ({theirs['fingerprint']}; differs in "
                    f"{identity_difference(ours, theirs['identity'])}); pass another --output, --storage-path or "
                    "--run-name, or delete that folder to start over"
                )
        elif any(Store(path).list() for path in owned):
            raise ValueError(f"{folder} holds files of an unknown run (no {RUN_RECORD}); pass another --output, "
                             "--storage-path or --run-name")  # fmt: skip
    for folder, ours, _ in claims:
        record = {"fingerprint": fingerprint(ours), "identity": ours}
        Store(folder).put_bytes(RUN_RECORD, json.dumps(record, indent=2).encode(), content_type="application/json")
    return {stage: fingerprint(ours) for stage, ours in stages.items()}
