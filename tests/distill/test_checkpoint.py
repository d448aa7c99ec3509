"""Checkpoints (torch.distributed.checkpoint, one process) restore a stage exactly, and a run's identity decides who
may resume from them (no Ray; the 2-worker FSDP case is in tests/cluster/test_train.py)."""

from dataclasses import replace

import pytest
import torch

from dcm.data import LatentDataset, with_negative
from dcm.distill.build import build_stage
from dcm.distill.checkpoint import (
    fingerprint,
    identity_difference,
    load_checkpoint,
    run_identity,
    save_checkpoint,
    stage_identity,
)
from dcm.distill.config import DETAIL_STAGE, SEMANTIC_STAGE
from dcm.distill.recipes import tiny
from dcm.distill.steps import detail_train_step
from dcm.io.model_folder import load_pipeline
from dcm_demo.synthetic import write_synthetic_dataset


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("ckpt") / "data")
    write_synthetic_dataset(load_pipeline("tiny-wan"), path, num_samples=2, num_frames=9, height=32, width=32)
    return path


def trained_state(models, optimizers) -> dict[str, torch.Tensor]:
    state = {f"student.{k}": v.detach().clone() for k, v in models.student.named_parameters() if v.requires_grad}
    state |= {f"disc.{k}": v.detach().clone() for k, v in models.discriminator.state_dict().items()}
    for name, optimizer in (("g", optimizers.generator), ("d", optimizers.discriminator)):
        for i, per_param in optimizer.state_dict()["state"].items():
            state |= {f"{name}.{i}.{k}": torch.as_tensor(v).clone() for k, v in per_param.items()}
    return state


@pytest.mark.slow
def test_a_resumed_stage_continues_exactly_where_the_checkpoint_was(data, tmp_path):
    config = replace(tiny(data=data, output=str(tmp_path / "out")), stages=(DETAIL_STAGE,))
    source = LatentDataset(data)
    batch = with_negative(torch.utils.data.default_collate([source[0], source[1]]), source.negative)
    cpu = torch.device("cpu")
    models, optimizers, _ = build_stage(config, DETAIL_STAGE, cpu)
    rng = torch.Generator().manual_seed(5)
    for _ in range(2):
        detail_train_step(models, optimizers, batch, rng, config=config)
    save_checkpoint(tmp_path / "ckpt", models, optimizers, rng, step=2, rank=0, run_fingerprint="run-a")
    saved = trained_state(models, optimizers)
    expected = detail_train_step(models, optimizers, batch, rng, config=config)  # the uninterrupted third step

    torch.manual_seed(123)  # a fresh worker: other discriminator weights, other noise stream
    fresh, fresh_optimizers, _ = build_stage(config, DETAIL_STAGE, cpu)
    fresh_rng = torch.Generator().manual_seed(99)
    assert load_checkpoint(tmp_path / "ckpt", fresh, fresh_optimizers, fresh_rng, rank=0, run_fingerprint="run-a") == 2
    restored = trained_state(fresh, fresh_optimizers)
    assert restored.keys() == saved.keys()
    for key, value in saved.items():
        assert torch.equal(restored[key], value), key
    assert detail_train_step(fresh, fresh_optimizers, batch, fresh_rng, config=config) == pytest.approx(expected)
    with pytest.raises(ValueError, match="belongs to run run-a, not to this run \\(run-b\\)"):
        load_checkpoint(tmp_path / "ckpt", fresh, fresh_optimizers, fresh_rng, rank=0, run_fingerprint="run-b")


def test_run_identity_covers_what_is_trained_and_nothing_else(tmp_path):
    config = tiny(data=str(tmp_path / "a"), output=str(tmp_path / "out"))
    meta = {"family": "wan", "num_samples": 8}
    ours = run_identity(config, meta)
    same_run = [
        replace(config, semantic=replace(config.semantic, num_steps=99), checkpoint_every=7, run_name="x"),
        replace(config, storage_path=str(tmp_path / "elsewhere"), validate_every=3, stages=("detail",)),
    ]
    for other in same_run:
        assert fingerprint(run_identity(other, meta)) == fingerprint(ours)
    other_runs = {
        "data": replace(config, data=str(tmp_path / "b")),
        "output": replace(config, output=str(tmp_path / "out2")),
        "seed": replace(config, seed=1),
        "semantic": replace(config, semantic=replace(config.semantic, tcl_weight=0.0)),
    }
    for field, other in other_runs.items():
        theirs = run_identity(other, meta)
        assert fingerprint(theirs) != fingerprint(ours), field
        assert identity_difference(ours, theirs).startswith(f"{field}: "), identity_difference(ours, theirs)
    changed_data = run_identity(config, {**meta, "num_samples": 9})
    assert "data_meta" in identity_difference(ours, changed_data)

    # Per stage: Stage II trained on Stage I's output is another run once Stage I trains longer; Stage I is not.
    def stage_print(c, stage):
        return fingerprint(stage_identity(run_identity(c, meta), c, stage))

    longer_one = replace(config, semantic=replace(config.semantic, num_steps=99))
    longer_two = replace(config, detail=replace(config.detail, num_steps=99))
    assert stage_print(longer_one, SEMANTIC_STAGE) == stage_print(config, SEMANTIC_STAGE)
    assert stage_print(longer_one, DETAIL_STAGE) != stage_print(config, DETAIL_STAGE)
    assert stage_print(longer_two, DETAIL_STAGE) == stage_print(config, DETAIL_STAGE)
    alone = replace(config, stages=(DETAIL_STAGE,))  # Stage II alone starts from the teacher: another input
    assert stage_print(alone, DETAIL_STAGE) != stage_print(config, DETAIL_STAGE)
