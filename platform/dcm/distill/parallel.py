"""Activation checkpointing, FSDP2 sharding and DDP replication of the distillation models (public torch APIs only).

The wiring follows torchtitan's ``parallelize`` (``apply_ac``, then ``apply_fsdp``): activation checkpointing per
transformer block, then ``fully_shard`` per block, then on the root; only then is the optimizer built from
``model.parameters()`` (:func:`build_optimizer`), so it holds the sharded parameters FSDP trains.

* ``fsdp``: the student and the frozen teacher are sharded per block across the workers (FSDP2 over NCCL on GPUs,
  over gloo on CPUs); on a GPU parameters are all-gathered in bf16 and gradients reduced in fp32.
* ``ddp``: every worker holds the whole student (DDP averages its gradients) and the teacher (bf16 on a GPU).

The discriminator is small: it is replicated with DDP in both strategies, so there is one discriminator whose
gradients are averaged across workers. Without a process group (one process, e.g. the unit tests) nothing is wrapped.
The process group is the one Ray Train sets up (``TorchConfig``); nothing here initialises one.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
from torch.nn.parallel import DistributedDataParallel

from dcm.distill.config import FSDP, OptimizerConfig


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def unwrap(module: nn.Module | None) -> nn.Module | None:
    """The module inside a DDP wrapper (FSDP2 shards in place and does not wrap)."""
    return module.module if isinstance(module, DistributedDataParallel) else module


def block_lists(transformer: nn.Module) -> list[nn.ModuleList]:
    """The transformer's lists of blocks: its direct ``nn.ModuleList`` children named ``*blocks`` (Wan: ``blocks``;
    HunyuanVideo: ``transformer_blocks`` and ``single_transformer_blocks``)."""
    lists = [m for name, m in transformer.named_children() if isinstance(m, nn.ModuleList) and name.endswith("blocks")]
    if not lists:
        raise ValueError(f"{type(transformer).__name__} has no block list (a ModuleList child named '*blocks')")
    return lists


def apply_activation_checkpointing(transformer: nn.Module) -> None:
    """Recompute every block's activations in the backward pass: diffusers' own per-block checkpointing
    (``torch.utils.checkpoint``, non-reentrant); it only acts when gradients are enabled."""
    transformer.enable_gradient_checkpointing()


def mixed_precision(device: torch.device) -> MixedPrecisionPolicy:
    """bf16 compute with fp32 gradient reduction on a GPU (the reference's precision); fp32 on a CPU."""
    if device.type == "cuda":
        return MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
    return MixedPrecisionPolicy()


def shard(root: nn.Module, transformer: nn.Module, device: torch.device) -> None:
    """FSDP2: ``fully_shard`` on each block of ``transformer``, then on ``root`` (which holds ``transformer``: the
    embedders and the output head go with the root). Parameters move to ``device`` as they are sharded."""
    mesh = init_device_mesh(device.type, (world_size(),))
    policy = mixed_precision(device)
    for blocks in block_lists(transformer):
        for block in blocks:
            fully_shard(block, mesh=mesh, mp_policy=policy)
    fully_shard(root, mesh=mesh, mp_policy=policy)


def replicate(module: nn.Module, device: torch.device) -> nn.Module:
    """DDP over the existing process group: weights broadcast from rank 0 at wrap time, gradients averaged."""
    module.to(device)
    if not is_distributed():
        return module
    device_ids = [device] if device.type == "cuda" else None
    # Transformers have no running statistics: no buffer sync per forward (rank 0's are broadcast once, at wrap time).
    # Gradients live in DDP's buckets, not in a second copy (what the memory plan counts).
    return DistributedDataParallel(
        module, device_ids=device_ids, forward_sync_buffers=False, gradient_as_bucket_view=True
    )


def parallelize(
    student: nn.Module,
    student_transformer: nn.Module,
    teacher: nn.Module,
    teacher_transformer: nn.Module,
    *,
    strategy: str,
    device: torch.device,
    activation_checkpointing: bool,
) -> tuple[nn.Module, nn.Module]:
    """Applies activation checkpointing and the strategy to a stage's student and teacher.

    Args:
        student / teacher: the modules the train step calls (root modules); ``*_transformer`` the diffusers
            transformers inside them whose blocks are checkpointed and sharded.
    Returns:
        (student, teacher) as the step must call them.
    """
    if activation_checkpointing:
        apply_activation_checkpointing(student_transformer)
        apply_activation_checkpointing(teacher_transformer)
    if strategy == FSDP and is_distributed():
        shard(student, student_transformer, device)
        shard(teacher, teacher_transformer, device)
        return student, teacher
    teacher.to(device)
    return replicate(student, device), teacher


def build_optimizer(module: nn.Module, config: OptimizerConfig) -> torch.optim.AdamW:
    """AdamW over the module's trainable parameters, built after wrapping (sharded parameters under FSDP)."""
    params = [p for p in module.parameters() if p.requires_grad]
    if not params:
        raise ValueError(f"{type(unwrap(module)).__name__} has no trainable parameter")
    return torch.optim.AdamW(
        params, lr=config.lr, betas=config.betas, eps=config.eps, weight_decay=config.weight_decay
    )
