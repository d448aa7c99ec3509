"""Distillation on a real local Ray cluster: 2 workers with S3 checkpoints, kill + resubmit, the whole job."""

from dataclasses import replace

import boto3
import pytest
import torch
from diffusers import WanPipeline

from dcm.cluster.train import run_distillation
from dcm.distill.config import SEMANTIC_STAGE
from dcm.distill.recipes import tiny
from dcm.experts import SEMANTIC
from dcm.io.model_folder import load_pipeline
from dcm_demo.synthetic import write_synthetic_dataset

pytestmark = [pytest.mark.ray, pytest.mark.slow]


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("data") / "latents")
    write_synthetic_dataset(load_pipeline("tiny-wan"), path, num_samples=8, num_frames=9, height=32, width=32)
    return path


@pytest.mark.s3
def test_two_workers_checkpoint_to_s3_and_resume_after_a_kill(ray_cluster, tiny_data, s3_bucket):
    config = replace(
        tiny(data=tiny_data, output=f"s3://{s3_bucket}/out"),
        stages=(SEMANTIC_STAGE,), num_workers=2, batch_size=2, checkpoint_every=2, report_every=2,
        storage_path=f"s3://{s3_bucket}/runs", run_name="resume-test",
    )  # fmt: skip
    config = replace(config, semantic=replace(config.semantic, num_steps=4))
    with pytest.raises(Exception, match="fault injection"):
        run_distillation(replace(config, fault_fail_at_step=3))  # killed after the step-2 checkpoint
    keys = [o["Key"] for o in boto3.client("s3").list_objects_v2(Bucket=s3_bucket, Prefix="runs/")["Contents"]]
    assert any(k.endswith("optimizer.pt") for k in keys) and any(k.endswith("trainable.safetensors") for k in keys)
    results = run_distillation(config)  # the same command again
    metrics = results[SEMANTIC_STAGE]
    assert metrics["resumed_from"] == 2 and metrics["step"] == 4
    out = boto3.client("s3").list_objects_v2(Bucket=s3_bucket, Prefix="out/semantic/")["Contents"]
    assert any(o["Key"].endswith("dcm_config.json") for o in out)


def test_whole_job_two_stages_to_a_loadable_model(ray_cluster, tiny_data, tmp_path, capsys):
    from jobs.distill import main

    out = tmp_path / "dcm"
    code = main(["--recipe", "tiny", "--data", tiny_data, "--output", str(out), "--semantic-steps", "3",
                 "--detail-steps", "3", "--checkpoint-every", "3", "--storage-path", str(tmp_path / "runs"),
                 "--batch-size", "2"])  # fmt: skip
    assert code == 0
    assert f"model: {out}/final" in capsys.readouterr().out
    semantic = load_pipeline(str(out / "semantic"))
    final = load_pipeline(str(out / "final"))
    assert final.is_dual_expert and not semantic.is_dual_expert
    # Stage II kept the semantic expert bit-identical to Stage I's output.
    stage_one = semantic.transformer.state_dict()
    for name, tensor in final.transformer.expert_state_dict(SEMANTIC).items():
        assert torch.equal(tensor, stage_one[name]), name
    frames = final.generate(["a red circle"], seeds=[0])
    assert frames.shape[0] == 1
    stock = WanPipeline.from_pretrained(out / "export")
    assert stock.transformer_2 is not None


def test_bad_input_fails_before_any_worker(ray_cluster, tiny_data, tmp_path, caplog):
    from jobs.distill import main

    assert main(["--data", str(tmp_path / "missing"), "--output", str(tmp_path / "o")]) == 2
    assert "is not a DCM training dataset" in caplog.text
    bad_stride = replace(tiny(data=tiny_data, output=str(tmp_path / "o")), stages=("detail",))
    bad_stride = replace(bad_stride, detail=replace(bad_stride.detail, feature_stride=3))
    with pytest.raises(ValueError, match="stride must divide the teacher depth"):
        run_distillation(bad_stride)
    assert main(["--data", tiny_data, "--output", str(tmp_path / "o"), "--boundary-index", "60"]) == 2
    assert "boundary_index must lie in [0, 49] for a grid of 50 points, got 60" in caplog.text
