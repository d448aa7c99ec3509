"""The memory plan: per-GPU (or per-worker) bytes of each distillation stage, before any worker starts.

    arch = architecture(family, transformer_config, detail_expert=..., discriminator=..., feature_stride=...)
    plan = plan_memory(config, arch, latent_shape=(C, F, H, W), text_len=512, device_type="cuda")
    print(format_plan(plan))

Parameters, gradients and optimizer states are counted exactly from the architecture, built on the meta device (no
weights): FSDP2 shards every parameter along its first axis, padded to a multiple of the worker count, so a worker
holds ``ceil(rows / N) * rest`` elements of each. AdamW keeps two fp32 states and a step counter per parameter.

Activations follow a counting model of the tensors autograd saves for backward, per token and per transformer block,
for the three ways a step runs a transformer: ``full`` (Stage I: every weight trained), ``lora`` (Stage II: the detail
expert; the backbone frozen) and ``input`` (Stage II: gradients flow through the frozen teacher to its input). The
coefficients below count, for diffusers 0.42's Wan and HunyuanVideo blocks, the saved tensors of each size: ``D``
(hidden width), ``F`` (feed-forward width), ``H`` (heads: the attention's log-sum-exp), ``r`` (LoRA rank) and a few
per-row statistics, in fp32 and in the compute dtype. They were read off ``torch.autograd.graph.saved_tensors_hooks``
on CPU runs (flash-style attention, which saves O(L) per head as on a GPU) and are pinned by
tests/distill/test_memory.py, which measures the same hooks on tiny models within 15 %. With activation checkpointing
a block keeps only its input; during the backward pass one block at a time is recomputed in full.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from dcm.config import DetailExpertConfig, ScheduleConfig
from dcm.distill.config import DETAIL_STAGE, FSDP, SEMANTIC_STAGE, DistillConfig
from dcm.distill.discriminator import Discriminator, DiscriminatorConfig
from dcm.distill.features import FEATURE_FAMILIES
from dcm.distill.parallel import block_lists
from dcm.experts import DETAIL, DualExpertTransformer
from dcm.models import get_family
from dcm.schedule import build_grid

GiB = 1024**3
FP32, BF16 = 4, 2  # bytes per element
ADAM_STATES = 2  # exp_avg and exp_avg_sq, fp32 each
ADAM_STEP_BYTES = 4  # AdamW's per-parameter step counter (a float32 scalar tensor)
# FSDP keeps the all-gathered (unsharded) parameters of the running block and of the one it prefetches.
GATHERED_BLOCKS = 2
# Headroom for the CUDA caching allocator's fragmentation, NCCL buffers and kernels' workspaces (a common rule of
# thumb for large-model training; the GPU check in bench/gpu_check_train.py measures the real peak).
RESERVE_FRACTION = 0.1
ROLES = ("full", "lora", "input")


@dataclass(frozen=True, kw_only=True)
class SavedCounts:
    """Bytes autograd saves per token of one block: ``d*D + f*F + h*H + r*rank + c`` (already in bytes)."""

    d: float = 0.0
    f: float = 0.0
    h: float = 0.0
    r: float = 0.0
    c: float = 0.0

    def bytes_per_token(self, *, hidden: int, ffn: int, heads: int, rank: int) -> float:
        return self.d * hidden + self.f * ffn + self.h * heads + self.r * rank + self.c


# (family, block kind, role, compute precision) -> saved bytes per token of one block. "fp32": everything in fp32
# (CPU); "bf16": bf16 compute (GPU autocast / FSDP mixed precision); the norms keep fp32 copies either way.
# Wan: 22 D-sized fp32 tensors for a fully trained block (q, k, v, the attention output, norms' inputs and outputs,
# the modulations); 2 F-sized (the GELU's input and output); 2 x H log-sum-exp values (self- and cross-attention);
# 9 per-row norm statistics; the LoRA adds 6 rank-sized tensors per image token (4 self-attention + 2 cross-attention
# projections act on image tokens).
BLOCK_SAVED: dict[tuple[str, str, str, str], SavedCounts] = {
    ("wan", "blocks", "full", "fp32"): SavedCounts(d=88, f=8, h=8, c=36),
    ("wan", "blocks", "lora", "fp32"): SavedCounts(d=72, f=4, h=8, r=24, c=36),
    ("wan", "blocks", "input", "fp32"): SavedCounts(d=48, f=4, h=8, c=36),
    ("wan", "blocks", "full", "bf16"): SavedCounts(d=48 + 20, f=4, h=8, c=36),
    ("wan", "blocks", "lora", "bf16"): SavedCounts(d=36 + 18, f=2, h=8, r=12, c=36),
    ("wan", "blocks", "input", "bf16"): SavedCounts(d=24 + 12, f=2, h=8, c=36),
    ("hunyuan", "transformer_blocks", "full", "fp32"): SavedCounts(d=64, f=8, h=12, c=20),
    ("hunyuan", "transformer_blocks", "lora", "fp32"): SavedCounts(d=52, f=4, h=12, r=16, c=20),
    ("hunyuan", "transformer_blocks", "input", "fp32"): SavedCounts(d=32, f=4, h=12, c=20),
    ("hunyuan", "transformer_blocks", "full", "bf16"): SavedCounts(d=8 + 32, f=4, h=12, c=10),
    ("hunyuan", "transformer_blocks", "lora", "bf16"): SavedCounts(d=8 + 26, f=2, h=12, r=8, c=10),
    ("hunyuan", "transformer_blocks", "input", "bf16"): SavedCounts(d=8 + 16, f=2, h=12, c=10),
    ("hunyuan", "single_transformer_blocks", "full", "fp32"): SavedCounts(d=56, f=8, h=12, c=12),
    ("hunyuan", "single_transformer_blocks", "lora", "fp32"): SavedCounts(d=40, f=4, h=12, r=12, c=12),
    ("hunyuan", "single_transformer_blocks", "input", "fp32"): SavedCounts(d=28, f=4, h=12, c=12),
    ("hunyuan", "single_transformer_blocks", "full", "bf16"): SavedCounts(d=8 + 28, f=4, h=12, c=6),
    ("hunyuan", "single_transformer_blocks", "lora", "bf16"): SavedCounts(d=8 + 20, f=2, h=12, r=6, c=6),
    ("hunyuan", "single_transformer_blocks", "input", "bf16"): SavedCounts(d=8 + 14, f=2, h=12, c=6),
}
# Outside the blocks, per token: the patch embedding's input (P = in_channels x patch volume values, only when it
# is trained or its input needs a gradient), the output norm and head; the rotary tables (8 bytes per head channel
# in fp32, 4 in bf16) are computed once and shared by all blocks.
OUTSIDE_SAVED: dict[tuple[str, str], tuple[float, float, float]] = {  # (role, precision) -> (per D, per P, constant)
    ("full", "fp32"): (12, 4, 8),
    ("lora", "fp32"): (12, 0, 8),
    ("input", "fp32"): (4, 4, 8),
    ("full", "bf16"): (10, 2, 8),
    ("lora", "bf16"): (10, 0, 8),
    ("input", "bf16"): (4, 2, 8),
}
ROPE_BYTES_PER_HEAD_CHANNEL = {"fp32": 8, "bf16": 4}
# A feature tap's read-out through the teacher's output head: per-row statistics of its norm (its input is the tap).
READOUT_SAVED = SavedCounts(c=8)
# The discriminator, per token per head: six hidden-width tensors (the GroupNorms' inputs and outputs, the
# LeakyReLUs'), fp32; in bf16 compute twelve bytes per hidden channel plus the bf16 copy of the tokens. In its own step
# (its weights trained, fake and real tokens together) it also keeps its first convolution's input. Keys: precision ->
# (bytes per hidden channel, bytes per D).
DISC_SAVED_IN_GENERATOR_STEP = {"fp32": (24, 0), "bf16": (12, 2)}
DISC_SAVED_IN_DISC_STEP = {"fp32": (24, 4), "bf16": (12, 2)}
# The losses keep fp32 latent-sized tensors: the pseudo-Huber difference, Stage I's frame differences for the TCL,
# and Stage II's concatenated read-outs for feature matching (one latent per tap).
LATENT_BYTES = FP32


@dataclass(frozen=True, kw_only=True)
class BlockKind:
    name: str
    count: int


@dataclass(frozen=True, kw_only=True)
class Architecture:
    """What the plan needs to know about a teacher and its students, counted on the meta device.

    Attributes:
        family: model family key.
        hidden / ffn / heads / head_dim: block widths (D, F, H, D / H).
        patch_values: P = in_channels x patch volume (values per token entering the patch embedding).
        patch_size: (p_t, p_h, p_w).
        blocks: the block lists (name, count).
        params: shapes of every transformer parameter (teacher = Stage I student).
        detail_params / frozen_detail_params: Stage II student's trainable (LoRA + duplicated modules) and frozen
            parameter shapes.
        disc_params: the discriminator's parameter shapes.
        lora_rank: r.
        num_taps: the teacher's tapped blocks (discriminator heads).
        largest_block_params: parameters of the largest block (what FSDP gathers at once).
    """

    family: str
    hidden: int
    ffn: int
    heads: int
    head_dim: int
    patch_values: int
    patch_size: tuple[int, int, int]
    blocks: tuple[BlockKind, ...]
    params: tuple[tuple[int, ...], ...]
    detail_params: tuple[tuple[int, ...], ...]
    frozen_detail_params: tuple[tuple[int, ...], ...]
    disc_params: tuple[tuple[int, ...], ...]
    lora_rank: int
    num_taps: int
    largest_block_params: int

    @property
    def num_params(self) -> int:
        return sum(math.prod(s) for s in self.params)


def architecture(
    family: str,
    transformer_config: dict,
    *,
    detail_expert: DetailExpertConfig,
    boundary_index: int,
    discriminator: DiscriminatorConfig,
    feature_stride: int,
) -> Architecture:
    """Builds the teacher, the Stage II student and the discriminator on the meta device and records their shapes."""
    fam = get_family(family)
    config = {k: v for k, v in transformer_config.items() if not k.startswith("_")}
    with torch.device("meta"):
        transformer = fam.transformer_class.from_config(config)
        params = tuple(tuple(p.shape) for p in transformer.parameters())
        lists = block_lists(transformer)
        largest_block = max(sum(p.numel() for p in b.parameters()) for blocks in lists for b in blocks)
        kinds = tuple(BlockKind(name=n, count=len(m)) for n, m in transformer.named_children() if m in lists)
        depth = len(FEATURE_FAMILIES[family].tapped_blocks(transformer)) if family in FEATURE_FAMILIES else 0
        num_heads = depth // feature_stride if depth else 0
        hidden = transformer.config.num_attention_heads * transformer.config.attention_head_dim
        grid = build_grid(ScheduleConfig(boundary_index=max(boundary_index, 1)))
        dual = DualExpertTransformer(transformer, grid, detail_expert)
        dual.set_trainable(DETAIL)
        detail = tuple(tuple(p.shape) for p in dual.parameters() if p.requires_grad)
        frozen = tuple(tuple(p.shape) for p in dual.parameters() if not p.requires_grad)
        disc = tuple(tuple(p.shape) for p in Discriminator(max(num_heads, 1), hidden, discriminator).parameters())
    cfg = transformer.config
    patch = _patch_size(family, cfg)
    return Architecture(
        family=family,
        hidden=hidden,
        ffn=_ffn(family, cfg, hidden),
        heads=cfg.num_attention_heads,
        head_dim=cfg.attention_head_dim,
        patch_values=cfg.in_channels * math.prod(patch),
        patch_size=patch,
        blocks=kinds,
        params=params,
        detail_params=detail,
        frozen_detail_params=frozen,
        disc_params=disc,
        lora_rank=detail_expert.lora_rank,
        num_taps=num_heads,
        largest_block_params=largest_block,
    )


def _patch_size(family: str, cfg) -> tuple[int, int, int]:
    if family == "wan":
        return tuple(cfg.patch_size)
    return (cfg.patch_size_t, cfg.patch_size, cfg.patch_size)


def _ffn(family: str, cfg, hidden: int) -> int:
    return cfg.ffn_dim if family == "wan" else int(hidden * cfg.mlp_ratio)


# -- the plan ----------------------------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class StagePlan:
    """Bytes per worker of one stage; ``activations`` is with the run's checkpointing setting."""

    stage: str
    rows: dict[str, int]
    activations_checkpointed: int
    activations_full: int

    @property
    def total(self) -> int:
        return sum(self.rows.values())


@dataclass(frozen=True, kw_only=True)
class MemoryPlan:
    """The plan of a run: one :class:`StagePlan` per stage, and whether it fits ``capacity`` bytes per GPU."""

    stages: tuple[StagePlan, ...]
    num_workers: int
    strategy: str
    device_type: str
    activation_checkpointing: bool
    tokens: int
    batch_size: int
    capacity: int | None
    notes: tuple[str, ...] = field(default_factory=tuple)

    @property
    def peak(self) -> int:
        return max(s.total for s in self.stages)

    @property
    def usable(self) -> int | None:
        return None if self.capacity is None else int(self.capacity * (1 - RESERVE_FRACTION))

    @property
    def fits(self) -> bool:
        return self.usable is None or self.peak <= self.usable


def num_tokens(arch: Architecture, latent_shape: tuple[int, ...]) -> int:
    """L = F' * H' * W' image tokens of one latent (C, F, H, W)."""
    _, f, h, w = latent_shape
    p_t, p_h, p_w = arch.patch_size
    return (f // p_t) * (h // p_h) * (w // p_w)


def shard_elements(shapes: tuple[tuple[int, ...], ...], num_shards: int) -> int:
    """Elements one worker holds when each parameter is split along its first axis into ``num_shards`` (padded)."""
    total = 0
    for shape in shapes:
        rows = shape[0] if shape else 1
        total += math.ceil(rows / num_shards) * math.prod(shape[1:])
    return total


def saved_bytes(arch: Architecture, role: str, precision: str, tokens: int, text_len: int) -> float:
    """Bytes autograd saves for one forward of one sample without checkpointing (the counting model above)."""
    total = 0.0
    for kind in arch.blocks:
        counts = BLOCK_SAVED[(arch.family, kind.name, role, precision)]
        per_token = counts.bytes_per_token(hidden=arch.hidden, ffn=arch.ffn, heads=arch.heads, rank=arch.lora_rank)
        total += kind.count * block_tokens(arch, tokens, text_len) * per_token
    per_d, per_p, const = OUTSIDE_SAVED[(role, precision)]
    total += tokens * (per_d * arch.hidden + per_p * arch.patch_values + const)
    total += tokens * ROPE_BYTES_PER_HEAD_CHANNEL[precision] * arch.head_dim
    return total


def block_tokens(arch: Architecture, tokens: int, text_len: int) -> int:
    """Tokens a block processes: HunyuanVideo's blocks also run the text tokens; Wan's attend to them only."""
    return tokens + text_len if arch.family == "hunyuan" else tokens


def checkpointed_bytes(
    arch: Architecture, role: str, precision: str, tokens: int, text_len: int
) -> tuple[float, float]:
    """With activation checkpointing: ``(kept, recompute)``. Every block keeps its input and what runs outside the
    blocks is saved as before (``kept``); the backward pass recomputes one block at a time in full (``recompute``, the
    largest block's activations)."""
    compute_bytes = BF16 if precision == "bf16" else FP32
    kept = sum(k.count for k in arch.blocks) * block_tokens(arch, tokens, text_len) * arch.hidden * compute_bytes
    recompute = block_tokens(arch, tokens, text_len) * max(
        BLOCK_SAVED[(arch.family, k.name, role, precision)].bytes_per_token(
            hidden=arch.hidden, ffn=arch.ffn, heads=arch.heads, rank=arch.lora_rank
        )
        for k in arch.blocks
    )
    per_d, per_p, const = OUTSIDE_SAVED[(role, precision)]
    kept += tokens * (per_d * arch.hidden + per_p * arch.patch_values + const)
    kept += tokens * ROPE_BYTES_PER_HEAD_CHANNEL[precision] * arch.head_dim
    return kept, recompute


def readout_bytes(arch: Architecture, num_taps: int, tokens: int) -> float:
    """Stage II's feature read-outs of the fake sample (gradients flow through them)."""
    per_token = READOUT_SAVED.bytes_per_token(hidden=arch.hidden, ffn=arch.ffn, heads=arch.heads, rank=0)
    return num_taps * tokens * per_token


def stage_activations(
    arch: Architecture, stage: str, precision: str, latent_shape: tuple[int, ...], text_len: int, *,
    checkpointed: bool, tcl_stride: int, disc_hidden: int,
) -> float:  # fmt: skip
    """One sample's saved activations at the step's peak.

    Stage I holds the student's graph and its losses; Stage II the student's graph, the teacher's on the fake sample,
    the read-outs, the discriminator's on the fake features and the losses, and later, alone, the discriminator's own
    step. With checkpointing the backward pass frees the losses', discriminator's and read-outs' tensors before it
    recomputes the first block, so that peak is what the forwards keep plus the larger of those and one block's
    recompute.

    Args:
        latent_shape: (C, F, H, W) of one sample.
    """
    tokens = num_tokens(arch, latent_shape)
    latent = tokens * arch.patch_values * LATENT_BYTES  # one latent-sized fp32 tensor
    if stage == SEMANTIC_STAGE:
        frames = latent_shape[1]
        roles = ("full",)
        extra = latent * (1 + ((frames - tcl_stride) / frames if frames > tcl_stride else 0.0))
        disc_step = 0.0
    else:
        roles = ("lora", "input")

        def discriminator(counts: dict[str, tuple[float, float]], num_tokens: int) -> float:
            per_hidden, per_d = counts[precision]
            return arch.num_taps * num_tokens * (per_hidden * disc_hidden + per_d * arch.hidden)

        extra = (
            readout_bytes(arch, arch.num_taps, tokens)
            + discriminator(DISC_SAVED_IN_GENERATOR_STEP, tokens)
            + latent * (1 + arch.num_taps)
        )
        disc_step = discriminator(DISC_SAVED_IN_DISC_STEP, 2 * tokens)  # fake and real in one batch
    if not checkpointed:
        generator = sum(saved_bytes(arch, role, precision, tokens, text_len) for role in roles) + extra
    else:
        parts = [checkpointed_bytes(arch, role, precision, tokens, text_len) for role in roles]
        generator = sum(kept for kept, _ in parts) + max(extra, max(recompute for _, recompute in parts))
    return max(generator, disc_step)


def plan_memory(
    config: DistillConfig, arch: Architecture, *, latent_shape: tuple[int, ...], text_len: int, device_type: str
) -> MemoryPlan:
    """Per-worker bytes of each configured stage.

    Args:
        latent_shape: (C, F, H, W) of one training sample.
        text_len: text tokens per prompt.
        device_type: ``cuda`` (bf16 compute, mixed precision) or ``cpu`` (fp32).
    """
    gpu = device_type == "cuda"
    sharded = config.strategy == FSDP and config.num_workers > 1
    shards = config.num_workers if sharded else 1
    precision = "bf16" if gpu else "fp32"
    tokens = num_tokens(arch, latent_shape)
    stages = []
    for stage in config.stages:
        trained = arch.params if stage == SEMANTIC_STAGE else arch.detail_params
        frozen = () if stage == SEMANTIC_STAGE else arch.frozen_detail_params
        trained_el = shard_elements(trained, shards)
        rows = {
            "student weights": FP32 * (trained_el + shard_elements(frozen, shards)),
            "gradients": FP32 * trained_el,
            "optimizer states": ADAM_STATES * FP32 * trained_el + ADAM_STEP_BYTES * len(trained),
            "teacher": _teacher_bytes(arch, gpu=gpu, sharded=sharded, shards=shards),
        }
        if stage == DETAIL_STAGE:
            disc_el = sum(math.prod(s) for s in arch.disc_params)
            rows["discriminator"] = FP32 * disc_el * (2 + ADAM_STATES) + ADAM_STEP_BYTES * len(arch.disc_params)
        if sharded and gpu:
            # the unsharded bf16 parameters of the running and the prefetched block, for the student and the teacher
            rows["gathered blocks"] = 2 * GATHERED_BLOCKS * BF16 * arch.largest_block_params
        if gpu and not sharded:
            # autocast keeps bf16 copies of the fp32 student weights the backward pass needs
            rows["autocast weight copies"] = BF16 * arch.num_params
        act = {
            ckpt: int(
                config.batch_size
                * stage_activations(
                    arch,
                    stage,
                    precision,
                    latent_shape,
                    text_len,
                    checkpointed=ckpt,
                    tcl_stride=config.semantic.tcl_stride,
                    disc_hidden=config.detail.discriminator.hidden,
                )  # fmt: skip
            )
            for ckpt in (True, False)
        }
        rows["activations"] = act[config.activation_checkpointing]
        stages.append(
            StagePlan(stage=stage, rows=rows, activations_checkpointed=act[True], activations_full=act[False])
        )
    notes = []
    if config.strategy == FSDP and config.num_workers == 1:
        notes.append("fsdp with one worker shards nothing")
    return MemoryPlan(
        stages=tuple(stages),
        num_workers=config.num_workers,
        strategy=config.strategy,
        device_type=device_type,
        activation_checkpointing=config.activation_checkpointing,
        tokens=tokens,
        batch_size=config.batch_size,
        capacity=int(config.gpu_memory_gb * GiB) if gpu else None,
        notes=tuple(notes),
    )


def _teacher_bytes(arch: Architecture, *, gpu: bool, sharded: bool, shards: int) -> int:
    """FSDP: fp32 shards (gathered in bf16 per block); DDP: the whole teacher, bf16 on a GPU, fp32 on a CPU."""
    if sharded:
        return FP32 * shard_elements(arch.params, shards)
    return (BF16 if gpu else FP32) * arch.num_params


def format_plan(plan: MemoryPlan) -> str:
    """A table of GiB per worker per stage, and the verdict."""
    where = "GPU" if plan.device_type == "cuda" else "worker (CPU)"
    lines = [
        f"memory plan per {where}: {plan.num_workers} worker(s), strategy {plan.strategy}, batch {plan.batch_size}, "
        f"{plan.tokens} tokens per sample, activation checkpointing {'on' if plan.activation_checkpointing else 'off'}"
    ]
    names = list(dict.fromkeys(name for stage in plan.stages for name in stage.rows))
    header = f"{'':32s}" + "".join(f"{s.stage:>12s}" for s in plan.stages)
    lines.append(header)
    for name in names:
        cells = "".join(f"{s.rows[name] / GiB:12.2f}" if name in s.rows else f"{'-':>12s}" for s in plan.stages)
        lines.append(f"{name + ' (GiB)':32s}{cells}")
    summary = {
        "total": [s.total for s in plan.stages],
        "activations, ckpt on": [s.activations_checkpointed for s in plan.stages],
        "activations, ckpt off": [s.activations_full for s in plan.stages],
    }
    for name, values in summary.items():
        lines.append(f"{name + ' (GiB)':32s}" + "".join(f"{v / GiB:12.2f}" for v in values))
    if plan.capacity is not None:
        verdict = "fits" if plan.fits else "does NOT fit"
        lines.append(
            f"peak {plan.peak / GiB:.1f} GiB {verdict} in {plan.usable / GiB:.1f} GiB usable of a "
            f"{plan.capacity / GiB:.0f} GiB GPU ({RESERVE_FRACTION:.0%} kept for the allocator and NCCL)"
        )
    lines.extend(f"note: {n}" for n in plan.notes)
    return "\n".join(lines)
