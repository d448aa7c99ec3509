"""A stage's checkpoints and the identity of the run they belong to.

A checkpoint is a ``torch.distributed.checkpoint`` (DCP) folder written by every worker together: the student's
trainable weights and the optimizer states (sharded under FSDP, one copy under DDP), the discriminator and its
optimizer (Stage II; replicated, saved once), each worker's noise generator, plus ``state.json`` (step, run
fingerprint) from rank 0. DCP reshards on load, and :func:`consolidated_state` gathers the whole model for the final
folder. Ray Train uploads the folder to the run's storage and hands it back on resume (``cluster/train.py``).

A run's **identity** is what it trains: teacher, data (path and meta.json), output, grid, detail expert, both stages'
objectives and optimizers, batch size, workers and strategy, seed. Not part of it: step counts (a run may be extended),
logging / checkpoint / validation cadence, storage path and run name. Each stage adds what it starts from (Stage II
trained on Stage I's output also depends on Stage I's step count). The **fingerprint** (a hash of an identity) is
stored with every checkpoint and beside the run's folders; a different run never resumes from them.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_state_dict,
    set_state_dict,
)

from dcm.config import to_dict
from dcm.distill.build import stage_input
from dcm.distill.config import DETAIL_STAGE, SEMANTIC_STAGE, DistillConfig
from dcm.distill.steps import Optimizers, StageModels

STATE_NAME = "state.json"
FINGERPRINT_CHARS = 16
# Fields that do not change what a run trains: they may differ between the submissions of one run.
OPERATIONAL_FIELDS = (
    "stages", "checkpoint_every", "log_every", "report_every", "validate_every", "validation_prompt", "max_failures",
    "storage_path", "run_name", "gpu_memory_gb", "video",
)  # fmt: skip


def run_identity(config: DistillConfig, data_meta: dict) -> dict:
    """What a run trains (module docstring), as JSON-ready data."""
    identity = {k: v for k, v in to_dict(config).items() if k not in OPERATIONAL_FIELDS}
    for stage in ("semantic", "detail"):
        identity[stage] = {k: v for k, v in identity[stage].items() if k != "num_steps"}
    identity["data_meta"] = data_meta
    return identity


def stage_identity(identity: dict, config: DistillConfig, stage: str) -> dict:
    """A stage's identity: the run's, plus what the stage starts from. Stage II trained on Stage I's output depends on
    how long Stage I trained: extending Stage I makes Stage II's checkpoints another run's."""
    extra = {"stage": stage, "stage_input": stage_input(config, stage)}
    if stage == DETAIL_STAGE and SEMANTIC_STAGE in config.stages:
        extra["semantic_num_steps"] = config.semantic.num_steps
    return identity | extra


def fingerprint(identity: dict) -> str:
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:FINGERPRINT_CHARS]


def identity_difference(ours: dict, theirs: dict) -> str:
    """The top-level fields on which two identities differ, with both values (shortened), for error messages."""
    keys = sorted(k for k in set(ours) | set(theirs) if ours.get(k) != theirs.get(k))
    return "; ".join(f"{k}: {_short(theirs.get(k))} there, {_short(ours.get(k))} here" for k in keys)


def _short(value) -> str:
    text = json.dumps(value, sort_keys=True)
    return text if len(text) <= 80 else text[:77] + "..."


# -- state dicts -------------------------------------------------------------------------------------------------


def _options() -> StateDictOptions:
    """Stage II's frozen backbone is the stage's input, not something it trains: checkpoints hold trainable weights.
    Loading is not strict about the frozen ones for that reason; ``dcp.load`` already fails when the checkpoint lacks
    any entry of the state it fills."""
    return StateDictOptions(ignore_frozen_params=True, strict=False)


def checkpoint_state(models: StageModels, optimizers: Optimizers, rng: torch.Generator, rank: int) -> dict:
    """The DCP state of a worker: sharded (DTensor) entries under FSDP, plain tensors otherwise."""
    student, optimizer = get_state_dict(models.student, optimizers.generator, options=_options())
    state = {"student": student, "optimizer": optimizer, "rng": {f"rank{rank}": rng.get_state()}}
    if models.discriminator is not None:
        disc, disc_optimizer = get_state_dict(models.discriminator, optimizers.discriminator, options=_options())
        state |= {"discriminator": disc, "disc_optimizer": disc_optimizer}
    return state


def save_checkpoint(
    path: str | Path, models: StageModels, optimizers: Optimizers, rng: torch.Generator, *, step: int, rank: int,
    run_fingerprint: str,
) -> None:  # fmt: skip
    """Every worker calls this with its own local folder (a collective); rank 0 also writes ``state.json``."""
    path = Path(path)
    dcp.save(checkpoint_state(models, optimizers, rng, rank), checkpoint_id=path)
    if rank == 0:
        (path / STATE_NAME).write_text(json.dumps({"step": step, "fingerprint": run_fingerprint}))


def load_checkpoint(
    path: str | Path, models: StageModels, optimizers: Optimizers, rng: torch.Generator, *, rank: int,
    run_fingerprint: str,
) -> int:  # fmt: skip
    """Restores weights, optimizer states and this worker's generator in place (every worker calls it); returns the
    step to continue from.

    Raises:
        ValueError: the checkpoint belongs to another run (its fingerprint differs).
    """
    path = Path(path)
    meta = json.loads((path / STATE_NAME).read_text())
    if meta["fingerprint"] != run_fingerprint:
        raise ValueError(
            f"checkpoint {path} belongs to run {meta['fingerprint']}, not to this run ({run_fingerprint}); "
            "use another run_name or storage_path"
        )
    state = checkpoint_state(models, optimizers, rng, rank)
    dcp.load(state, checkpoint_id=path)
    set_state_dict(
        models.student, optimizers.generator, model_state_dict=state["student"], optim_state_dict=state["optimizer"],
        options=_options(),
    )  # fmt: skip
    if models.discriminator is not None:
        set_state_dict(
            models.discriminator, optimizers.discriminator, model_state_dict=state["discriminator"],
            optim_state_dict=state["disc_optimizer"], options=_options(),
        )  # fmt: skip
    rng.set_state(state["rng"][f"rank{rank}"])
    return int(meta["step"])


def consolidated_state(models: StageModels) -> dict[str, torch.Tensor]:
    """The whole student (frozen weights too) as plain CPU tensors on rank 0, an empty dict elsewhere; a collective
    under FSDP (every worker must call it)."""
    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    return get_model_state_dict(models.student, options=options)
