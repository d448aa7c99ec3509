"""The dual-expert transformer: one diffusers backbone, a semantic and a detail expert (docs/algorithm.md, "Stage II:
detail expert").

The semantic expert is the transformer as it is. The detail expert is the same transformer with

* a peft LoRA adapter on the attention projections (``to_q, to_k, to_v, to_out.0`` by default), and
* trainable copies of the timestep-dependent modules (Wan: ``condition_embedder``, ``proj_out``;
  HunyuanVideo: ``time_text_embed``, ``norm_out``, ``proj_out``).

Routing is per sample by the schedule's own noise level ``sigma`` (passed by :class:`dcm.sampling.TransformerDenoiser`
beside the timestep): :func:`dcm.schedule.is_detail` decides, the one routing rule. A batch that mixes both kinds is
split, each part runs through its expert, and the outputs are put back in the original order.

Nothing here assigns to ``forward`` or to a class attribute: the duplicated modules are installed with
``nn.Module.set_submodule`` as :class:`ExpertSwitch` wrappers (the way peft installs its own layers), and
the LoRA is toggled with diffusers' public ``enable_adapters`` / ``disable_adapters``.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
from peft import LoraConfig
from peft.tuners.lora import LoraLayer
from torch import Tensor, nn

from dcm.config import DetailExpertConfig
from dcm.sampling import ExpertRouter
from dcm.schedule import SigmaGrid, is_detail

SEMANTIC, DETAIL = "semantic", "detail"


class ExpertSwitch(nn.Module):
    """Holds a module of the semantic expert and the detail expert's trainable copy; calls the active one.

    We do not use peft's ``modules_to_save`` for this: it matches module names by suffix (``proj_out`` would also
    wrap every HunyuanVideo single-stream block's ``proj_out``) and it flips ``requires_grad`` when toggled.
    """

    def __init__(self, semantic: nn.Module, detail: nn.Module) -> None:
        super().__init__()
        self.semantic = semantic
        self.detail = detail
        self.use_detail = False

    def forward(self, *args, **kwargs):
        return (self.detail if self.use_detail else self.semantic)(*args, **kwargs)


class DualExpertTransformer(ExpertRouter):
    """A diffusers video transformer with a semantic and a detail expert, routed per sample by sigma.

    Args:
        transformer: a diffusers ``WanTransformer3DModel`` or ``HunyuanVideoTransformer3DModel`` (the semantic
            expert). It is modified in place: LoRA layers and switches are injected.
        grid: the sigma grid whose boundary decides the routing.
        detail_config: LoRA and duplicated-module settings.
    """

    def __init__(self, transformer: nn.Module, grid: SigmaGrid, detail_config: DetailExpertConfig) -> None:
        super().__init__()
        self.transformer = transformer
        self.grid = grid
        self.detail_config = detail_config
        self._check_modules(transformer, detail_config)
        transformer.add_adapter(
            LoraConfig(
                r=detail_config.lora_rank,
                lora_alpha=detail_config.lora_alpha,
                init_lora_weights=True,  # B = 0: the detail expert starts equal to the semantic expert
                target_modules=list(detail_config.lora_target_modules),
            ),
            adapter_name=detail_config.adapter_name,
        )
        for path in detail_config.duplicated_modules:
            original = transformer.get_submodule(path)
            transformer.set_submodule(path, ExpertSwitch(original, copy.deepcopy(original)))
        self._active = DETAIL
        self._lora_requires_grad = {name: p.requires_grad for name, p in self.lora_parameters()}
        self._set_expert(SEMANTIC)

    @staticmethod
    def _check_modules(transformer: nn.Module, detail_config: DetailExpertConfig) -> None:
        names = dict(transformer.named_modules())
        missing = [p for p in detail_config.duplicated_modules if p not in names]
        if missing:
            raise ValueError(
                f"duplicated_modules {missing} are not modules of {type(transformer).__name__}; "
                f"top-level modules are {[n for n, _ in transformer.named_children()]}"
            )
        if not any(n.endswith(tuple(detail_config.lora_target_modules)) for n in names):
            raise ValueError(
                f"lora_target_modules {list(detail_config.lora_target_modules)} match no module of "
                f"{type(transformer).__name__}"
            )

    # -- parameters -------------------------------------------------------------------------------------------

    def switches(self) -> Iterator[tuple[str, ExpertSwitch]]:
        for path in self.detail_config.duplicated_modules:
            yield path, self.transformer.get_submodule(path)

    def lora_parameters(self) -> Iterator[tuple[str, nn.Parameter]]:
        for name, param in self.transformer.named_parameters():
            if ".lora_" in name:
                yield name, param

    def detail_parameters(self) -> Iterator[tuple[str, nn.Parameter]]:
        """The detail expert's own parameters: LoRA A/B and the duplicated modules' copies."""
        yield from self.lora_parameters()
        for path, switch in self.switches():
            for name, param in switch.detail.named_parameters():
                yield f"{path}.detail.{name}", param

    def set_trainable(self, expert: str) -> None:
        """Freeze everything except ``expert``'s parameters (``semantic`` = full fine-tune of the backbone)."""
        if expert not in (SEMANTIC, DETAIL):
            raise ValueError(f"expert must be {SEMANTIC!r} or {DETAIL!r}, got {expert!r}")
        detail_ids = {id(p) for _, p in self.detail_parameters()}
        for param in self.transformer.parameters():
            param.requires_grad_((id(param) in detail_ids) == (expert == DETAIL))
        self._lora_requires_grad = {name: p.requires_grad for name, p in self.lora_parameters()}

    @property
    def dtype(self) -> torch.dtype:
        """The backbone's compute dtype (diffusers' ``dtype``: its float32-kept modules aside)."""
        return self.transformer.dtype

    # -- routing ----------------------------------------------------------------------------------------------

    @property
    def active_expert(self) -> str:
        """The expert the wrapped transformer currently is (``semantic`` outside a call)."""
        return self._active

    def _set_expert(self, expert: str) -> None:
        if expert == self._active:
            return
        use_detail = expert == DETAIL
        if use_detail:
            self.transformer.enable_adapters()
        else:
            self.transformer.disable_adapters()
        # peft's toggles also flip requires_grad on the LoRA weights; keep what set_trainable decided.
        for name, param in self.lora_parameters():
            param.requires_grad_(self._lora_requires_grad[name])
        for _, switch in self.switches():
            switch.use_detail = use_detail
        self._active = expert

    @contextmanager
    def expert(self, expert: str) -> Iterator[nn.Module]:
        """Context in which the wrapped transformer *is* the given expert (for hooks or direct calls)."""
        previous = self._active
        self._set_expert(expert)
        try:
            yield self.transformer
        finally:
            self._set_expert(previous)

    def forward(self, hidden_states: Tensor, timestep: Tensor, *, sigma: Tensor, **kwargs) -> tuple[Tensor]:
        """Runs each sample through the expert its noise level selects.

        Args:
            hidden_states: (B, C, F, H, W) noisy latents.
            timestep: (B,) the transformer's timestep for ``sigma`` (from :class:`dcm.sampling.TransformerDenoiser`).
            sigma: (B,) the schedule's noise levels, float32 or float64: they decide the expert.
            **kwargs: the transformer's other inputs; tensors whose first axis is B are split with the batch.
        Returns:
            ``(sample,)`` with sample (B, C_out, F, H, W), like a diffusers transformer with ``return_dict=False``.
        """
        kwargs.pop("return_dict", None)

        def call(expert: str, x: Tensor, t: Tensor, kw: dict) -> Tensor:
            with self.expert(expert) as model:
                return model(hidden_states=x, timestep=t, return_dict=False, **kw)[0]

        return (route_per_sample(call, self.grid, hidden_states, timestep, sigma, kwargs),)

    # -- state dicts ------------------------------------------------------------------------------------------

    def detail_state_dict(self) -> dict[str, Tensor]:
        """Only the detail expert's tensors (what a DCM folder stores beside the semantic transformer)."""
        return {name: param.detach().clone() for name, param in self.detail_parameters()}

    def load_detail_state_dict(self, state: dict[str, Tensor]) -> None:
        own = dict(self.detail_parameters())
        missing, unexpected = sorted(set(own) - set(state)), sorted(set(state) - set(own))
        if missing or unexpected:
            raise ValueError(f"detail expert weights do not match: missing {missing[:5]}, unexpected {unexpected[:5]}")
        with torch.no_grad():
            for name, param in own.items():
                if state[name].shape != param.shape:
                    raise ValueError(f"{name}: expected shape {tuple(param.shape)}, got {tuple(state[name].shape)}")
                param.copy_(state[name])

    def expert_state_dict(self, expert: str) -> dict[str, Tensor]:
        """A plain state dict of one expert, loadable by the stock diffusers class (no copy of the model is made).

        For the detail expert the LoRA delta (peft's ``get_delta_weight``) is added to each projection weight and
        the duplicated modules take the place of the originals.
        """
        if expert not in (SEMANTIC, DETAIL):
            raise ValueError(f"expert must be {SEMANTIC!r} or {DETAIL!r}, got {expert!r}")
        deltas = {}
        if expert == DETAIL:
            for name, module in self.transformer.named_modules():
                if isinstance(module, LoraLayer):
                    deltas[f"{name}.base_layer.weight"] = module.get_delta_weight(self.detail_config.adapter_name)
        other = DETAIL if expert == SEMANTIC else SEMANTIC
        switch_prefixes = {f"{path}.{expert}.": f"{path}." for path in self.detail_config.duplicated_modules}
        skip_prefixes = tuple(f"{path}.{other}." for path in self.detail_config.duplicated_modules)
        state = {}
        for name, tensor in self.transformer.state_dict().items():
            if ".lora_" in name or name.startswith(skip_prefixes):
                continue
            tensor = tensor.detach()
            if name in deltas:
                tensor = tensor + deltas[name].to(tensor.dtype)
            for prefix, plain in switch_prefixes.items():
                if name.startswith(prefix):
                    name = plain + name[len(prefix) :]
            state[name.replace(".base_layer.", ".")] = tensor.clone()
        return state


class TwoTransformerRouter(ExpertRouter):
    """Two plain transformers routed per sample by sigma, e.g. a loaded Wan2.2-style export.

    :func:`dcm.schedule.is_detail` picks ``detail`` or ``semantic``, the same rule as :class:`DualExpertTransformer`,
    so an export loads back into the same sampler.
    """

    def __init__(self, semantic: nn.Module, detail: nn.Module, grid: SigmaGrid) -> None:
        super().__init__()
        self.semantic = semantic
        self.detail = detail
        self.grid = grid

    @property
    def dtype(self) -> torch.dtype:
        return self.semantic.dtype

    def forward(self, hidden_states: Tensor, timestep: Tensor, *, sigma: Tensor, **kwargs) -> tuple[Tensor]:
        """Same contract as :meth:`DualExpertTransformer.forward`."""
        kwargs.pop("return_dict", None)

        def call(expert: str, x: Tensor, t: Tensor, kw: dict) -> Tensor:
            model = self.detail if expert == DETAIL else self.semantic
            return model(hidden_states=x, timestep=t, return_dict=False, **kw)[0]

        return (route_per_sample(call, self.grid, hidden_states, timestep, sigma, kwargs),)


ExpertCall = Callable[[str, Tensor, Tensor, dict], Tensor]


def route_per_sample(
    call: ExpertCall, grid: SigmaGrid, hidden_states: Tensor, timestep: Tensor, sigma: Tensor, kwargs: dict
) -> Tensor:
    """Splits a batch by expert (:func:`dcm.schedule.is_detail` on ``sigma``), runs ``call(expert, x, t, kwargs)`` on
    each part and restores the order.

    Args:
        hidden_states: (B, C, F, H, W); timestep: (B,); sigma: (B,) float32 or float64.
    Returns:
        (B, C_out, F, H, W).
    """
    batch = hidden_states.shape[0]
    for name, value in (("timestep", timestep), ("sigma", sigma)):
        if value.ndim != 1 or value.shape[0] != batch:
            raise ValueError(f"{name} must have shape ({batch},), got {tuple(value.shape)}")
    detail = is_detail(sigma, grid)
    if detail.all() or not detail.any():
        return call(DETAIL if bool(detail[0]) else SEMANTIC, hidden_states, timestep, kwargs)
    outputs, order = [], []
    for expert, mask in ((SEMANTIC, ~detail), (DETAIL, detail)):
        index = mask.nonzero().squeeze(1)
        sub = {k: _take(v, index, batch) for k, v in kwargs.items()}
        outputs.append(call(expert, hidden_states[index], timestep[index], sub))
        order.append(index)
    inverse = torch.argsort(torch.cat(order))
    return torch.cat(outputs)[inverse]


def _take(value, index: Tensor, batch: int):
    """Index the batch axis of tensors that have one; pass everything else through."""
    if isinstance(value, Tensor) and value.ndim > 0 and value.shape[0] == batch:
        return value[index]
    return value


@contextmanager
def record_experts(model: nn.Module) -> Iterator[list[str]]:
    """Records the expert of every transformer call made inside the context, in order (one entry per call: a step
    whose batch mixes both experts makes two). For watching routing happen: tests and ``bench/gpu_check.py``.

    Args:
        model: a :class:`DualExpertTransformer` or :class:`TwoTransformerRouter`.
    Yields:
        The list the calls are appended to (``"semantic"`` / ``"detail"``).
    """
    calls: list[str] = []
    if isinstance(model, DualExpertTransformer):
        hooks = [model.transformer.register_forward_pre_hook(lambda module, args: calls.append(model.active_expert))]
    elif isinstance(model, TwoTransformerRouter):
        hooks = [
            getattr(model, expert).register_forward_pre_hook(lambda module, args, expert=expert: calls.append(expert))
            for expert in (SEMANTIC, DETAIL)
        ]
    else:
        raise TypeError(f"model must be a DualExpertTransformer or a TwoTransformerRouter, got {type(model).__name__}")
    try:
        yield calls
    finally:
        for hook in hooks:
            hook.remove()
