"""The train steps as the Ray loop calls them, in one process (no Ray): activation checkpointing of student and
teacher changes no number, every trainable parameter trains and nothing else does.

The regression this pins: with checkpointing on, Stage II's first backward raised ``CheckpointError: A different number
of tensors was saved during the original forward and recomputation`` (the expert switched back to the semantic one
when the forward returned, so the recompute ran without the LoRA)."""

from dataclasses import replace

import pytest
import torch

from dcm.data import LatentDataset, with_negative
from dcm.distill.build import build_stage
from dcm.distill.config import DETAIL_STAGE, SEMANTIC_STAGE
from dcm.distill.recipes import tiny, tiny_hunyuan
from dcm.distill.steps import TRAIN_STEPS
from dcm.experts import SEMANTIC
from dcm.io.model_folder import load_pipeline
from dcm_demo.synthetic import write_synthetic_dataset

FAMILIES = {"wan": (tiny, "tiny-wan"), "hunyuan": (tiny_hunyuan, "tiny-hunyuan")}
CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def datasets(tmp_path_factory):
    paths = {}
    for family, (_, teacher) in FAMILIES.items():
        paths[family] = str(tmp_path_factory.mktemp(family) / "data")
        write_synthetic_dataset(load_pipeline(teacher), paths[family], num_samples=2, num_frames=9, height=32,
                                width=32)  # fmt: skip
    return paths


def fixed_batch(path: str) -> dict:
    data = LatentDataset(path)
    return with_negative(torch.utils.data.default_collate([data[0], data[1]]), data.negative)


def snapshot(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


@pytest.mark.slow
@pytest.mark.parametrize("stage", [SEMANTIC_STAGE, DETAIL_STAGE])
@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_checkpointed_step_equals_the_plain_one_and_trains_only_what_it_should(datasets, family, stage, tmp_path):
    recipe, _ = FAMILIES[family]
    base = replace(recipe(data=datasets[family], output=str(tmp_path / "out")), stages=(stage,))
    assert base.activation_checkpointing  # the tiny recipes run the real recipes' setting
    batch = fixed_batch(datasets[family])
    runs = {}
    for checkpointing in (True, False):
        config = replace(base, activation_checkpointing=checkpointing)
        torch.manual_seed(0)
        models, optimizers, _ = build_stage(config, stage, CPU)
        teacher_before = snapshot(models.teacher)
        student_before = {n: p.detach().clone() for n, p in models.student.named_parameters()}
        semantic_before = models.student.expert_state_dict(SEMANTIC) if stage == DETAIL_STAGE else None
        # Two steps: the LoRA's B starts at 0, so its A gets a zero gradient in the first one.
        for _ in range(2):
            metrics = TRAIN_STEPS[stage](models, optimizers, batch, torch.Generator().manual_seed(1), config=config)
        trainable = {n: p for n, p in models.student.named_parameters() if p.requires_grad}
        # every trainable parameter got a finite, non-zero gradient and moved; nothing frozen moved
        no_grad = [n for n, p in trainable.items() if p.grad is None or not p.grad.abs().sum() > 0]
        assert not no_grad, f"{len(no_grad)} of {len(trainable)} trainable tensors got no gradient: {no_grad[:4]}"
        assert all(torch.isfinite(p.grad).all() for p in trainable.values())
        unchanged = [n for n, p in trainable.items() if torch.equal(p.detach(), student_before[n])]
        assert not unchanged, unchanged[:4]
        for name, tensor in models.teacher.state_dict().items():
            assert torch.equal(tensor, teacher_before[name]), f"teacher {name} changed"
        if stage == DETAIL_STAGE:
            assert any(".lora_B." in n for n in trainable) and any(".detail." in n for n in trainable)
            for name, tensor in models.student.expert_state_dict(SEMANTIC).items():
                assert torch.equal(tensor, semantic_before[name]), f"semantic expert {name} changed"
            assert metrics["disc_grad_norm"] > 0
        runs[checkpointing] = (metrics, {n: p.detach().clone() for n, p in trainable.items()})
    (ckpt_metrics, ckpt_params), (plain_metrics, plain_params) = runs[True], runs[False]
    assert ckpt_metrics == pytest.approx(plain_metrics, rel=1e-4, abs=1e-7)
    for name in plain_params:
        torch.testing.assert_close(ckpt_params[name], plain_params[name], rtol=1e-4, atol=1e-6)
