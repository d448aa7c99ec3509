"""``DCMPipeline``: prompts in, frames out, through the few-step dual-expert sampler (or the teacher's N steps).

It wraps a stock diffusers pipeline (``WanPipeline`` / ``HunyuanVideoPipeline``) for its components and its public
prompt encoder, and replaces the denoising loop with :func:`dcm.sampling.sample_euler` over a sigma list. Numerics as
diffusers' ``WanPipeline``: latents are float32 from the first noise to the last step, the schedule is float64, and
only the transformer's input is cast to the model's dtype (docs/algorithm.md, "Inference schedules").
Loading and saving folders is in :mod:`dcm.io.model_folder`; this module touches no files.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace

import numpy as np
import torch
from torch import Tensor, nn

from dcm.config import MAX_SEED, DCMModelConfig, GenerationConfig
from dcm.experts import DualExpertTransformer, TwoTransformerRouter
from dcm.geometry import VideoGeometry
from dcm.models import cast_model, get_family
from dcm.sampling import CFGDenoiser, TransformerDenoiser, model_dtype, sample_euler
from dcm.schedule import SigmaGrid, build_grid, resolve_sigmas, teacher_sigmas


class DCMPipeline:
    """A loaded model ready to generate: diffusers components plus the (dual-expert or plain) transformer.

    Args:
        pipe: the stock diffusers pipeline holding vae, text encoder(s), tokenizer(s), scheduler and ``transformer``.
        config: the DCM model config (family, grid, detail expert structure, generation defaults).
        transformer: the denoiser network. A :class:`DualExpertTransformer` for a DCM student, or the plain
            diffusers transformer for a teacher. Defaults to ``pipe.transformer``.
    """

    def __init__(
        self,
        pipe,
        config: DCMModelConfig,
        transformer: nn.Module | None = None,
    ) -> None:
        self.pipe = pipe
        self.config = config
        self.family = get_family(config.family)
        self.transformer = transformer if transformer is not None else pipe.transformer
        self.max_sequence_length = config.max_sequence_length
        self.grid: SigmaGrid = build_grid(config.schedule)
        self.geometry: VideoGeometry = self.family.geometry(pipe)
        pipe.set_progress_bar_config(disable=True)
        # Models built from a config start in training mode (dropout on); inference wants eval everywhere.
        # A trainer switches on train() for what it trains.
        for component in pipe.components.values():
            if isinstance(component, nn.Module):
                component.eval()
        self.transformer.eval()

    @classmethod
    def from_components(cls, components: dict, config: DCMModelConfig, *, with_detail: bool) -> DCMPipeline:
        """Builds the stock pipeline from components; ``with_detail`` adds a fresh detail expert (LoRA B = 0)."""
        family = get_family(config.family)
        pipe = family.pipeline_class(**components)
        transformer = None
        if with_detail:
            if config.detail is None:
                raise ValueError("with_detail=True needs config.detail (a DetailExpertConfig), got None")
            transformer = DualExpertTransformer(pipe.transformer, build_grid(config.schedule), config.detail)
        return cls(pipe, config, transformer)

    @property
    def is_dual_expert(self) -> bool:
        """True for a two-expert student (one backbone with a detail expert, or two routed transformers)."""
        return isinstance(self.transformer, (DualExpertTransformer, TwoTransformerRouter))

    @property
    def device(self) -> torch.device:
        return next(self.transformer.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        """The transformer's compute dtype (its float32-kept modules aside)."""
        return model_dtype(self.transformer)

    def to(self, device: str | torch.device | None = None, dtype: torch.dtype | None = None) -> DCMPipeline:
        """Moves every component; ``dtype`` (bf16 on GPU) casts them as diffusers' ``from_pretrained(torch_dtype=)``
        does, keeping each model's float32 modules in float32."""
        modules = [c for c in self.pipe.components.values() if isinstance(c, nn.Module)] + [self.transformer]
        for module in modules:
            if dtype is not None:
                cast_model(module, dtype)
            if device is not None:
                module.to(device)
        return self

    # -- 1. inputs --------------------------------------------------------------------------------------------

    def check_inputs(self, prompts: Sequence[str], seeds: Sequence[int], config: GenerationConfig) -> None:
        """What the sampler itself needs (the geometry is checked where the latent shape is derived). Operator
        limits such as prompt length belong to the request layer (:func:`dcm.generation.resolve_request`)."""
        if len(prompts) == 0:
            raise ValueError("prompts must contain at least one prompt, got []")
        if len(seeds) != len(prompts):
            raise ValueError(f"seeds must have one entry per prompt ({len(prompts)}), got {len(seeds)}")
        for prompt in prompts:
            if not isinstance(prompt, str) or not prompt.strip():
                raise ValueError(f"prompt must be a non-empty string, got {prompt!r}")
        for seed in seeds:
            if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool) or not 0 <= seed <= MAX_SEED:
                raise ValueError(f"seed must be an integer in [0, {MAX_SEED}], got {seed!r}")

    def sigmas(self, config: GenerationConfig) -> Tensor:
        """(S + 1,) schedule: explicit list > DCM rule (dual-expert model, or a single-expert consistency model on a
        ``k = 0`` grid) > the teacher's shifted uniform grid."""
        if config.sigmas is not None or self.is_dual_expert or self.grid.is_single_expert:
            return resolve_sigmas(config.num_inference_steps, self.grid, config.sigmas)
        return teacher_sigmas(config.num_inference_steps, self.pipe.scheduler.config.shift)

    def initial_noise(self, seeds: Sequence[int], config: GenerationConfig) -> Tensor:
        """(B, C, F, H, W) float32 noise, one CPU generator per seed, so a sample never depends on its batch."""
        shape = self.geometry.latent_shape(num_frames=config.num_frames, height=config.height, width=config.width)
        noise = [torch.randn(shape, generator=torch.Generator("cpu").manual_seed(int(s))) for s in seeds]
        return torch.stack(noise)

    @torch.no_grad()
    def encode_prompts(
        self, prompts: Sequence[str], negative_prompts: Sequence[str] | None = None
    ) -> dict[str, Tensor]:
        """Conditioning dict; with negative prompts, their tensors are added under ``negative_<key>``."""
        cond = self.family.encode_prompts(self.pipe, list(prompts), max_sequence_length=self.max_sequence_length)
        if negative_prompts is not None:
            neg = self.family.encode_prompts(
                self.pipe, list(negative_prompts), max_sequence_length=self.max_sequence_length
            )
            cond |= {f"negative_{k}": v for k, v in neg.items()}
        return {k: v.to(self.device) for k, v in cond.items()}

    # -- 2. denoise -------------------------------------------------------------------------------------------

    def denoiser(self, guidance_scale: float) -> nn.Module:
        inner = TransformerDenoiser(self.transformer, self.grid.config.num_train_timesteps, self.family.cond_keys)
        return CFGDenoiser(inner, guidance_scale)

    @torch.no_grad()
    def denoise(
        self,
        noise: Tensor,
        cond: dict[str, Tensor],
        sigmas: Tensor,
        *,
        guidance_scale: float = 1.0,
        denoiser: nn.Module | None = None,
        callback: Callable[[dict], None] | None = None,
    ) -> Tensor:
        """noise (B, C, F, H, W) at sigmas[0] -> float32 latents (B, C, F, H, W) at sigmas[-1] = 0.

        The latents stay float32 and ``sigmas`` keep their dtype (float64) whatever the model's dtype.
        """
        denoiser = denoiser if denoiser is not None else self.denoiser(guidance_scale)
        x = noise.to(self.device, torch.float32)
        return sample_euler(denoiser, x, sigmas.to(self.device), cond=cond, callback=callback)

    # -- 3. decode --------------------------------------------------------------------------------------------

    @torch.no_grad()
    def decode(self, latents: Tensor) -> np.ndarray:
        """(B, C, F, H, W) latents -> (B, F', H', W', 3) uint8 frames."""
        video = self.family.decode_latents(self.pipe, latents)
        return (video.float() * 255).round().to(torch.uint8).cpu().numpy()

    def generate(
        self,
        prompts: Sequence[str],
        *,
        seeds: Sequence[int],
        config: GenerationConfig | None = None,
        negative_prompts: Sequence[str] | None = None,
        output_type: str = "np",
        callback: Callable[[dict], None] | None = None,
    ) -> np.ndarray | Tensor:
        """Generates one video per prompt.

        Args:
            prompts: B prompts.
            seeds: B seeds; a prompt's video depends only on its prompt, seed and config, never on its batch-mates.
            config: frames, size, steps, guidance, sigmas; defaults to the model's stored generation defaults.
            negative_prompts: B negative prompts, used only with ``guidance_scale > 1`` (default: empty prompts).
            output_type: ``np`` for (B, F, H, W, 3) uint8 frames, ``latent`` for (B, C, F', H', W') latents.
        """
        config = config or self.config.default_generation
        self.check_inputs(prompts, seeds, config)
        if output_type not in ("np", "latent"):
            raise ValueError(f"output_type must be 'np' or 'latent', got {output_type!r}")
        if config.guidance_scale > 1.0 and negative_prompts is None:
            negative_prompts = [""] * len(prompts)
        elif config.guidance_scale == 1.0:
            negative_prompts = None
        cond = self.encode_prompts(prompts, negative_prompts)
        latents = self.denoise(
            self.initial_noise(seeds, config),
            cond,
            self.sigmas(config),
            guidance_scale=config.guidance_scale,
            callback=callback,
        )
        return latents if output_type == "latent" else self.decode(latents)

    def with_defaults(self, **changes) -> GenerationConfig:
        """The model's generation defaults with some fields changed."""
        return replace(self.config.default_generation, **changes)
