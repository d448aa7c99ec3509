"""The batch job end to end on the session's local Ray: bad rows with their row numbers, escaping ids, provenance,
re-runs, readable files, s3:// in and out, a killed actor and a killed driver."""

import json
import os
import signal
import stat
import subprocess
import sys
import time
from dataclasses import replace

import boto3
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from dcm.cluster.batch import BatchConfig, GenerateAndWrite, dry_run, run_batch
from dcm.io.storage import Store
from dcm.io.video import decode_mp4, read_mp4
from dcm.manifest import JobDefaults

pytestmark = [pytest.mark.ray, pytest.mark.slow]

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MODEL = "tiny-wan"
SMALL = JobDefaults(seed=0, num_frames=9, height=32, width=32, num_inference_steps=2)
GOOD = [
    {"id": "red", "prompt": "a red circle moving left"},
    {"id": "blue", "prompt": "a blue square moving up", "num_frames": 17, "height": 64, "width": 64},
    {"id": "green", "prompt": "a green circle", "seed": 5},
]
BAD = [  # (row, the field its error names)
    ({"id": "empty", "prompt": ""}, "prompt"),
    ({"id": "frames", "prompt": "p", "num_frames": 10}, "num_frames"),
    ({"id": "size", "prompt": "p", "height": 36}, "height"),
    ({"id": "seed", "prompt": "p", "seed": -3}, "seed"),
    ({"id": "steps", "prompt": "p", "num_inference_steps": 50}, "num_inference_steps"),
    ({"id": "large", "prompt": "p", "width": 1024}, "width"),  # beyond tiny-wan's positional table (512)
]
ESCAPING = [{"id": "../escape", "prompt": "p1"}, {"id": "/abs/path", "prompt": "p2"}, {"id": "a/b", "prompt": "p3"}]
INT_COLUMNS = ("seed", "num_frames", "height", "width", "num_inference_steps")
# Files a web server or a team share must be able to read: others may read (0644 under the usual umask 022).
OTHERS_READ = stat.S_IROTH


def write_manifest(path, rows):
    frame = pd.DataFrame(rows)
    for column in INT_COLUMNS:
        if column in frame:
            frame[column] = frame[column].astype("Int64")
    pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), path)
    return str(path)


def config(manifest, out, **kwargs):
    return BatchConfig(manifest=str(manifest), output=str(out), model=MODEL, defaults=SMALL, **kwargs)


def test_run_records_provenance_readable_files_and_rerun(ray_cluster, tmp_path):
    rows = GOOD + [r for r, _ in BAD] + ESCAPING
    manifest = write_manifest(tmp_path / "m.parquet", rows)
    out = tmp_path / "out"
    summary = run_batch(config(manifest, out), progress=False)
    assert (summary.count("ok"), summary.count("error"), summary.count("skipped")) == (6, 6, 0)

    records = summary.records().set_index("id")
    assert sorted(records["row"]) == list(range(len(rows)))  # every record names its manifest row
    for row, field in BAD:
        r = records.loc[row["id"]]
        assert r["status"] == "error" and r["error_field"] == field and r["row"] == rows.index(row), r.to_dict()
    assert "got 10" in records.loc["frames", "error"] and "height must be a multiple of 16, got 36" in \
        records.loc["size", "error"]  # fmt: skip

    # Every ok row: an MP4 of the asked shape inside the output, its sidecar naming the model, readable by others.
    view = pq.read_table(out / "results.parquet").to_pandas().set_index("id")
    for row in GOOD + ESCAPING:
        r = view.loc[row["id"]]
        assert r["status"] == "ok" and r["model"] == MODEL and r["model_version"].startswith("dcm-")
        assert os.path.dirname(r["uri"]) == str(out.resolve()), r["uri"]
        frames, size = row.get("num_frames", 9), row.get("height", 32)
        assert read_mp4(r["uri"]).frames.shape == (frames, size, size, 3) and r["bytes"] == os.path.getsize(r["uri"])
        sidecar = json.loads(open(r["uri"].removesuffix(".mp4") + ".json").read())
        assert (sidecar["model"], sidecar["model_version"], sidecar["run_id"]) == (MODEL, r["model_version"],
                                                                                   summary.run_id)  # fmt: skip
    assert not (tmp_path / "escape.mp4").exists() and not os.path.exists("/abs/path.mp4")
    written = [p for p in out.rglob("*") if p.is_file()]
    assert {p.suffix for p in written} == {".mp4", ".json", ".parquet", ".html"}
    assert all(p.stat().st_mode & OTHERS_READ for p in written), [oct(p.stat().st_mode) for p in written]

    # A re-run: nothing generated, every video untouched, skipped rows carry the first run's record of the video,
    # and both runs' records are kept.
    mtimes = {p.name: p.stat().st_mtime_ns for p in out.glob("*.mp4")}
    start = time.perf_counter()
    again = run_batch(config(manifest, out), progress=False)
    rerun_seconds = time.perf_counter() - start
    assert (again.count("ok"), again.count("error"), again.count("skipped")) == (0, 6, 6)
    assert again.num_generated == 0 and rerun_seconds < 10, rerun_seconds
    assert {p.name: p.stat().st_mtime_ns for p in out.glob("*.mp4")} == mtimes
    skipped = again.records().set_index("id").loc["blue"]
    assert skipped["status"] == "skipped" and skipped["run_id"] == summary.run_id  # the run that made it
    assert skipped["seconds"] == view.loc["blue", "seconds"] and skipped["uri"] == view.loc["blue", "uri"]
    assert sorted(os.listdir(out / "results")) == sorted([summary.run_id, again.run_id])
    view_again = pq.read_table(out / "results.parquet").to_pandas().set_index("id")
    assert view_again.loc["blue", "status"] == "ok" and view_again.loc["blue", "run_id"] == summary.run_id


def test_dry_run_finds_exactly_what_the_run_finds(ray_cluster, tmp_path):
    """Issue 21, item 5: the dry run applies the actors' checks (geometry, the model's table, duplicates)."""
    rows = [{"prompt": "a red circle"}, {"prompt": "a red circle"}, {"prompt": "p", "num_frames": 10},
            {"prompt": "p", "height": 1024}, {"prompt": "a blue square", "seed": 3}]  # fmt: skip
    manifest = write_manifest(tmp_path / "noid.parquet", rows)  # no id column: ids derive from the content
    report = dry_run(config(manifest, tmp_path / "out"))
    assert report.num_invalid == 4 and report.plan.num_todo == 1
    assert not (tmp_path / "out" / "results").exists()  # a dry run writes no record
    summary = run_batch(config(manifest, tmp_path / "out"), progress=False)
    assert summary.count("error") == report.num_invalid and summary.count("ok") == 1
    errors = summary.records().query("status == 'error'").set_index("row")
    assert sorted(errors.index) == [0, 1, 2, 3]
    assert list(errors.loc[[0, 1], "error_field"]) == ["id", "id"] and errors.loc[2, "error_field"] == "num_frames"
    assert errors["id"].notna().all()  # derived ids, so each error can be traced to its row and its file


def test_another_model_is_refused_unless_overwrite(ray_cluster, tmp_path):
    manifest = write_manifest(tmp_path / "m.parquet", GOOD[:1])
    out = tmp_path / "out"
    first = run_batch(config(manifest, out), progress=False)
    other = BatchConfig(manifest=manifest, output=str(out), model="demo")
    with pytest.raises(ValueError, match=r"made by model 'tiny-wan' \(dcm-.*this run uses model 'demo'") as refused:
        run_batch(other, progress=False)
    assert "--overwrite" in str(refused.value) and "\n" not in str(refused.value)
    assert sorted(os.listdir(out / "results")) == [first.run_id]  # refused before anything was written

    replaced = run_batch(replace(other, overwrite=True), progress=False)
    assert replaced.count("ok") == 1
    view = pq.read_table(out / "results.parquet").to_pandas().set_index("id")
    sidecar = json.loads((out / "red.json").read_text())
    assert view.loc["red", "model"] == sidecar["model"] == "demo"
    assert view.loc["red", "run_id"] == replaced.run_id and read_mp4(out / "red.mp4").frames.shape[1] == 64


@pytest.mark.s3
def test_s3_manifest_and_output(ray_cluster, tmp_path, s3_bucket):
    local = write_manifest(tmp_path / "m.parquet", GOOD)
    Store(f"s3://{s3_bucket}/in").put_bytes("m.parquet", open(local, "rb").read())
    out = f"s3://{s3_bucket}/runs/r1"
    summary = run_batch(config(f"s3://{s3_bucket}/in/m.parquet", out, batch_size=2), progress=False)
    assert summary.count("ok") == 3
    keys = Store(out).list()
    videos = ["blue", "green", "red"]
    expected = [f"{v}.{ext}" for v in videos for ext in ("json", "mp4")] + ["index.html", "results.parquet"]
    assert sorted(k for k in keys if not k.startswith("results/")) == sorted(expected)
    assert [k.split("/")[1] for k in keys if k.startswith("results/")] == [summary.run_id]
    body = boto3.client("s3").get_object(Bucket=s3_bucket, Key="runs/r1/blue.mp4")["Body"].read()
    assert decode_mp4(body).frames.shape == (17, 64, 64, 3)
    results = pq.read_table(f"{out}/results.parquet").to_pandas()
    assert set(results["uri"]) == {f"{out}/{k}.mp4" for k in videos}


class CrashOnce(GenerateAndWrite):
    """Exits hard once, after its first batch's videos were written (a marker file makes it happen once)."""

    def __call__(self, batch):
        result = super().__call__(batch)
        try:
            fd = os.open(os.path.join(self.config.output, "..", "crashed"), os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            return result
        os.close(fd)
        os._exit(1)


def test_killed_actor_is_restarted_and_every_row_written_once(ray_cluster, tmp_path):
    from ray import cloudpickle

    cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the workers cannot import this test module
    rows = [{"id": f"r{i:02d}", "prompt": f"a red circle number {i}"} for i in range(8)]
    manifest = write_manifest(tmp_path / "m.parquet", rows)
    out = tmp_path / "out"
    summary = run_batch(config(manifest, out, batch_size=2), progress=False, udf=CrashOnce)
    assert (tmp_path / "crashed").exists()  # the actor really died mid-run
    records = summary.records()
    assert sorted(records["id"]) == [r["id"] for r in rows]  # each row recorded exactly once
    assert summary.count("ok") == 8
    assert sorted(p.name for p in out.glob("*.mp4")) == [f"{r['id']}.mp4" for r in rows]
    assert not list(out.glob(".*partial"))


def test_killed_driver_loses_nothing_that_was_written(ray_cluster, tmp_path):
    """The driver is killed mid-run: its streamed parts and every written video survive; a re-run finishes the
    rest, skips what exists (with the killed run's provenance) and folds the killed run into results.parquet."""
    rows = [{"id": f"v{i:02d}", "prompt": f"a blue square number {i}"} for i in range(24)]
    manifest = write_manifest(tmp_path / "m.parquet", rows)
    out = tmp_path / "out"
    address = ray_cluster.get_runtime_context().gcs_address
    command = [sys.executable, "jobs/batch_generate.py", "--manifest", manifest, "--output", str(out), "--model",
               MODEL, "--num-frames", "9", "--height", "32", "--width", "32", "--steps", "2", "--batch-size", "2",
               "--rows-per-block", "2", "--results-every", "0", "--address", address]  # fmt: skip
    driver = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and not list(out.glob("results/*/part-*.parquet")):
        time.sleep(0.2)
    driver.send_signal(signal.SIGKILL)
    driver.wait()
    killed_run = os.listdir(out / "results")
    assert len(killed_run) == 1 and not (out / "results.parquet").exists()
    made = {p.stem for p in out.glob("*.mp4")}
    assert made and all((out / f"{v}.json").exists() for v in made)

    again = run_batch(config(manifest, out, batch_size=2), progress=False)
    assert again.count("skipped") >= len(made) and again.count("ok") + again.count("skipped") == len(rows)
    skipped = again.records().query("status == 'skipped'")
    assert (skipped["model"] == MODEL).all() and skipped["seconds"].notna().all()
    assert set(skipped["run_id"]) == {killed_run[0]}  # made by the killed run, known from its records or sidecars
    view = pq.read_table(out / "results.parquet").to_pandas()
    assert len(view) == len(rows) and set(view["status"]) == {"ok"}
    assert killed_run[0] in set(view["run_id"]) and set(view["run_id"]) <= {killed_run[0], again.run_id}


class FailSecondBatch(GenerateAndWrite):
    """Its first call writes videos as usual; every later call raises (a broken GPU, not a row's content)."""

    def __call__(self, batch):
        self.calls = getattr(self, "calls", 0) + 1
        if self.calls > 1:
            raise RuntimeError("the device fell over")
        return super().__call__(batch)


def test_a_failed_run_keeps_what_it_made(ray_cluster, tmp_path):
    """The run fails in the middle: its records so far are flushed, and the next run regenerates nothing it made."""
    from ray import cloudpickle

    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    rows = [{"id": f"f{i}", "prompt": f"a green circle number {i}"} for i in range(6)]
    manifest = write_manifest(tmp_path / "m.parquet", rows)
    out = tmp_path / "out"
    failing = config(manifest, out, batch_size=2, rows_per_block=2, max_actor_restarts=0, part_seconds=3600)
    with pytest.raises(Exception, match="the device fell over"):
        run_batch(failing, progress=False, udf=FailSecondBatch)
    made = {p.name: p.stat().st_mtime_ns for p in out.glob("*.mp4")}
    assert len(made) >= 2 and all((out / f"{name[:-4]}.json").exists() for name in made)

    again = run_batch(config(manifest, out, batch_size=2), progress=False)
    assert again.count("skipped") == len(made) and again.count("ok") == len(rows) - len(made)
    assert {name: (out / name).stat().st_mtime_ns for name in made} == made  # nothing made was made again
    view = pq.read_table(out / "results.parquet").to_pandas()
    assert len(view) == len(rows) and set(view["status"]) == {"ok"}
