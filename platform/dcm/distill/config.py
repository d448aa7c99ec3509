"""Configuration of a two-stage DCM distillation run (defaults from docs/algorithm.md, "Stage I: semantic expert" and
"Stage II: detail expert")."""

from __future__ import annotations

from dataclasses import dataclass, field

from dcm.config import DetailExpertConfig, ScheduleConfig
from dcm.distill.discriminator import DiscriminatorConfig
from dcm.schedule import MAX_DCM_STEPS

SEMANTIC_STAGE, DETAIL_STAGE = "semantic", "detail"
STAGES = (SEMANTIC_STAGE, DETAIL_STAGE)
DDP, FSDP = "ddp", "fsdp"
STRATEGIES = (DDP, FSDP)
DISC_BETAS = (0.0, 0.999)  # the discriminator's AdamW betas (docs/algorithm.md, "Discriminator")
# The memory plan's default card: the 80 GB class (A100 / H100) the reference trained on.
DEFAULT_GPU_MEMORY_GB = 80.0
CHECKPOINT_DIR = "checkpoints"  # the default storage path is <output>/checkpoints


@dataclass(frozen=True, kw_only=True)
class OptimizerConfig:
    """AdamW with gradient-norm clipping and a constant learning rate."""

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
    """Stage I: full fine-tune on the high-noise range with consistency + Temporal Coherence Loss."""

    num_steps: int
    optimizer: OptimizerConfig = field(default_factory=lambda: OptimizerConfig(lr=1e-6))
    tcl_stride: int = 3
    tcl_weight: float = 1.0

    def __post_init__(self) -> None:
        if self.num_steps < 0:
            raise ValueError(f"semantic num_steps must be >= 0, got {self.num_steps}")
        if self.tcl_stride < 1:
            raise ValueError(f"tcl_stride must be >= 1, got {self.tcl_stride}")


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
class TrainingVideo:
    """The video size a recipe is written for: what the memory plan assumes when the data is not at hand (the data's
    own latent shape decides once it is)."""

    num_frames: int
    height: int
    width: int

    def __post_init__(self) -> None:
        for name in ("num_frames", "height", "width"):
            if getattr(self, name) < 1:
                raise ValueError(f"video {name} must be >= 1, got {getattr(self, name)}")


@dataclass(frozen=True, kw_only=True)
class DistillConfig:
    """A whole run.

    Args:
        teacher: preset, diffusers folder or hub id of the teacher.
        data: training dataset (``dcm.data`` format), local or ``s3://``.
        output: where the stage folders go: ``<output>/semantic``, ``<output>/final`` (local or ``s3://``).
        schedule: grid and boundary k.
        detail_expert: LoRA rank/alpha/targets and duplicated modules.
        teacher_guidance_scale: g in ``v = v_u + g (v_c - v_u)`` for the teacher's targets (through
            :class:`dcm.sampling.CFGDenoiser`); 1.0 = no CFG (guidance-distilled teachers such as HunyuanVideo).
        video: the recipe's training video size (for the memory plan before the data exists).
        stages: which stages to run, in order.
        strategy: ``ddp`` (every worker holds the whole student) or ``fsdp`` (FSDP2: parameters, gradients and
            optimizer states sharded per transformer block; the frozen teacher sharded the same way).
        activation_checkpointing: recompute each transformer block's activations in the backward pass (student and
            teacher).
        student_steps: the sampler steps written as the student's default generation (guidance 1: no CFG).
        storage_path: the checkpoint folder (local or ``s3://``); None = ``<output>/checkpoints``, so two outputs
            never share checkpoints. Each stage's checkpoints go to ``<storage_path>/<run_name>-<stage>``.
        run_name: the run's name; a re-submitted run with the same name, storage path and fingerprint resumes.
        gpu_memory_gb: memory of one GPU, for the memory plan's fit check (GPU runs only).
        log_every / report_every: steps between log lines (rank 0) and between ``ray.train.report`` calls
            (a report synchronises the workers; checkpoint steps always report).
    """

    teacher: str
    data: str
    output: str
    schedule: ScheduleConfig
    detail_expert: DetailExpertConfig
    semantic: SemanticStageConfig
    detail: DetailStageConfig
    teacher_guidance_scale: float
    video: TrainingVideo
    stages: tuple[str, ...] = STAGES
    batch_size: int = 1
    huber_c: float = 1e-3
    num_workers: int = 1
    use_gpu: bool = False
    strategy: str = DDP
    activation_checkpointing: bool = True
    checkpoint_every: int = 100
    log_every: int = 1
    report_every: int = 10
    validate_every: int = 0
    validation_prompt: str = "a red circle moving left"
    student_steps: int = 4
    seed: int = 42
    max_failures: int = 0
    storage_path: str | None = None
    run_name: str = "dcm"
    gpu_memory_gb: float = DEFAULT_GPU_MEMORY_GB

    def __post_init__(self) -> None:
        bad = [s for s in self.stages if s not in STAGES]
        if not self.stages or bad:
            raise ValueError(f"stages must be a non-empty subset of {STAGES}, got {self.stages}")
        if self.strategy not in STRATEGIES:
            raise ValueError(f"strategy must be one of {STRATEGIES}, got {self.strategy!r}")
        for name in ("batch_size", "num_workers", "checkpoint_every", "log_every", "report_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not self.teacher_guidance_scale >= 1.0:
            raise ValueError(
                f"teacher_guidance_scale must be >= 1.0 (1.0 = no CFG), got {self.teacher_guidance_scale}"
            )
        if DETAIL_STAGE in self.stages and self.schedule.boundary_index == 0:
            raise ValueError("the detail stage needs a boundary_index >= 1 (0 means a single-expert grid)")
        if not 1 <= self.student_steps <= MAX_DCM_STEPS:
            raise ValueError(f"student_steps must lie in [1, {MAX_DCM_STEPS}], got {self.student_steps}")
        if not self.run_name or "/" in self.run_name:
            raise ValueError(f"run_name must be a non-empty name without '/', got {self.run_name!r}")
        if self.gpu_memory_gb <= 0:
            raise ValueError(f"gpu_memory_gb must be > 0, got {self.gpu_memory_gb}")

    def stage_config(self, stage: str) -> SemanticStageConfig | DetailStageConfig:
        return self.semantic if stage == SEMANTIC_STAGE else self.detail

    def storage(self) -> str:
        """The checkpoint folder: ``storage_path``, or ``<output>/checkpoints`` by default."""
        return self.storage_path or f"{self.output.rstrip('/')}/{CHECKPOINT_DIR}"
