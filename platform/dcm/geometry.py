"""Video <-> latent geometry: the one place that derives latent frames, latent size and token count.

Derived from the VAE's scale factors and the transformer's patch size, as diffusers' ``WanPipeline.prepare_latents``
does; nothing here hard-codes a resolution.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, kw_only=True)
class VideoGeometry:
    """Scale factors of a (VAE, transformer) pair.

    Args:
        scale_factor_temporal: pixel frames per latent frame (after the first); 4 for Wan and HunyuanVideo.
        scale_factor_spatial: pixels per latent pixel; 8 for Wan and HunyuanVideo.
        patch_size: (p_t, p_h, p_w) of the transformer's patch embedding.
        latent_channels: C of the latent video.
        max_num_frames / max_size: limits (pixels) enforced by :meth:`validate`.
    """

    scale_factor_temporal: int
    scale_factor_spatial: int
    patch_size: tuple[int, int, int]
    latent_channels: int
    max_num_frames: int = 257
    max_size: int = 1280

    @property
    def size_multiple(self) -> int:
        """Height and width must be multiples of this (VAE factor times spatial patch)."""
        return self.scale_factor_spatial * max(self.patch_size[1], self.patch_size[2])

    def validate(self, *, num_frames: int, height: int, width: int) -> None:
        """Raises ValueError naming the offending field and value."""
        for name, value in (("num_frames", num_frames), ("height", height), ("width", width)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if (num_frames - 1) % self.scale_factor_temporal != 0:
            raise ValueError(
                f"num_frames must be {self.scale_factor_temporal}*n + 1 (e.g. 17, 33, 81), got {num_frames}"
            )
        if num_frames > self.max_num_frames:
            raise ValueError(f"num_frames must be <= {self.max_num_frames}, got {num_frames}")
        latent_frames = (num_frames - 1) // self.scale_factor_temporal + 1
        if latent_frames % self.patch_size[0] != 0:
            raise ValueError(
                f"num_frames {num_frames} gives {latent_frames} latent frames, not a multiple of the temporal "
                f"patch size {self.patch_size[0]}"
            )
        for name, value in (("height", height), ("width", width)):
            if value % self.size_multiple != 0:
                raise ValueError(f"{name} must be a multiple of {self.size_multiple}, got {value}")
            if value > self.max_size:
                raise ValueError(f"{name} must be <= {self.max_size}, got {value}")

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
