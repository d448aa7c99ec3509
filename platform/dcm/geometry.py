"""Video <-> latent geometry: the one place that derives latent frames, latent size, token count and the model's
own size limits.

Derived from the VAE's scale factors and the transformer's patch size, as diffusers' ``WanPipeline.prepare_latents``
does; nothing here hard-codes a resolution. A family builds it from the model's configs alone (no weights), so a
dry run can check requests against a model it never loads.
"""

from __future__ import annotations

from dataclasses import dataclass

from dcm.config import FieldError


@dataclass(frozen=True, kw_only=True)
class VideoGeometry:
    """Scale factors of a (VAE, transformer) pair.

    Args:
        scale_factor_temporal: pixel frames per latent frame (after the first); 4 for Wan and HunyuanVideo.
        scale_factor_spatial: pixels per latent pixel; 8 for Wan and HunyuanVideo.
        patch_size: (p_t, p_h, p_w) of the transformer's patch embedding.
        latent_channels: C of the latent video.
        max_positions: positions per token-grid axis the transformer's positional table holds (Wan's
            ``rope_max_seq_len``); None when positions are computed for any length (HunyuanVideo).
    """

    scale_factor_temporal: int
    scale_factor_spatial: int
    patch_size: tuple[int, int, int]
    latent_channels: int
    max_positions: int | None = None

    @property
    def size_multiple(self) -> int:
        """Height and width must be multiples of this (VAE factor times spatial patch)."""
        return self.scale_factor_spatial * max(self.patch_size[1], self.patch_size[2])

    @property
    def max_num_frames(self) -> int | None:
        """Most frames whose token grid fits the positional table (None: no limit from the model)."""
        if self.max_positions is None:
            return None
        return (self.max_positions * self.patch_size[0] - 1) * self.scale_factor_temporal + 1

    @property
    def max_size(self) -> int | None:
        """Largest height / width whose token grid fits the positional table (None: no limit from the model)."""
        if self.max_positions is None:
            return None
        return self.max_positions * min(self.patch_size[1], self.patch_size[2]) * self.scale_factor_spatial

    def validate(self, *, num_frames: int, height: int, width: int) -> None:
        """Raises ValueError naming the offending field and value (the model's own limits, not an operator's)."""
        for name, value in (("num_frames", num_frames), ("height", height), ("width", width)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise FieldError(name, f"{name} must be a positive integer, got {value!r}")
        if (num_frames - 1) % self.scale_factor_temporal != 0:
            raise FieldError(
                "num_frames",
                f"num_frames must be {self.scale_factor_temporal}*n + 1 (e.g. 17, 33, 81), got {num_frames}",
            )
        latent_frames = (num_frames - 1) // self.scale_factor_temporal + 1
        if latent_frames % self.patch_size[0] != 0:
            raise FieldError(
                "num_frames",
                f"num_frames {num_frames} gives {latent_frames} latent frames, not a multiple of the temporal "
                f"patch size {self.patch_size[0]}",
            )
        table = f"(the model's positional table holds {self.max_positions} positions per axis)"
        if self.max_num_frames is not None and num_frames > self.max_num_frames:
            raise FieldError(
                "num_frames", f"num_frames must be <= {self.max_num_frames} for this model {table}, got {num_frames}"
            )
        for name, value in (("height", height), ("width", width)):
            if value % self.size_multiple != 0:
                raise FieldError(name, f"{name} must be a multiple of {self.size_multiple}, got {value}")
            if self.max_size is not None and value > self.max_size:
                raise FieldError(name, f"{name} must be <= {self.max_size} for this model {table}, got {value}")

    def latent_shape(self, *, num_frames: int, height: int, width: int) -> tuple[int, int, int, int]:
        """(C, F, H, W) of the latent for a video of the given size (validated)."""
        self.validate(num_frames=num_frames, height=height, width=width)
        return (
            self.latent_channels,
            (num_frames - 1) // self.scale_factor_temporal + 1,
            height // self.scale_factor_spatial,
            width // self.scale_factor_spatial,
        )

    def num_tokens(self, *, num_frames: int, height: int, width: int) -> int:
        """L = F' * H' * W' after patchification."""
        _, f, h, w = self.latent_shape(num_frames=num_frames, height=height, width=width)
        p_t, p_h, p_w = self.patch_size
        return (f // p_t) * (h // p_h) * (w // p_w)

    def token_grid(self, latent_shape: tuple[int, ...]) -> tuple[int, int, int]:
        """(F', H', W') token grid of a latent (..., F, H, W): what the discriminator reshapes tokens to."""
        f, h, w = latent_shape[-3:]
        p_t, p_h, p_w = self.patch_size
        return f // p_t, h // p_h, w // p_w
