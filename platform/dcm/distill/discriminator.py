"""The Stage II discriminator: one light convolutional head per tapped teacher feature (docs/algorithm.md,
"Discriminator").

Tokens (B, L, D) are reshaped to per-frame maps (B * F', D, H', W') with the token grid derived from the latent shape
and the patch size (never hard-coded; the reference's fixed grid is one of docs/algorithm.md's "Reference-code
pitfalls"), then conv1x1 -> GroupNorm -> LeakyReLU -> residual block ->
conv1x1 gives per-frame patch logits.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor, nn


@dataclass(frozen=True, kw_only=True)
class DiscriminatorConfig:
    """Head sizes (reference: hidden 1024, 32 groups, LeakyReLU 0.01)."""

    hidden: int = 1024
    groups: int = 32
    negative_slope: float = 0.01

    def __post_init__(self) -> None:
        if self.hidden % self.groups:
            raise ValueError(f"hidden ({self.hidden}) must be a multiple of groups ({self.groups})")


class DiscriminatorHead(nn.Module):
    def __init__(self, in_channels: int, config: DiscriminatorConfig) -> None:
        super().__init__()
        act = nn.LeakyReLU(config.negative_slope)
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, config.hidden, 1), nn.GroupNorm(config.groups, config.hidden), act
        )
        self.block = nn.Sequential(
            nn.Conv2d(config.hidden, config.hidden, 1), nn.GroupNorm(config.groups, config.hidden), act
        )
        self.out = nn.Conv2d(config.hidden, 1, 1)

    def forward(self, tokens: Tensor, grid: tuple[int, int, int]) -> Tensor:
        """tokens: (B, L, D) with L = F' * H' * W'. Returns logits (B * F', 1, H', W')."""
        frames, height, width = grid
        batch, length, dim = tokens.shape
        if length != frames * height * width:
            raise ValueError(f"{length} tokens do not fill the token grid {grid}")
        x = tokens.float().reshape(batch, frames, height, width, dim).permute(0, 1, 4, 2, 3)  # (B, F', D, H', W')
        x = self.stem(x.reshape(batch * frames, dim, height, width))
        return self.out(x + self.block(x))


class Discriminator(nn.Module):
    """``num_heads`` heads, one per tapped feature."""

    def __init__(self, num_heads: int, in_channels: int, config: DiscriminatorConfig) -> None:
        super().__init__()
        self.heads = nn.ModuleList(DiscriminatorHead(in_channels, config) for _ in range(num_heads))

    def forward(self, features: list[Tensor], grid: tuple[int, int, int]) -> list[Tensor]:
        """features: one (B, L, D) token tensor per head. Returns one (B * F', 1, H', W') logit map per head."""
        if len(features) != len(self.heads):
            raise ValueError(f"expected {len(self.heads)} features, got {len(features)}")
        return [head(f, grid) for head, f in zip(self.heads, features)]
