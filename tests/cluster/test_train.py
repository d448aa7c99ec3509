"""Distillation on a real local Ray: 2 gloo workers with FSDP2 and activation checkpointing, a worker killed from the
outside and resumed from the sharded checkpoint (on S3), and two runs that must not share anything.

Ray Train runs are slow here (tens of seconds each), so each test makes few runs and checks much in each."""

import math
import os
import signal
import sys
import tempfile
import threading
import time
from dataclasses import replace

import boto3
import psutil
import pytest
import torch
import torch.distributed as dist
from diffusers import WanPipeline
from ray import cloudpickle

from dcm.cli import run_job
from dcm.cluster.train import run_distillation
from dcm.data import LatentDataset, with_negative
from dcm.distill.build import build_stage
from dcm.distill.config import DDP, DETAIL_STAGE, FSDP, SEMANTIC_STAGE, STAGES, OptimizerConfig
from dcm.distill.memory import shard_elements
from dcm.distill.parallel import unwrap
from dcm.distill.recipes import tiny, tiny_hunyuan
from dcm.distill.steps import TRAIN_STEPS
from dcm.experts import SEMANTIC
from dcm.io.model_folder import load_pipeline
from dcm.io.video import read_mp4
from dcm_demo.synthetic import write_synthetic_dataset

pytestmark = [pytest.mark.ray, pytest.mark.slow]
CHECK_STEPS = 6  # steps per stage on a fixed batch in the FSDP check
CHECK_LR = 1e-3  # large enough for a tiny model's loss to fall visibly in a few steps
PERTURBATION = 0.05  # the Stage I student starts away from the teacher, so it has something to learn


def write_data(pipe_name: str, path: str, seed: int = 0) -> str:
    write_synthetic_dataset(load_pipeline(pipe_name), path, num_samples=8, num_frames=9, height=32, width=32,
                            seed=seed)  # fmt: skip
    return path


@pytest.fixture(scope="module")
def wan_data(tmp_path_factory):
    return write_data("tiny-wan", str(tmp_path_factory.mktemp("wan") / "data"))


# -- 2 gloo workers (FSDP2, and DDP): the library's build and train step, inspected inside the workers --------------


def full(tensor: torch.Tensor) -> torch.Tensor:
    """A sharded (DTensor) parameter or gradient gathered whole (a collective), or the tensor itself."""
    return (tensor.full_tensor() if hasattr(tensor, "full_tensor") else tensor).detach().clone()


def own(tensor: torch.Tensor) -> torch.Tensor:
    """This worker's part of a parameter: its shard under FSDP, the tensor itself otherwise."""
    return tensor.to_local() if hasattr(tensor, "to_local") else tensor


def disc_weights(models) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for p in unwrap(models.discriminator).parameters()]).clone()


def fsdp_checks(loop_config: dict) -> None:
    """Per stage: build as the job does, perturb the Stage I student, take CHECK_STEPS steps on this worker's fixed
    batch with fixed noise, then inspect gradients, weights and the discriminator on every worker."""
    import ray.train
    import ray.train.torch

    config = loop_config["config"]
    rank, world = ray.train.get_context().get_world_rank(), ray.train.get_context().get_world_size()
    device = ray.train.torch.get_device()
    data = LatentDataset(config.data)
    batch = with_negative(torch.utils.data.default_collate([data[2 * rank], data[2 * rank + 1]]), data.negative)
    report = {}
    for stage in STAGES:
        stage_config = replace(config, stages=(stage,))
        torch.manual_seed(0)
        models, optimizers, _ = build_stage(stage_config, stage, device)
        params = dict(models.student.named_parameters())
        trainable = [n for n, p in params.items() if p.requires_grad]
        if stage == SEMANTIC_STAGE:
            with torch.no_grad():
                for name in trainable:
                    params[name].add_(PERTURBATION * torch.randn_like(params[name]))
        before = {n: full(p) for n, p in params.items()}
        disc_before = disc_weights(models) if stage == DETAIL_STAGE else None
        teacher_before = {n: full(p) for n, p in models.teacher.named_parameters()}
        losses = []
        for _ in range(CHECK_STEPS):
            metrics = TRAIN_STEPS[stage](models, optimizers, batch, torch.Generator().manual_seed(rank),
                                         config=stage_config)  # fmt: skip
            losses.append(metrics["loss_cd"])
        teacher = dict(models.teacher.named_parameters())
        local = [own(params[n]) for n in trainable]  # this worker's shards (FSDP) or the whole tensors (DDP)
        states = [own(v) for st in optimizers.generator.state.values() for k, v in st.items() if k != "step"]
        shards = world if config.strategy == FSDP else 1
        result = {
            "local_elements": sum(t.numel() for t in local),
            "local_state_elements": sum(t.numel() for t in states),
            "planned_elements": shard_elements(tuple(tuple(params[n].shape) for n in trainable), shards),
            "sharded": all(hasattr(params[n], "full_tensor") for n in trainable),
            "num_trainable": len(trainable),
            "no_grad": [n for n in trainable if params[n].grad is None or not full(params[n].grad).abs().sum() > 0],
            "unchanged": [n for n in trainable if torch.equal(full(params[n]), before[n])],
            "frozen_moved": [n for n in params if n not in trainable and not torch.equal(full(params[n]), before[n])],
            "teacher_moved": [n for n in teacher if not torch.equal(full(teacher[n]), teacher_before[n])],
            "losses": losses,
        }
        if stage == DETAIL_STAGE:
            flat = disc_weights(models)
            gathered = [torch.empty_like(flat) for _ in range(world)]
            dist.all_gather(gathered, flat)
            result["disc_equal_on_all_ranks"] = all(torch.equal(g, gathered[0]) for g in gathered)
            result["disc_moved"] = not torch.equal(flat, disc_before)
        report[stage] = result
    with tempfile.TemporaryDirectory() as tmp:  # Ray Train's Result keeps the metrics of checkpoint reports
        ray.train.report(report, checkpoint=ray.train.Checkpoint.from_directory(tmp))


@pytest.mark.parametrize(
    "recipe, strategy", [(tiny, FSDP), (tiny_hunyuan, FSDP), (tiny, DDP)], ids=["wan-fsdp", "hunyuan-fsdp", "wan-ddp"]
)
def test_two_gloo_workers_train_both_stages(ray_cluster, tmp_path, recipe, strategy):
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    teacher = "tiny-wan" if recipe is tiny else "tiny-hunyuan"
    config = recipe(data=write_data(teacher, str(tmp_path / "data")), output=str(tmp_path / "out"))
    config = replace(
        config, num_workers=2, strategy=strategy,
        semantic=replace(config.semantic, optimizer=OptimizerConfig(lr=CHECK_LR)),
        detail=replace(config.detail, optimizer=OptimizerConfig(lr=CHECK_LR)),
    )  # fmt: skip
    assert config.activation_checkpointing
    cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the workers cannot import this test module
    trainer = TorchTrainer(
        fsdp_checks, train_loop_config={"config": config},
        scaling_config=ScalingConfig(num_workers=2, use_gpu=False), torch_config=TorchConfig(backend="gloo"),
        run_config=RunConfig(name="fsdp-check", storage_path=str(tmp_path / "ray")),
    )  # fmt: skip
    report = trainer.fit().metrics
    for stage in STAGES:
        result = report[stage]
        assert result["sharded"] == (strategy == FSDP) and result["num_trainable"] > 0, (stage, result)
        # rank 0 holds ceil(rows / 2) rows of every parameter and of its AdamW states: what the memory plan counts
        assert result["local_elements"] == result["planned_elements"], result
        assert result["local_state_elements"] == 2 * result["planned_elements"], result
        assert result["no_grad"] == [], (stage, result["no_grad"])
        assert result["unchanged"] == [], (stage, result["unchanged"])
        assert result["frozen_moved"] == [] and result["teacher_moved"] == [], stage
        losses = result["losses"]
        assert all(math.isfinite(v) for v in losses) and losses[-1] < losses[0], (stage, losses)
    assert report[DETAIL_STAGE]["disc_equal_on_all_ranks"] and report[DETAIL_STAGE]["disc_moved"]


# -- a worker killed from the outside, resumed from the sharded checkpoint on S3 ------------------------------------


def train_workers() -> list[psutil.Process]:
    """This test session's Ray Train workers (descendants of this process: other sessions' are left alone)."""
    return [p for p in psutil.Process().children(recursive=True) if "RayTrainWorker" in " ".join(_cmdline(p))]


def _cmdline(process: psutil.Process) -> list[str]:
    try:
        return process.cmdline()
    except psutil.Error:
        return []


class KillAfterFirstCheckpoint(threading.Thread):
    """Waits until Ray Train has registered a checkpoint of the run (its snapshot file in the bucket lists one), then
    kills one training worker with SIGKILL."""

    def __init__(self, bucket: str, key: str) -> None:
        super().__init__(daemon=True)
        self.bucket, self.key, self.killed, self.stop = bucket, key, None, threading.Event()

    def run(self) -> None:
        s3 = boto3.client("s3")
        while not self.stop.is_set():
            try:
                snapshot = s3.get_object(Bucket=self.bucket, Key=self.key)["Body"].read().decode()
            except s3.exceptions.NoSuchKey:
                snapshot = ""
            workers = train_workers()
            if "checkpoint-step" in snapshot and workers:
                self.killed = workers[-1].pid
                os.kill(self.killed, signal.SIGKILL)
                return
            time.sleep(0.2)


@pytest.mark.s3
def test_a_killed_worker_resumes_from_the_sharded_checkpoint_exactly(ray_cluster, wan_data, tmp_path, s3_bucket):
    base = replace(tiny(data=wan_data, output=str(tmp_path / "reference")), stages=(DETAIL_STAGE,), num_workers=2,
                   strategy=FSDP, checkpoint_every=3, report_every=3, log_every=3)  # fmt: skip
    base = replace(base, detail=replace(base.detail, num_steps=9))
    reference = run_distillation(replace(base, validate_every=9))[DETAIL_STAGE]
    assert reference["resumed_from"] == 0 and reference["step"] == 9
    # validation under FSDP: every worker samples, rank 0 decodes and writes the clip (9 frames of 32 x 32)
    clip = read_mp4(tmp_path / "reference" / "validation" / "detail-step000009.mp4")
    assert clip.frames.shape == (9, 32, 32, 3)

    killed = replace(base, output=f"s3://{s3_bucket}/out", max_failures=1)
    killer = KillAfterFirstCheckpoint(s3_bucket, "out/checkpoints/tiny-dcm-detail/checkpoint_manager_snapshot.json")
    killer.start()
    try:
        metrics = run_distillation(killed)[DETAIL_STAGE]
    finally:
        killer.stop.set()
    assert killer.killed is not None, "no worker was killed: the run finished before its first checkpoint registered"
    assert metrics["step"] == 9 and metrics["resumed_from"] in (3, 6), metrics  # resumed mid-run
    listing = boto3.client("s3").list_objects_v2(Bucket=s3_bucket, Prefix="out/checkpoints/")
    keys = [o["Key"] for o in listing["Contents"]]
    assert any(k.endswith("__1_0.distcp") for k in keys) and any(k.endswith("state.json") for k in keys)
    # Same step, optimizer state, noise and data order after the restart: the same model as without the kill.
    ours = load_pipeline(f"s3://{s3_bucket}/out/final").transformer.detail_state_dict()
    reference_model = load_pipeline(str(tmp_path / "reference" / "final"))
    assert reference_model.generate(["a red circle"], seeds=[0]).shape[0] == 1  # FSDP's consolidated folder works
    theirs = reference_model.transformer.detail_state_dict()
    assert ours.keys() == theirs.keys()
    for name, tensor in theirs.items():
        torch.testing.assert_close(ours[name], tensor, rtol=1e-5, atol=1e-7, msg=name)


# -- the job end to end, and two runs with default names ------------------------------------------------------------


def test_two_runs_with_default_names_never_share_checkpoints(ray_cluster, wan_data, tmp_path, capsys):
    from jobs.distill import main, parse_args

    first, second = tmp_path / "first", tmp_path / "second"
    steps = ["--semantic-steps", "2", "--detail-steps", "2"]
    assert main(parse_args(["--recipe", "tiny", "--data", wan_data, "--output", str(first), *steps])) == 0
    assert f"model: {first}/final" in capsys.readouterr().out
    semantic, final = load_pipeline(str(first / "semantic")), load_pipeline(str(first / "final"))
    assert final.is_dual_expert and not semantic.is_dual_expert
    stage_one = semantic.transformer.state_dict()
    for name, tensor in final.transformer.expert_state_dict(SEMANTIC).items():
        assert torch.equal(tensor, stage_one[name]), name  # Stage II kept the semantic expert bit-identical
    assert final.generate(["a red circle"], seeds=[0]).shape[0] == 1
    assert WanPipeline.from_pretrained(first / "export").transformer_2 is not None
    written = {p: p.stat().st_mtime_ns for p in first.rglob("*") if p.is_file()}

    # Another data set, another output, the recipe's default run name and storage: a fresh run of its own.
    other = write_data("tiny-wan", str(tmp_path / "other-data"), seed=100)
    argv = ["--recipe", "tiny", "--data", other, "--output", str(second), "--stage", "semantic"]
    argv += ["--semantic-steps", "2"]
    assert main(parse_args(argv)) == 0
    assert "'resumed_from': 0" in capsys.readouterr().out
    assert (second / "checkpoints" / "tiny-dcm-semantic").is_dir()
    theirs = load_pipeline(str(second / "semantic")).transformer.state_dict()
    assert not torch.equal(theirs["proj_out.weight"], stage_one["proj_out.weight"])

    # Pointing a different run at the first run's checkpoints fails before any worker, and nothing of it changes.
    argv += ["--storage-path", str(first / "checkpoints")]
    assert run_job(main, parse_args([*argv[:5], str(tmp_path / "third"), *argv[6:]])) == 2
    error = capsys.readouterr().err
    assert f"{first}/checkpoints/tiny-dcm-semantic belongs to another run" in error and "data:" in error, error
    assert {p: p.stat().st_mtime_ns for p in first.rglob("*") if p.is_file()} == written
