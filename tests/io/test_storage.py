"""Storage over local folders and a real S3-speaking server (moto over HTTP on 127.0.0.1)."""

import os
import stat

import pytest

from dcm.io.storage import ObjectInfo, Store, s3_error_cause, safe_name, split_s3


def exercise(store: Store):
    assert store.list() == []
    uri = store.put_bytes("videos/a.mp4", b"abc")
    assert uri.endswith("videos/a.mp4")
    assert store.exists("videos/a.mp4") and not store.exists("videos/b.mp4")
    assert store.get_bytes("videos/a.mp4") == b"abc"
    assert store.size("videos/a.mp4") == 3
    store.put_bytes("videos/a.mp4", b"abcd")  # overwrite replaces whole
    store.put_bytes("results.parquet", b"x")
    assert store.get_bytes("videos/a.mp4") == b"abcd"
    assert store.list() == ["results.parquet", "videos/a.mp4"]
    assert store.list("videos") == ["videos/a.mp4"]


def test_local_store(tmp_path):
    store = Store(str(tmp_path / "out"))
    exercise(store)
    # No temporary files are left beside the objects.
    assert sorted(p.name for p in (tmp_path / "out" / "videos").iterdir()) == ["a.mp4"]


@pytest.mark.s3
def test_s3_store(s3_bucket):
    exercise(Store(f"s3://{s3_bucket}/run-1"))
    # Another prefix in the same bucket sees nothing of run-1.
    assert Store(f"s3://{s3_bucket}/run-2").list() == []


@pytest.mark.s3
def test_s3_folder_download_upload(s3_bucket, tmp_path):
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    (src / "sub" / "w.bin").write_bytes(b"\x00\x01")
    (src / "cfg.json").write_text("{}")
    store = Store(f"s3://{s3_bucket}/model")
    store.upload_from(src)
    dst = store.download_to(tmp_path / "dst")
    assert (dst / "sub" / "w.bin").read_bytes() == b"\x00\x01" and (dst / "cfg.json").read_text() == "{}"


@pytest.mark.parametrize("key", ["../x", "/abs", "a/../b", "a//b", "", "./a"])
def test_keys_cannot_escape(tmp_path, key):
    with pytest.raises(ValueError, match="relative path"):
        Store(str(tmp_path)).put_bytes(key, b"x")


def test_safe_name():
    assert safe_name("clip-001_a.b") == "clip-001_a.b"
    for evil in ("../../etc/passwd", "/abs/path", "a/b", ".hidden", "x\\y", "名字"):
        name = safe_name(evil)
        assert "/" not in name and "\\" not in name and not name.startswith(".")
    assert safe_name("a/b") != safe_name("a_b")  # changed names get a hash: no collisions
    with pytest.raises(ValueError):
        safe_name("")


def test_split_s3():
    assert split_s3("s3://bucket/a/b/") == ("bucket", "a/b")
    with pytest.raises(ValueError, match="3 characters"):
        split_s3("s3://ab/x")


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o027, 0o640), (0o077, 0o600)])
def test_local_files_are_readable_as_the_umask_allows(tmp_path, umask, mode):
    """A web server or a team share must be able to read a run's gallery and videos (mkstemp made them 0600)."""
    old = os.umask(umask)
    try:
        Store(str(tmp_path)).put_bytes("index.html", b"<html></html>")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "index.html").stat().st_mode) == mode


def test_safe_name_keeps_case_distinct_ids_apart():
    names = [safe_name(n) for n in ("Clip", "clip", "CLIP")]
    assert names[1] == "clip" and len({n.casefold() for n in names}) == 3
    assert all(n == n.lower() for n in names)
    assert safe_name("Clip") == safe_name("Clip")
    assert safe_name("\ud800") != safe_name("\udc00")  # lone surrogates hash without an encoding error


def test_list_objects_and_delete_locally(tmp_path):
    store = Store(str(tmp_path))
    store.put_bytes("a/b.bin", b"123")
    assert store.list_objects() == [ObjectInfo(key="a/b.bin", size=3, etag=None)]
    store.delete("a/b.bin")
    store.delete("a/b.bin")  # missing is fine
    assert store.list() == []


@pytest.mark.s3
def test_s3_listing_has_etags_and_stays_inside_its_folder(s3_bucket):
    Store(f"s3://{s3_bucket}/model-old").put_bytes("x.json", b"old")
    store = Store(f"s3://{s3_bucket}/model")
    store.put_bytes("x.json", b"new")
    (info,) = store.list_objects()
    assert info.key == "x.json" and info.size == 3 and info.etag
    store.put_bytes("x.json", b"changed")
    assert store.list_objects()[0].etag != info.etag
    store.delete("x.json")
    assert store.list() == []


@pytest.mark.s3
def test_download_refuses_keys_that_leave_the_folder(s3_bucket, s3_endpoint, tmp_path):
    import boto3

    boto3.client("s3", endpoint_url=s3_endpoint).put_object(Bucket=s3_bucket, Key="m/../../escape.txt", Body=b"x")
    with pytest.raises(ValueError, match="relative path without"):
        Store(f"s3://{s3_bucket}/m").download_to(tmp_path / "dst")
    assert not list(tmp_path.rglob("escape.txt"))


@pytest.mark.s3
def test_s3_errors_in_one_line(s3_endpoint):
    from botocore.exceptions import ClientError

    with pytest.raises(ClientError) as info:
        Store("s3://no-such-bucket-here/x").get_bytes("a")
    assert s3_error_cause(info.value, "s3://no-such-bucket-here/x") == "bucket 'no-such-bucket-here' does not exist"


def byte_ranges(store: Store) -> None:
    store.put_bytes("w.safetensors", b"0123456789")
    assert store.get_bytes("w.safetensors", byte_range=(0, 3)) == b"0123"
    assert store.get_bytes("w.safetensors", byte_range=(8, 20)) == b"89"  # past the end: what there is


def test_local_byte_ranges(tmp_path):
    byte_ranges(Store(str(tmp_path)))


@pytest.mark.s3
def test_s3_byte_ranges(s3_bucket):
    byte_ranges(Store(f"s3://{s3_bucket}/r"))
