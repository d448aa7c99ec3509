"""The frozen teacher with feature taps (docs/algorithm.md, "Discriminator"); nothing is patched.

:class:`TappedTeacher` is a denoiser, ``teacher(x, sigma, cond) -> v``, so the consistency target calls it through
:class:`dcm.sampling.CFGDenoiser` like any other. Called with ``taps=True`` it also returns the output tokens of every
``stride``-th block (blocks 0, s, 2s, ...) and their "velocity read-outs" through the teacher's own output head.

Forward hooks read the block outputs. They record only while :meth:`TappedTeacher.forward` runs: when activation
checkpointing recomputes a block during the backward pass the hook fires again and is ignored, so the taps are the
tensors of the original forward (those the graph holds) whatever the recompute does. The read-outs are computed inside
``forward``, so under FSDP the output head's parameters are gathered when they are used, and every returned tensor
carries FSDP's backward hooks.
"""

from __future__ import annotations

from torch import Tensor, nn

from dcm.models import hunyuan, wan
from dcm.sampling import TransformerDenoiser

# Families whose teacher features the discriminator can read (module lookups and output head per family).
FEATURE_FAMILIES = {"wan": wan, "hunyuan": hunyuan}


def check_feature_family(family: str) -> None:
    if family not in FEATURE_FAMILIES:
        raise ValueError(
            f"Stage II (detail expert) needs teacher feature taps, available for families {sorted(FEATURE_FAMILIES)}; "
            f"got {family!r}"
        )


def num_taps(transformer: nn.Module, family: str, stride: int) -> int:
    """Number of tapped blocks; raises when ``stride`` does not divide the depth."""
    check_feature_family(family)
    depth = len(FEATURE_FAMILIES[family].tapped_blocks(transformer))
    if stride < 1 or depth % stride:
        raise ValueError(f"discriminator stride must divide the teacher depth {depth}, got {stride}")
    return depth // stride


class TappedTeacher(nn.Module):
    """A frozen teacher transformer as a denoiser, with its block outputs tapped on request.

    Args:
        denoiser: the teacher as a :class:`dcm.sampling.TransformerDenoiser` (it owns the sigma -> timestep
            conversion).
        family: model family key (which blocks to tap, which output head reads them out).
        stride: tap every ``stride``-th block; None: no taps (Stage I only needs the velocity).
    """

    def __init__(self, denoiser: TransformerDenoiser, family: str, stride: int | None) -> None:
        super().__init__()
        self.denoiser = denoiser
        self.indices: list[int] = []
        self._recording = False
        self._tokens: dict[int, Tensor] = {}
        self._temb: Tensor | None = None
        self._handles = []
        if stride is None:
            return
        self.family = FEATURE_FAMILIES[family]
        transformer = denoiser.transformer
        blocks = self.family.tapped_blocks(transformer)
        num_taps(transformer, family, stride)
        self.indices = list(range(0, len(blocks), stride))
        self._handles = [blocks[i].register_forward_hook(self._keep(i)) for i in self.indices]
        self._handles.append(self.family.timestep_embedder(transformer).register_forward_hook(self._keep_temb))

    @property
    def transformer(self) -> nn.Module:
        return self.denoiser.transformer

    def _keep(self, i: int):
        def hook(module, args, output):
            if self._recording:
                self._tokens[i] = output[0] if isinstance(output, tuple) else output

        return hook

    def _keep_temb(self, module, args, output) -> None:
        if self._recording:
            self._temb = output[0]

    def forward(
        self, x: Tensor, sigma: Tensor, cond: dict[str, Tensor], taps: bool = False
    ) -> Tensor | tuple[Tensor, list[Tensor], list[Tensor]]:
        """The teacher's velocity, and with ``taps`` its tapped tokens and their read-outs.

        Args:
            x: (B, C, F, H, W) noisy latents; sigma: (B,) noise levels; cond: conditioning tensors (B, ...).
        Returns:
            v (B, C, F, H, W); with ``taps``: (v, tokens [(B, L, D)] per tap, read-outs [(B, C, F, H, W)] per tap).
        """
        if not taps:
            return self.denoiser(x, sigma, cond)
        if not self.indices:
            raise ValueError("this teacher was built without feature taps (stride None)")
        self._tokens.clear()
        self._recording = True
        try:
            v = self.denoiser(x, sigma, cond)
        finally:
            self._recording = False
        tokens = [self._tokens.pop(i) for i in self.indices]
        readouts = [self.family.readout(self.transformer, t, self._temb, tuple(x.shape)) for t in tokens]
        self._temb = None
        return v, tokens, readouts

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
