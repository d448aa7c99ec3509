"""The batch job end to end on a local Ray cluster: local and s3:// output, bad rows, re-runs, a killed actor."""

import os

import boto3
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from dcm.cluster.batch import BatchConfig, run_batch
from dcm.io.storage import Store
from dcm.io.video import decode_mp4, read_mp4
from dcm.manifest import JobDefaults
from dcm.presets import DEFAULT_MODEL

pytestmark = [pytest.mark.ray, pytest.mark.slow]

SMALL = JobDefaults(seed=0, num_frames=9, height=32, width=32)
GOOD = [
    {"id": "red", "prompt": "a red circle moving left"},
    {"id": "blue", "prompt": "a blue square moving up", "num_frames": 17, "height": 64, "width": 64},
    {"id": "green", "prompt": "a green circle", "seed": 5},
]
BAD = [
    {"id": "empty", "prompt": ""},
    {"id": "frames", "prompt": "p", "num_frames": 10},
    {"id": "size", "prompt": "p", "height": 36},
    {"id": "seed", "prompt": "p", "seed": -3},
    {"id": "steps", "prompt": "p", "num_inference_steps": 50},
]
ESCAPING = [{"id": "../escape", "prompt": "p1"}, {"id": "/abs/path", "prompt": "p2"}, {"id": "a/b", "prompt": "p3"}]


def write_manifest(path, rows):
    frame = pd.DataFrame(rows)
    for column in ("seed", "num_frames", "height", "width", "num_inference_steps"):
        if column in frame:
            frame[column] = frame[column].astype("Int64")
    pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), path)
    return str(path)


def test_local_run_bad_rows_escaping_ids_and_rerun(ray_cluster, tmp_path):
    manifest = write_manifest(tmp_path / "m.parquet", GOOD + BAD + ESCAPING)
    out = tmp_path / "out"
    config = BatchConfig(manifest=manifest, output=str(out), defaults=SMALL, batch_size=4, concurrency=1)
    summary = run_batch(config, progress=False)
    results = pq.read_table(out / "results.parquet").to_pandas().set_index("id")
    assert len(results) == len(GOOD + BAD + ESCAPING) == len(summary.results)
    assert summary.count("ok") == 6 and summary.count("error") == 5

    errors = results.loc[[r["id"] for r in BAD], "error"].to_dict()
    assert "prompt must be a non-empty string" in errors["empty"]
    assert "num_frames must be 4*n + 1" in errors["frames"] and "got 10" in errors["frames"]
    assert "height must be a multiple of 8, got 36" in errors["size"]
    assert "seed must be an integer" in errors["seed"] and "-3" in errors["seed"]
    assert "num_inference_steps must be an integer in [1, 8], got 50" in errors["steps"]

    # Every ok row: an MP4 of the asked shape at its URI, inside the output folder.
    for row in GOOD + ESCAPING:
        r = results.loc[row["id"]]
        assert r["status"] == "ok" and r["model"] == DEFAULT_MODEL and r["model_version"].startswith("dcm-")
        assert os.path.dirname(r["uri"]) == str(out.resolve()), r["uri"]
        video = read_mp4(r["uri"])
        frames, size = row.get("num_frames", 9), row.get("height", 32)
        assert video.frames.shape == (frames, size, size, 3) and r["bytes"] == os.path.getsize(r["uri"])
    files = sorted(p.name for p in out.iterdir())
    assert len([f for f in files if f.endswith(".mp4")]) == 6 and "index.html" in files
    assert not (tmp_path / "escape.mp4").exists() and not os.path.exists("/abs/path.mp4")

    # A re-run regenerates nothing and leaves every video untouched.
    mtimes = {p.name: p.stat().st_mtime_ns for p in out.glob("*.mp4")}
    again = run_batch(config, progress=False)
    assert again.count("skipped") == 6 and again.count("ok") == 0 and again.count("error") == 5
    assert {p.name: p.stat().st_mtime_ns for p in out.glob("*.mp4")} == mtimes


@pytest.mark.s3
def test_s3_manifest_and_output(ray_cluster, tmp_path, s3_bucket):
    local = write_manifest(tmp_path / "m.parquet", GOOD)
    Store(f"s3://{s3_bucket}/in").put_bytes("m.parquet", open(local, "rb").read())
    config = BatchConfig(
        manifest=f"s3://{s3_bucket}/in/m.parquet", output=f"s3://{s3_bucket}/runs/r1", defaults=SMALL, batch_size=2
    )
    summary = run_batch(config, progress=False)
    assert summary.count("ok") == 3
    keys = Store(f"s3://{s3_bucket}/runs/r1").list()
    assert keys == sorted(["blue.mp4", "green.mp4", "red.mp4", "results.parquet", "index.html"])
    body = boto3.client("s3").get_object(Bucket=s3_bucket, Key="runs/r1/blue.mp4")["Body"].read()
    assert decode_mp4(body).frames.shape == (17, 64, 64, 3)
    results = pq.read_table(f"s3://{s3_bucket}/runs/r1/results.parquet").to_pandas()
    assert set(results["uri"]) == {f"s3://{s3_bucket}/runs/r1/{k}.mp4" for k in ("red", "blue", "green")}


def test_killed_actor_is_restarted_and_every_row_written_once(ray_cluster, tmp_path):
    rows = [{"id": f"r{i:02d}", "prompt": f"a red circle number {i}"} for i in range(8)]
    manifest = write_manifest(tmp_path / "m.parquet", rows)
    out = tmp_path / "out"
    marker = tmp_path / "marker"
    marker.mkdir()
    config = BatchConfig(
        manifest=manifest, output=str(out), defaults=SMALL, batch_size=2,
        fault_crash_after_rows=4, fault_marker_dir=str(marker),
    )  # fmt: skip
    summary = run_batch(config, progress=False)
    assert (marker / "crashed").exists()  # the actor really died mid-run
    assert sorted(summary.results["id"]) == [r["id"] for r in rows]  # each row reported exactly once
    assert summary.count("ok") + summary.count("skipped") == 8 and summary.count("error") == 0
    assert sorted(p.name for p in out.glob("*.mp4")) == [f"{r['id']}.mp4" for r in rows]
    assert not list(out.glob("*.partial"))


def test_unreadable_manifest_fails_fast(ray_cluster, tmp_path):
    with pytest.raises(ValueError, match="cannot be read as Parquet"):
        run_batch(BatchConfig(manifest=str(tmp_path / "missing.parquet"), output=str(tmp_path / "o")))
    bad = write_manifest(tmp_path / "bad.parquet", [{"text": "no prompt column"}])
    with pytest.raises(ValueError, match="missing required column"):
        run_batch(BatchConfig(manifest=bad, output=str(tmp_path / "o")))


def test_cli_dry_run_and_run(ray_cluster, tmp_path, capsys):
    from jobs.batch_generate import main

    manifest = write_manifest(tmp_path / "prompts.parquet", GOOD[:1] + BAD[:1])
    assert main(["--manifest", manifest, "--dry-run"]) == 0
    printed = capsys.readouterr().out
    assert "2 rows, 1 valid, 1 invalid" in printed and "prompt must be a non-empty string" in printed
    out = tmp_path / "cli-out"
    code = main(["--manifest", manifest, "--output", str(out), "--num-frames", "9", "--height", "32", "--width", "32"])
    assert code == 0
    assert "2 rows: 1 ok, 1 error, 0 skipped" in capsys.readouterr().out
    assert read_mp4(out / "red.mp4").frames.shape == (9, 32, 32, 3)
    assert main(["--manifest", str(tmp_path / "nope.parquet"), "--output", str(out)]) == 2
