"""Validation samples during distillation, on the training device with every component they use there.

    validator = Validator(base, prompt=..., seed=..., latent_shape=(C, F, H, W), device=device)   # before the models
    latents = validator.sample(models)      # every worker (FSDP's forwards are collectives)
    frames = validator.decode(latents)      # rank 0

The prompt is encoded once, when the validator is built: the text encoders visit the device and go back to the CPU
(they are not needed for training). The student samples with the DCM schedule of its grid; the VAE visits the device
to decode and goes back.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from dcm.distill.steps import StageModels, autocast
from dcm.pipeline import DCMPipeline
from dcm.sampling import sample_euler
from dcm.schedule import resolve_sigmas

VALIDATION_STEPS = 4  # the student's few-step schedule


class Validator:
    """One fixed prompt and seed, sampled at the training latent size.

    Args:
        base: the teacher's pipeline (text encoders, VAE, family).
        prompt / seed: what to sample.
        latent_shape: (C, F, H, W) of the training data.
        device: the training device.
    """

    def __init__(
        self, base: DCMPipeline, *, prompt: str, seed: int, latent_shape: tuple[int, ...], device: torch.device
    ) -> None:
        self.base = base
        self.device = device
        self.noise = torch.randn(latent_shape, generator=torch.Generator().manual_seed(seed))[None]  # (1, C, F, H, W)
        with on_device(text_encoders(base), device):
            self.cond = {k: v.to(device) for k, v in base.encode_prompts([prompt]).items()}

    @torch.no_grad()
    def sample(self, models: StageModels) -> torch.Tensor:
        """(1, C, F, H, W) latents of the student in eval mode (every worker calls it under FSDP)."""
        sigmas = resolve_sigmas(VALIDATION_STEPS, models.grid)
        models.student.eval()
        try:
            with autocast(self.device):
                return sample_euler(models.student_denoiser(), self.noise.to(self.device), sigmas.to(self.device),
                                    cond=self.cond)  # fmt: skip
        finally:
            models.student.train()

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> np.ndarray:
        """(1, C, F, H, W) latents -> (1, F', H', W', 3) uint8 frames, decoded on the training device."""
        with on_device([self.base.pipe.vae], self.device):
            return self.base.decode(latents.float())


def text_encoders(base: DCMPipeline) -> list[nn.Module]:
    return [m for name, m in base.pipe.components.items() if name.startswith("text_encoder") and m is not None]


class on_device:  # noqa: N801 - used as a context manager, like torch.no_grad
    """Moves modules to ``device`` for the duration of the block and back to the CPU after it."""

    def __init__(self, modules: list[nn.Module], device: torch.device) -> None:
        self.modules, self.device = modules, device

    def __enter__(self) -> None:
        for module in self.modules:
            module.to(self.device)

    def __exit__(self, *exc) -> None:
        for module in self.modules:
            module.to("cpu")
