"""The ``s3://`` model cache against a real S3-speaking server (moto over HTTP): a download killed half-way leaves
nothing that looks complete, two loaders download once, a changed model is fetched again, an unreachable store falls
back to a complete copy."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from dcm.io.model_cache import MARKER_NAME, cache_entry, fetch_folder
from dcm.io.storage import Store

pytestmark = pytest.mark.s3

ROOT = Path(__file__).resolve().parents[2]
FILES = {
    "model_index.json": b'{"_class_name": "WanPipeline"}',
    "transformer/diffusion_pytorch_model.safetensors": os.urandom(200_000),
    "vae/diffusion_pytorch_model.safetensors": os.urandom(100_000),
}
PROCESS_TIMEOUT_S = 120

# A loader in its own process whose downloads are slowed down (a Store subclass: the library is not touched), so a
# test can kill it between two files or start a second loader while it holds the lock.
LOADER = textwrap.dedent(
    """
    import logging, sys, time
    from dcm.io.model_cache import fetch_folder
    from dcm.io.storage import Store

    class SlowStore(Store):
        def download_file(self, key, target):
            super().download_file(key, target)
            print("downloaded", key, flush=True)
            time.sleep(float(sys.argv[3]))

    logging.basicConfig(level=logging.INFO)
    print("ready", fetch_folder(SlowStore(sys.argv[1]), sys.argv[2]), flush=True)
    """
)


class CountingStore(Store):
    """Counts the objects it downloads."""

    downloads = 0

    def download_file(self, key, target):
        self.downloads += 1
        super().download_file(key, target)


@pytest.fixture
def model_uri(s3_bucket):
    uri = f"s3://{s3_bucket}/models/m"
    store = Store(uri)
    for key, data in FILES.items():
        store.put_bytes(key, data)
    return uri


def start_loader(uri: str, cache: Path, delay_s: float) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "platform"), str(ROOT)])}
    return subprocess.Popen([sys.executable, "-c", LOADER, uri, str(cache), str(delay_s)], env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)  # fmt: skip


def wait_for_line(process: subprocess.Popen, prefix: str) -> str:
    for line in process.stdout:
        if line.startswith(prefix):
            return line
    raise AssertionError(f"the loader exited before printing {prefix!r}: {process.stderr.read()[-2000:]}")


def assert_complete(folder: Path) -> None:
    for key, data in FILES.items():
        assert (folder / key).read_bytes() == data
    assert (folder / MARKER_NAME).is_file()


def test_a_killed_download_leaves_nothing_that_looks_complete(model_uri, tmp_path):
    """Issue: model_index.json arrived first and was taken as "the folder is complete", for good."""
    cache = tmp_path / "cache"
    loader = start_loader(model_uri, cache, delay_s=60)
    wait_for_line(loader, "downloaded model_index.json")
    loader.send_signal(signal.SIGKILL)
    loader.wait(PROCESS_TIMEOUT_S)
    entry = cache_entry(model_uri, cache)
    assert not entry.exists()
    leftovers = list(cache.glob(f".{entry.name}.partial-*"))
    assert len(leftovers) == 1 and (leftovers[0] / "model_index.json").is_file()  # killed half-way indeed
    store = CountingStore(model_uri)
    assert fetch_folder(store, cache) == entry
    assert_complete(entry)
    assert store.downloads == len(FILES) and not list(cache.glob(f".{entry.name}.*"))


def test_two_loaders_on_one_node_download_once(model_uri, tmp_path):
    cache = tmp_path / "cache"
    first = start_loader(model_uri, cache, delay_s=0.5)
    wait_for_line(first, "downloaded model_index.json")  # the first holds the lock now
    second = start_loader(model_uri, cache, delay_s=0.5)
    outputs = [p.communicate(timeout=PROCESS_TIMEOUT_S) for p in (first, second)]
    assert [p.returncode for p in (first, second)] == [0, 0], [err[-2000:] for _, err in outputs]
    downloads = [out.count("downloaded ") for out, _ in outputs]
    assert downloads == [len(FILES) - 1, 0]  # the first's first line was read above; the second downloaded nothing
    assert "waiting for another process" in outputs[1][1]
    assert outputs[0][0].split("ready ")[1] == outputs[1][0].split("ready ")[1]
    assert_complete(cache_entry(model_uri, cache))


def test_a_changed_model_is_fetched_again(model_uri, tmp_path):
    cache = tmp_path / "cache"
    entry = fetch_folder(Store(model_uri), cache)
    unchanged = CountingStore(model_uri)
    assert fetch_folder(unchanged, cache) == entry and unchanged.downloads == 0
    Store(model_uri).put_bytes("vae/diffusion_pytorch_model.safetensors", b"retrained")
    changed = CountingStore(model_uri)
    assert fetch_folder(changed, cache) == entry and changed.downloads == len(FILES)
    assert (entry / "vae/diffusion_pytorch_model.safetensors").read_bytes() == b"retrained"


def test_an_unreachable_store_uses_a_complete_copy_or_says_why(model_uri, tmp_path):
    cache = tmp_path / "cache"
    unreachable = "http://127.0.0.1:9"  # the discard port: nothing listens
    with pytest.raises(ValueError, match=f"model {model_uri}: cannot reach the S3 endpoint"):
        fetch_folder(Store(model_uri, unreachable, max_attempts=1), cache)
    entry = fetch_folder(Store(model_uri), cache)
    assert fetch_folder(Store(model_uri, unreachable, max_attempts=1), cache) == entry


def test_a_prefix_without_model_index_is_not_a_model(s3_bucket, tmp_path):
    Store(f"s3://{s3_bucket}/not-a-model").put_bytes("weights.bin", b"x")
    with pytest.raises(FileNotFoundError, match="has no model_index.json"):
        fetch_folder(Store(f"s3://{s3_bucket}/not-a-model"), tmp_path)
