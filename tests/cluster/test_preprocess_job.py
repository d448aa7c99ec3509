"""Real-video preprocessing on a local Ray cluster: MP4s made here -> shards the distillation job trains on."""

import json
from dataclasses import replace

import numpy as np
import pyarrow.parquet as pq
import pytest

from dcm.cluster.preprocess import PreprocessConfig, run_preprocess
from dcm.data import LatentDataset
from dcm.io.storage import Store
from dcm.io.video import write_mp4
from dcm.preprocess import ClipConfig
from dcm_demo.synthetic import world_video

pytestmark = [pytest.mark.ray, pytest.mark.slow]

CLIP = ClipConfig(num_frames=9, height=32, width=32, fps=8)


def make_videos(folder):
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(4):  # good: 48 frames at 24 fps = 2 s, 4:3
        video = world_video(i, num_frames=48, height=48, width=64)[0]
        write_mp4(video, folder / f"good{i}.mp4", fps=24)
        rows.append({"path": f"good{i}.mp4", "caption": f"a square moving, clip {i}"})
    write_mp4(world_video(9, num_frames=6, height=48, width=64)[0], folder / "short.mp4", fps=24)
    rows.append({"path": "short.mp4", "caption": "too short"})
    write_mp4(world_video(8, num_frames=48, height=16, width=128)[0], folder / "wide.mp4", fps=24)
    rows.append({"path": "wide.mp4", "caption": "too wide"})
    (folder / "corrupt.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42 definitely not a video")
    rows.append({"path": "corrupt.mp4", "caption": "corrupt"})
    rows.append({"path": "missing.mp4", "caption": "missing"})
    (folder / "captions.json").write_text(json.dumps(rows))
    return rows


def test_videos_to_shards_rejects_and_resume(ray_cluster, tmp_path):
    make_videos(tmp_path / "videos")
    config = PreprocessConfig(videos=str(tmp_path / "videos"), captions=str(tmp_path / "videos" / "captions.json"),
                              model="tiny-wan", output=str(tmp_path / "latents"), clip=CLIP, shard_size=3)  # fmt: skip
    summary = run_preprocess(config, progress=False)
    assert summary["samples"] == 4 and summary["rejects"] == 4
    rejects = pq.read_table(tmp_path / "latents" / "rejects.parquet").to_pandas().set_index("path")
    assert rejects.loc["short.mp4", "reason"] == "too_short"
    assert rejects.loc["wide.mp4", "reason"] == "aspect"
    assert rejects.loc["corrupt.mp4", "reason"] == "unreadable"
    assert rejects.loc["missing.mp4", "reason"] == "missing"
    data = LatentDataset(str(tmp_path / "latents"))
    assert len(data) == 4 and data.tensors["latents"].shape == (4, 16, 3, 4, 4)
    assert len(data.meta["shards"]) == 2  # shard size 3
    assert np.isfinite(data.tensors["latents"].numpy()).all()
    again = run_preprocess(config, progress=False)
    assert again["skipped"] and again["samples"] == 4


@pytest.mark.s3
def test_s3_input_and_output_then_distillation_trains_on_it(ray_cluster, tmp_path, s3_bucket):
    from dcm.cluster.train import run_distillation
    from dcm.distill.recipes import tiny

    make_videos(tmp_path / "videos")
    Store(f"s3://{s3_bucket}/raw").upload_from(tmp_path / "videos")
    config = PreprocessConfig(videos=f"s3://{s3_bucket}/raw", captions=f"s3://{s3_bucket}/raw/captions.json",
                              model="tiny-wan", output=f"s3://{s3_bucket}/latents", clip=CLIP)  # fmt: skip
    assert run_preprocess(config, progress=False)["samples"] == 4
    distill = tiny(data=f"s3://{s3_bucket}/latents", output=str(tmp_path / "dcm"))
    distill = replace(distill, stages=("semantic",), semantic=replace(distill.semantic, num_steps=2),
                      storage_path=str(tmp_path / "runs"), batch_size=2)  # fmt: skip
    metrics = run_distillation(distill)["semantic"]
    assert metrics["step"] == 2 and np.isfinite(metrics["loss"])


def test_bad_caption_table(ray_cluster, tmp_path):
    (tmp_path / "c.csv").write_text("file,text\na.mp4,hello\n")
    config = PreprocessConfig(videos=str(tmp_path), captions=str(tmp_path / "c.csv"), model="tiny-wan",
                              output=str(tmp_path / "o"), clip=CLIP)  # fmt: skip
    with pytest.raises(ValueError, match=r"lacks column\(s\) \['path', 'caption'\]"):
        run_preprocess(config, progress=False)
