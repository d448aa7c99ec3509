"""Intermediate features of the frozen teacher, read with forward hooks (spec §4.4); nothing is patched.

For every ``stride``-th block (blocks 0, s, 2s, ...) the hook keeps the block's output tokens; the teacher's own
output head turns each into a "velocity read-out" for feature matching.
"""

from __future__ import annotations

from torch import Tensor, nn

from dcm.models import hunyuan, wan

# Families whose teacher features the discriminator can read (module lookups and output head per family).
FEATURE_FAMILIES = {"wan": wan, "hunyuan": hunyuan}


def check_feature_family(family: str) -> None:
    if family not in FEATURE_FAMILIES:
        raise ValueError(
            f"Stage II (detail expert) needs teacher feature taps, available for families {sorted(FEATURE_FAMILIES)}; "
            f"got {family!r}"
        )


def num_taps(transformer: nn.Module, family: str, stride: int) -> int:
    """Number of tapped blocks; raises when ``stride`` does not divide the depth (spec §8 item 2)."""
    check_feature_family(family)
    depth = len(FEATURE_FAMILIES[family].tapped_blocks(transformer))
    if stride < 1 or depth % stride:
        raise ValueError(f"discriminator stride must divide the teacher depth {depth}, got {stride}")
    return depth // stride


class TeacherFeatures:
    """Runs the teacher and returns its tapped tokens and their read-outs.

    Args:
        transformer: the frozen teacher (a diffusers transformer).
        family: model family key.
        stride: tap every ``stride``-th block.
    """

    def __init__(self, transformer: nn.Module, family: str, stride: int) -> None:
        self.transformer = transformer
        self.module = FEATURE_FAMILIES[family]
        blocks = self.module.tapped_blocks(transformer)
        num_taps(transformer, family, stride)
        self.indices = list(range(0, len(blocks), stride))
        self._tokens: dict[int, Tensor] = {}
        self._temb: Tensor | None = None
        self._handles = [blocks[i].register_forward_hook(self._keep(i)) for i in self.indices]
        self._handles.append(self.module.timestep_embedder(transformer).register_forward_hook(self._keep_temb))

    def _keep(self, i: int):
        def hook(module, args, output):
            self._tokens[i] = output[0] if isinstance(output, tuple) else output

        return hook

    def _keep_temb(self, module, args, output) -> None:
        self._temb = output[0]

    def __call__(self, x: Tensor, timestep: Tensor, cond: dict[str, Tensor]) -> tuple[list[Tensor], list[Tensor]]:
        """x: (B, C, F, H, W); timestep: (B,). Returns tokens [(B, L, D)] and read-outs [(B, C, F, H, W)]."""
        self._tokens.clear()
        self.transformer(hidden_states=x, timestep=timestep, return_dict=False, **cond)
        tokens = [self._tokens[i] for i in self.indices]
        readouts = [self.module.readout(self.transformer, t, self._temb, tuple(x.shape)) for t in tokens]
        return tokens, readouts

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
