"""Storage over local folders and a real S3-speaking server (moto over HTTP on 127.0.0.1)."""

import pytest

from dcm.io.storage import Store, safe_name, split_s3


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
