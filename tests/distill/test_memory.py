"""The memory plan against what can be measured on a CPU: parameter, gradient and optimizer bytes exactly, and the
activations autograd saves (``saved_tensors_hooks``, the step as the job runs it) within 15 %, with and without
activation checkpointing, for tiny Wan and HunyuanVideo in both stages (no Ray)."""

import weakref
from dataclasses import replace

import pytest
import torch

from dcm.data import DatasetWriter, LatentDataset, with_negative
from dcm.distill.build import build_stage
from dcm.distill.config import DETAIL_STAGE, FSDP, SEMANTIC_STAGE, TrainingVideo
from dcm.distill.memory import GiB, plan_memory, shard_elements
from dcm.distill.preflight import check_inputs, plan_run, run_architecture
from dcm.distill.recipes import hunyuanvideo, tiny, tiny_hunyuan, wan_2_1_1_3b
from dcm.distill.steps import TRAIN_STEPS
from dcm.io.model_folder import load_pipeline

ACTIVATION_TOLERANCE = 0.15
# Latents large enough that per-token terms dominate (Wan 5 x 8 x 8 = 320 tokens, HunyuanVideo 5 x 16 x 16 = 1280).
LATENTS = {"wan": (tiny, "tiny-wan", (16, 5, 16, 16)), "hunyuan": (tiny_hunyuan, "tiny-hunyuan", (4, 5, 16, 16))}
BATCH = 2


class _Holder:
    __slots__ = ("tensor", "__weakref__")

    def __init__(self, tensor: torch.Tensor) -> None:
        self.tensor = tensor


class SavedPeak:
    """Peak bytes of the tensors autograd holds for backward at the same time (storages counted once; parameters and
    buffers excluded). A saved tensor is live from its pack until autograd frees it after its backward."""

    def __init__(self, exclude: set[int]) -> None:
        self.exclude, self.live, self.total, self.peak = exclude, {}, 0, 0
        self.current: str | None = None
        self.per_block: dict[str, int] = {}

    def pack(self, tensor: torch.Tensor):
        storage = tensor.untyped_storage()
        ptr = storage.data_ptr()
        if ptr in self.exclude or storage.nbytes() == 0:
            return tensor
        holder = _Holder(tensor)
        if ptr in self.live:
            self.live[ptr][0] += 1
        else:
            self.live[ptr] = [1, storage.nbytes()]
            self.total += storage.nbytes()
            self.peak = max(self.peak, self.total)
            if self.current is not None:
                self.per_block[self.current] = self.per_block.get(self.current, 0) + storage.nbytes()
        weakref.finalize(holder, self._release, ptr)
        return holder

    def _release(self, ptr: int) -> None:
        entry = self.live[ptr]
        entry[0] -= 1
        if entry[0] == 0:
            self.total -= entry[1]
            del self.live[ptr]

    @staticmethod
    def unpack(holder):
        return holder.tensor if isinstance(holder, _Holder) else holder

    def watch_blocks(self, name: str, transformer: torch.nn.Module) -> dict[int, str]:
        """Attributes what each block saves to it (``per_block``); returns {id(block): key}."""
        blocks = [b for child in transformer.children() if isinstance(child, torch.nn.ModuleList) for b in child]
        keys = {}
        for i, block in enumerate(blocks):
            keys[id(block)] = f"{name}.{i}"
            block.register_forward_pre_hook(lambda *_, key=f"{name}.{i}": setattr(self, "current", key))
            block.register_forward_hook(lambda *_: setattr(self, "current", None))
        return keys


class RecordingCheckpoint:
    """diffusers' checkpointing function (``torch.utils.checkpoint``, non-reentrant) that records the block inputs it
    keeps for the recompute (what checkpointing saves instead of the block's activations) and, at each recompute in
    the backward pass, what is live then plus that block's full activations (measured without checkpointing)."""

    def __init__(self, peak: SavedPeak, block_bytes: dict[str, int], block_keys: dict[int, str]) -> None:
        self.peak, self.block_bytes, self.block_keys = peak, block_bytes, block_keys
        self.kept: dict[int, int] = {}
        self.ran: set[int] = set()
        self.recompute_peak = 0

    def __call__(self, module, *args):
        for arg in args:
            if isinstance(arg, torch.Tensor):
                self.kept[arg.untyped_storage().data_ptr()] = arg.untyped_storage().nbytes()
        return torch.utils.checkpoint.checkpoint(self._run, module, *args, use_reentrant=False)

    def _run(self, module, *args):
        if id(module) in self.ran:  # the second run of a block is its recompute in the backward pass
            live = self.peak.total + sum(self.kept.values()) + self.block_bytes[self.block_keys[id(module)]]
            self.recompute_peak = max(self.recompute_peak, live)
        self.ran.add(id(module))
        return module(*args)


@pytest.fixture(scope="module")
def datasets(tmp_path_factory):
    paths = {}
    for family, (_, teacher, shape) in LATENTS.items():
        pipe = load_pipeline(teacher)
        paths[family] = str(tmp_path_factory.mktemp(family) / "data")
        writer = DatasetWriter(paths[family], family=pipe.config.family, negative=pipe.encode_prompts([""]))
        captions = ["a red circle", "a blue square"]
        latents = torch.randn(BATCH, *shape, generator=torch.Generator().manual_seed(0))
        writer.add(latents, pipe.encode_prompts(captions), captions)
        writer.close()
    return paths


def measured_step(config, stage: str, data: str, *, checkpointing: bool, per_block: dict | None = None):
    """Builds the stage (one process), runs one train step under the hooks; returns (peak saved bytes, saved bytes
    per block, models, optimizers). With checkpointing (installed with the recording function) the peak is the larger
    of the forward's end (hooks' peak plus the kept inputs) and the recomputes' (``per_block`` gives the bytes a
    block holds while it is recomputed: those of a run without checkpointing)."""
    torch.manual_seed(0)
    models, optimizers, _ = build_stage(replace(config, activation_checkpointing=False), stage, torch.device("cpu"))
    transformers = {"student": getattr(models.student, "transformer", models.student),
                    "teacher": models.teacher.transformer}  # fmt: skip
    modules = [models.student, models.teacher] + ([models.discriminator] if models.discriminator else [])
    exclude = {t.untyped_storage().data_ptr() for m in modules for t in [*m.parameters(), *m.buffers()]}
    peak = SavedPeak(exclude)
    keys = {}
    for name, transformer in transformers.items():
        keys |= peak.watch_blocks(name, transformer)
    recorder = RecordingCheckpoint(peak, per_block or {}, keys)
    if checkpointing:
        for transformer in transformers.values():
            transformer.enable_gradient_checkpointing(gradient_checkpointing_func=recorder)
    source = LatentDataset(data)
    batch = with_negative(torch.utils.data.default_collate([source[i] for i in range(BATCH)]), source.negative)
    with torch.autograd.graph.saved_tensors_hooks(peak.pack, peak.unpack):
        TRAIN_STEPS[stage](models, optimizers, batch, torch.Generator().manual_seed(1), config=config)
    measured = peak.peak
    if checkpointing:
        measured = max(peak.peak + sum(recorder.kept.values()), recorder.recompute_peak)
    return measured, peak.per_block, models, optimizers


def tensor_bytes(tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


@pytest.mark.slow
@pytest.mark.parametrize("stage", [SEMANTIC_STAGE, DETAIL_STAGE])
@pytest.mark.parametrize("family", sorted(LATENTS))
def test_plan_matches_what_a_step_holds(datasets, family, stage, tmp_path):
    recipe, _, shape = LATENTS[family]
    config = replace(recipe(data=datasets[family], output=str(tmp_path)), stages=(stage,), batch_size=BATCH)
    inputs = check_inputs(config)
    arch = run_architecture(config, inputs)
    plan = plan_memory(config, arch, latent_shape=shape, text_len=inputs.text_len, device_type="cpu")
    stage_plan = plan.stages[0]

    full, per_block, models, optimizers = measured_step(config, stage, datasets[family], checkpointing=False)
    assert abs(stage_plan.activations_full / full - 1) < ACTIVATION_TOLERANCE, (stage_plan.activations_full, full)
    checkpointed, _, _, _ = measured_step(config, stage, datasets[family], checkpointing=True, per_block=per_block)
    assert checkpointed < full
    ratio = stage_plan.activations_checkpointed / checkpointed
    mib = 2**20  # a row of docs/distillation.md's table (shown with pytest -s)
    print(
        f"| {family} | {stage} | {full / mib:.2f} | {stage_plan.activations_full / mib:.2f} | "
        f"{stage_plan.activations_full / full:.2f} | {checkpointed / mib:.2f} | "
        f"{stage_plan.activations_checkpointed / mib:.2f} | {ratio:.2f} |"
    )
    assert abs(ratio - 1) < ACTIVATION_TOLERANCE, (stage_plan.activations_checkpointed, checkpointed)

    # Weights, gradients and optimizer states: exact.
    trained = [p for p in models.student.parameters() if p.requires_grad]
    states = [t for s in optimizers.generator.state.values() for t in s.values()]
    rows = stage_plan.rows
    assert rows["student weights"] == tensor_bytes(models.student.parameters())
    assert rows["gradients"] == tensor_bytes(p.grad for p in trained)
    assert rows["optimizer states"] == tensor_bytes(states)
    assert rows["teacher"] == tensor_bytes(models.teacher.parameters())
    if stage == DETAIL_STAGE:
        disc = list(models.discriminator.parameters())
        disc_states = [t for s in optimizers.discriminator.state.values() for t in s.values()]
        assert rows["discriminator"] == 2 * tensor_bytes(disc) + tensor_bytes(disc_states)


def test_fsdp_shards_are_counted_per_worker():
    shapes = ((10, 3), (7,), (1, 5), ())
    assert shard_elements(shapes, 1) == 30 + 7 + 5 + 1
    assert shard_elements(shapes, 4) == 3 * 3 + 2 + 1 * 5 + 1  # ceil(rows / N) rows each, padded like FSDP2


def test_real_recipes_plans():
    """The real recipes at their own video size: exact parameter arithmetic, and the fit verdicts the recipes' video
    sizes were chosen by (Wan on one 80 GB GPU; HunyuanVideo on 8 with FSDP at 45 frames of 720p, not 61)."""
    wan = wan_2_1_1_3b(data="/nowhere", output="/out")
    plan = plan_run(wan, check_inputs(wan, require_data=False))
    semantic, detail = plan.stages
    assert plan.tokens == 21 * 30 * 52  # 81 frames at 480x832
    assert semantic.rows["student weights"] == 4 * 1_418_996_800
    assert detail.rows["gradients"] == 4 * (94_371_840 + 25_672_768)  # LoRA + duplicated layers
    assert plan.fits and plan.activation_checkpointing is not False
    assert semantic.activations_full > 80 * GiB  # without checkpointing Wan2.1-1.3B at 81x480x832 cannot train
    hunyuan = hunyuanvideo(data="/nowhere", output="/out")
    assert plan_run(hunyuan, check_inputs(hunyuan, require_data=False)).fits
    longer = replace(hunyuan, video=TrainingVideo(num_frames=61, height=720, width=1280))
    assert not plan_run(longer, check_inputs(longer, require_data=False)).fits
    one_gpu = replace(hunyuan, num_workers=1, strategy=FSDP)
    assert (
        plan_run(one_gpu, check_inputs(one_gpu, require_data=False)).peak
        > 8 * plan_run(hunyuan, check_inputs(hunyuan, require_data=False)).stages[0].rows["student weights"]
    )
