"""The batch job's driver side without Ray: typed records, the output's view, block sizes, runs with nothing left to
generate (bad seeds, finished manifests) and how few S3 calls a re-run makes."""

import math
import stat
from collections import Counter

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import dcm.cluster.batch as batch
from dcm.cluster.batch import BatchConfig, rows_per_block, run_batch
from dcm.generation import model_limits_from_source
from dcm.io.storage import Store
from dcm.manifest import JobDefaults, output_key
from dcm.results import (
    RESULT_SCHEMA,
    PartWriter,
    current_view,
    model_version,
    provenance_key,
    read_sidecar,
    record,
    records_table,
    sidecar_bytes,
    write_view,
)

MODEL = "tiny-wan"
SMALL = JobDefaults(num_frames=9, height=32, width=32, num_inference_steps=2)


@pytest.fixture
def no_ray(monkeypatch):
    """Fails the test if the job tries to start or join Ray (these runs have nothing to generate)."""

    def forbidden(*args, **kwargs):
        raise AssertionError("the job started Ray although no row was left to generate")

    monkeypatch.setattr(batch, "ray_session", forbidden)


def test_records_hold_only_values_of_their_column_type():
    r = record(id="a", seed=1.5, num_frames=np.int64(9), height=32.0, width=2**70, fps="8", prompt="x\ud800y")
    assert (r["seed"], r["num_frames"], r["height"], r["width"], r["fps"]) == (None, 9, 32, None, None)
    assert r["prompt"] == "x\\ud800y"  # a lone surrogate cannot be stored in Parquet: it stays visible, escaped
    assert records_table([r]).schema == RESULT_SCHEMA
    assert record(seconds=math.nan)["seconds"] is None and record(seconds=0.5)["seconds"] == 0.5
    with pytest.raises(ValueError, match=r"unknown results column\(s\) \['sed'\]"):
        record(sed=1)


def test_sidecars_round_trip_and_foreign_json_is_not_provenance():
    ok = record(id="a", prompt="p\u00e9\U0001f642", seed=3, status="ok", model=MODEL, model_version="v", run_id="r")
    assert read_sidecar(sidecar_bytes(ok)) == ok
    assert read_sidecar(b'{"name": "a config file of mine"}') is None and read_sidecar(b"[1, 2]") is None
    assert read_sidecar(b"not json") is None


def test_rows_per_block_is_bounded_spread_and_a_multiple_of_the_batch():
    million = BatchConfig(manifest="m", output="o", batch_size=4)
    assert rows_per_block(million, 1_000_000) == 256  # ~3,900 blocks, not 250,000 of batch_size rows
    assert rows_per_block(million, 8) == 4  # small runs: every actor gets blocks, progress moves
    assert rows_per_block(BatchConfig(manifest="m", output="o", batch_size=3, concurrency=2), 100) == 15


def ok_record(run_id, rid, *, status="ok", model=MODEL, **values):
    return record(id=rid, run_id=run_id, status=status, model=model, model_version="v1", prompt=f"p {rid}", **values)


def test_view_keeps_the_latest_ok_or_error_per_id_and_folds_in_a_killed_run(tmp_path):
    store = Store(str(tmp_path))
    first = PartWriter(store=store, run_id="20260101T000000Z-aaaaaa", part_rows=2, part_seconds=60)
    first.add(records_table([ok_record(first.run_id, i, seconds=1.0) for i in ("a", "b", "c")]))
    first.add(records_table([ok_record(first.run_id, None, status="error", row=7)]))
    first.flush()
    assert len(list((tmp_path / "results" / first.run_id).glob("part-*.parquet"))) == 2  # 2 rows per part
    view, runs = current_view(store)
    write_view(store, view, runs)

    second = PartWriter(store=store, run_id="20260102T000000Z-bbbbbb", part_rows=100, part_seconds=60)
    second.add(records_table([ok_record(second.run_id, "a", status="skipped"),
                              ok_record(second.run_id, "b", status="error", error="bad", error_field="seed"),
                              ok_record(second.run_id, "d", status="skipped", model="demo"),
                              ok_record(second.run_id, None, status="error", row=3)]))  # fmt: skip
    second.flush()  # the driver is killed here: results.parquet does not cover this run yet
    view, runs = current_view(store)
    assert runs == [first.run_id, second.run_id]
    rows = view.to_pylist()
    assert [(r["id"], r["status"], r["run_id"][-6:]) for r in rows] == [
        ("b", "error", "bbbbbb"),  # errors first: what needs attention
        (None, "error", "bbbbbb"),  # rows without an id: from the newest run only
        ("a", "ok", "aaaaaa"),  # a skip does not replace the record of the run that made the video
        ("c", "ok", "aaaaaa"),
        ("d", "ok", "bbbbbb"),  # known from a skip only (its sidecar): its video exists
    ]
    write_view(store, view, runs)
    assert pq.read_table(tmp_path / "results.parquet").num_rows == 5
    assert current_view(store)[1] == runs


def write_manifest(path, columns):
    pq.write_table(pa.table(columns), path)
    return str(path)


def test_bad_seed_columns_still_give_results_a_gallery_and_a_rerun(tmp_path, no_ray):
    """Issue 20: seeds of 1.5, 2**70 or a string column made the results table fail after every video was made."""
    floats = write_manifest(tmp_path / "floats.parquet", {"id": ["half", "huge", "negative"], "prompt": ["p"] * 3,
                                                          "seed": [1.5, float(2**70), -1.0]})  # fmt: skip
    strings = write_manifest(tmp_path / "strings.parquet", {"prompt": ["p", "q"], "seed": ["7", "abc"]})
    cases = (  # (manifest, the raw value each error quotes, what the typed column holds)
        (floats, ["1.5", "1180591620717411303424", "-1"], [None, None, -1]),  # -1 is an int64, out of range
        (strings, ["'7'", "'abc'"], [None, None]),
    )
    for manifest, raw, typed in cases:
        out = tmp_path / f"out-{len(raw)}"
        for _ in range(2):  # the run, then a re-run into the same output
            summary = run_batch(BatchConfig(manifest=manifest, output=str(out), model=MODEL, defaults=SMALL),
                                progress=False)  # fmt: skip
            assert summary.count("error") == len(raw) and summary.num_generated == 0
            view = pq.read_table(out / "results.parquet").to_pandas().sort_values("row")
            seeds = [None if pd.isna(v) else int(v) for v in view["seed"]]
            assert seeds == typed and list(view["error_field"]) == ["seed"] * len(raw)
            assert all(text in error for text, error in zip(raw, view["error"])), list(view["error"])
            assert (out / "index.html").exists()


def test_a_finished_manifest_reruns_with_one_listing_and_no_request_per_row(tmp_path, s3_bucket, no_ray):
    """Issue 21, items 6 and 10: a re-run lists the output once and reads nothing per row; nothing starts."""
    import boto3

    version = model_version(model_limits_from_source(MODEL))
    calls = []
    for num_rows in (20, 60):
        ids = [f"r{i:03d}" for i in range(num_rows)]
        manifest = write_manifest(tmp_path / f"m{num_rows}.parquet", {"id": ids, "prompt": [f"p {i}" for i in ids]})
        out = Store(f"s3://{s3_bucket}/run{num_rows}")
        records = [record(id=i, prompt=f"p {i}", seed=0, num_frames=9, height=32, width=32, num_inference_steps=2,
                          fps=8, status="ok", model=MODEL, model_version=version, run_id="20260101T000000Z-aaaaaa",
                          uri=out.uri(output_key(i)), bytes=3) for i in ids]  # fmt: skip
        for rec in records:  # a finished run: videos, sidecars and its view
            out.put_bytes(output_key(rec["id"]), b"mp4")
            out.put_bytes(provenance_key(rec["id"]), sidecar_bytes(rec))
        write_view(out, records_table(records), ["20260101T000000Z-aaaaaa"])

        seen: list[str] = []

        def count(model, seen=seen, **_):  # botocore's before-call event: one per request the job makes
            seen.append(model.name)

        if boto3.DEFAULT_SESSION is None:
            boto3.setup_default_session()
        events = boto3.DEFAULT_SESSION.events
        events.register("before-call.s3", count)
        try:
            summary = run_batch(BatchConfig(manifest=manifest, output=out.root, model=MODEL, defaults=SMALL),
                                progress=False)  # fmt: skip
        finally:
            events.unregister("before-call.s3", count)
        assert summary.count("skipped") == num_rows and summary.num_generated == 0
        assert seen.count("HeadObject") <= 2 and seen.count("ListObjectsV2") <= 6, seen  # a constant few
        calls.append(sorted(seen))
        print(f"S3 requests of a re-run of {num_rows} finished rows: {dict(Counter(seen))}")
    assert calls[0] == calls[1]  # the same requests for 20 rows and for 60: none per row


def test_outputs_of_a_run_are_readable_by_others(tmp_path, no_ray):
    manifest = write_manifest(tmp_path / "m.parquet", {"prompt": ["", "p"], "num_frames": [9, 10]})
    run_batch(BatchConfig(manifest=manifest, output=str(tmp_path / "out"), model=MODEL), progress=False)
    files = [p for p in (tmp_path / "out").rglob("*") if p.is_file()]
    assert {p.name for p in files} >= {"results.parquet", "index.html"}
    assert all(p.stat().st_mode & stat.S_IROTH for p in files), {p.name: oct(p.stat().st_mode) for p in files}


def test_dry_run_of_a_large_manifest_streams(tmp_path):
    """Planning reads the manifest in Arrow batches: more rows than one batch, some invalid, two duplicated."""
    n, every = 10_000, 500
    ids = [f"id{i}" for i in range(n)]
    ids[-1] = ids[0]
    frames = np.full(n, 9)
    frames[1::every] = 10
    manifest = write_manifest(tmp_path / "big.parquet", {"id": ids, "prompt": ["a red circle"] * n,
                                                         "num_frames": frames})  # fmt: skip
    report = batch.dry_run(BatchConfig(manifest=manifest, output=str(tmp_path / "out"), model=MODEL, defaults=SMALL))
    assert report.plan.num_rows == n and report.plan.num_invalid == n // every
    assert report.plan.num_duplicate == 2 and report.plan.num_todo == n - n // every - 2
    assert pd.Series([e["row"] for e in report.plan.examples]).is_monotonic_increasing
