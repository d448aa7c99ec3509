"""Configuration of a two-stage DCM distillation run (defaults from spec §9)."""

from __future__ import annotations

from dataclasses import dataclass, field

from dcm.config import DetailExpertConfig, ScheduleConfig
from dcm.distill.discriminator import DiscriminatorConfig
from dcm.schedule import MAX_DCM_STEPS

SEMANTIC_STAGE, DETAIL_STAGE = "semantic", "detail"
STAGES = (SEMANTIC_STAGE, DETAIL_STAGE)
STRATEGIES = ("ddp", "fsdp")
DISC_BETAS = (0.0, 0.999)  # the discriminator's AdamW betas (spec §4.7)


@dataclass(frozen=True, kw_only=True)
class OptimizerConfig:
    """AdamW with gradient-norm clipping and a constant learning rate (spec §3, §4.7)."""

    lr: float
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    weight_decay: float = 1e-3
    grad_clip: float = 1.0

    def __post_init__(self) -> None:
        if self.lr <= 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if self.grad_clip <= 0:
            raise ValueError(f"grad_clip must be > 0, got {self.grad_clip}")


@dataclass(frozen=True, kw_only=True)
class SemanticStageConfig:
    """Stage I: full fine-tune on the high-noise range with consistency + Temporal Coherence Loss (spec §3)."""

    num_steps: int
    optimizer: OptimizerConfig = field(default_factory=lambda: OptimizerConfig(lr=1e-6))
    tcl_stride: int = 3
    tcl_weight: float = 1.0
    ema_decay: float | None = None  # None: the target is the online student under no_grad (the reference default)

    def __post_init__(self) -> None:
        if self.num_steps < 0:
            raise ValueError(f"semantic num_steps must be >= 0, got {self.num_steps}")
        if self.tcl_stride < 1:
            raise ValueError(f"tcl_stride must be >= 1, got {self.tcl_stride}")
        if self.ema_decay is not None and not 0 < self.ema_decay < 1:
            raise ValueError(f"ema_decay must lie in (0, 1), got {self.ema_decay}")


@dataclass(frozen=True, kw_only=True)
class DetailStageConfig:
    """Stage II: LoRA + duplicated layers on the low-noise range with consistency + GAN hinge + feature matching."""

    num_steps: int
    optimizer: OptimizerConfig = field(default_factory=lambda: OptimizerConfig(lr=5e-6))
    disc_optimizer: OptimizerConfig = field(default_factory=lambda: OptimizerConfig(lr=1e-5, betas=DISC_BETAS))
    discriminator: DiscriminatorConfig = field(default_factory=DiscriminatorConfig)
    feature_stride: int = 2
    adv_weight: float = 0.1
    hinge_factor: float = 5.0
    fm_weight: float = 10.0  # lambda_FM: 10 for Wan, 1 for HunyuanVideo

    def __post_init__(self) -> None:
        if self.num_steps < 0:
            raise ValueError(f"detail num_steps must be >= 0, got {self.num_steps}")
        if self.feature_stride < 1:
            raise ValueError(f"feature_stride must be >= 1, got {self.feature_stride}")


@dataclass(frozen=True, kw_only=True)
class DistillConfig:
    """A whole run.

    Args:
        teacher: preset, diffusers folder or hub id of the teacher.
        data: training dataset (``dcm.data`` format), local or ``s3://``.
        output: where the final DCM model folder goes (local or ``s3://``).
        stages: which stages to run, in order.
        schedule: grid and boundary k.
        detail_expert: LoRA rank/alpha/targets and duplicated modules.
        teacher_cfg_weight: w in ``v = v_c + w (v_c - v_u)``; 0 = no CFG (guidance-distilled teachers).
        student_steps: the sampler steps written as the student's default generation (guidance 1: no CFG).
        storage_path / run_name: Ray Train's run folder (local or ``s3://``); a re-submitted run with the same
            name resumes from its latest checkpoint.
        log_every / report_every: steps between log lines (rank 0) and between ``ray.train.report`` calls
            (a report synchronises the workers; checkpoint steps always report).
        fault_fail_at_step: FAULT INJECTION for tests: every worker raises at this step (before its update).
    """

    teacher: str
    data: str
    output: str
    schedule: ScheduleConfig
    detail_expert: DetailExpertConfig
    semantic: SemanticStageConfig
    detail: DetailStageConfig
    stages: tuple[str, ...] = STAGES
    batch_size: int = 1
    teacher_cfg_weight: float = 5.0
    huber_c: float = 1e-3
    num_workers: int = 1
    use_gpu: bool = False
    strategy: str = "ddp"
    activation_checkpointing: bool = False
    checkpoint_every: int = 100
    log_every: int = 1
    report_every: int = 10
    validate_every: int = 0
    validation_prompt: str = "a red circle moving left"
    student_steps: int = 4
    seed: int = 42
    max_failures: int = 0
    storage_path: str = "outputs/distill-runs"
    run_name: str = "dcm"
    fault_fail_at_step: int | None = None

    def __post_init__(self) -> None:
        bad = [s for s in self.stages if s not in STAGES]
        if not self.stages or bad:
            raise ValueError(f"stages must be a non-empty subset of {STAGES}, got {self.stages}")
        if self.strategy not in STRATEGIES:
            raise ValueError(f"strategy must be one of {STRATEGIES}, got {self.strategy!r}")
        for name in ("batch_size", "num_workers", "checkpoint_every", "log_every", "report_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.teacher_cfg_weight < 0:
            raise ValueError(f"teacher_cfg_weight must be >= 0, got {self.teacher_cfg_weight}")
        if DETAIL_STAGE in self.stages and self.schedule.boundary_index == 0:
            raise ValueError("the detail stage needs a boundary_index >= 1 (0 means a single-expert grid)")
        if not 1 <= self.student_steps <= MAX_DCM_STEPS:
            raise ValueError(f"student_steps must lie in [1, {MAX_DCM_STEPS}], got {self.student_steps}")
        if self.strategy == "fsdp" and not self.use_gpu:
            raise ValueError("strategy 'fsdp' needs use_gpu=True (FSDP shards over CUDA devices)")
