"""The distillation data format read lazily: items match what was written, memory stays with a few shards, and each
worker's share of an epoch is deterministic per seed and epoch (no Ray)."""

import pytest
import torch

from dcm.data import EpochSampler, LatentDataset, with_negative
from dcm.io.model_folder import load_pipeline
from dcm_demo.synthetic import write_synthetic_dataset

NUM_SAMPLES, SHARD_SIZE = 10, 3  # four shards: 3 + 3 + 3 + 1


@pytest.fixture(scope="module")
def dataset_path(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("data") / "latents")
    write_synthetic_dataset(load_pipeline("tiny-wan"), path, num_samples=NUM_SAMPLES, num_frames=9, height=32,
                            width=32, shard_size=SHARD_SIZE)  # fmt: skip
    return path


def test_items_match_the_shards_and_only_meta_is_read_up_front(dataset_path):
    data = LatentDataset(dataset_path)
    assert len(data) == NUM_SAMPLES and data.shard_sizes == [3, 3, 3, 1]
    assert data.latent_shape == (16, 3, 4, 4) and data.cond_keys == ["encoder_hidden_states"]
    assert "tensors" not in vars(data)  # nothing loaded yet
    everything = data.tensors  # the explicit whole-set read, for small sets
    for i in (0, 4, 9):
        item = data[i]
        assert set(item) == {"latents", "encoder_hidden_states"}
        for key, value in item.items():
            assert torch.equal(value, everything[key][i]), (i, key)
    with pytest.raises(IndexError, match="sample index 10 out of range for 10 samples"):
        data[10]


@pytest.mark.s3
def test_s3_shards_are_cached_a_few_at_a_time(dataset_path, s3_bucket):
    from dcm.io.storage import Store

    Store(f"s3://{s3_bucket}/latents").upload_from(dataset_path)
    local, remote = LatentDataset(dataset_path), LatentDataset(f"s3://{s3_bucket}/latents", max_cached_shards=2)
    for i in range(NUM_SAMPLES):
        assert torch.equal(remote[i]["latents"], local[i]["latents"])
        assert len(remote._cache) <= 2  # memory does not grow with the dataset


def test_epoch_split_is_disjoint_deterministic_and_shard_by_shard(dataset_path):
    sizes = LatentDataset(dataset_path).shard_sizes
    samplers = [EpochSampler(sizes, rank=r, num_replicas=3, seed=7) for r in range(3)]
    parts = [list(s) for s in samplers]
    assert [len(p) for p in parts] == [3, 3, 3]  # 10 // 3 each, one sample dropped
    assert len(set(sum(parts, []))) == 9  # disjoint
    assert parts == [list(EpochSampler(sizes, rank=r, num_replicas=3, seed=7)) for r in range(3)]  # deterministic
    for sampler in samplers:
        sampler.set_epoch(1)
    assert [list(s) for s in samplers] != parts  # another epoch, another order
    other_seed = [list(EpochSampler(sizes, rank=r, num_replicas=3, seed=8)) for r in range(3)]
    assert other_seed != parts
    # The epoch order visits each shard's rows together (a reader holds one shard at a time).
    order = samplers[0].epoch_order()
    shard_of = [0, 0, 0, 1, 1, 1, 2, 2, 2, 3]
    runs = [shard_of[i] for i in order]
    assert sum(a != b for a, b in zip(runs, runs[1:])) == len(sizes) - 1
    # A resumed run skips what it already saw of the epoch.
    samplers[1].set_epoch(1, start=2)
    assert list(samplers[1]) == order[3 + 2 : 6] and len(samplers[1]) == 1
    with pytest.raises(ValueError, match="10 samples cannot be split across 11 workers"):
        EpochSampler(sizes, rank=0, num_replicas=11, seed=0)


def test_negative_conditioning_is_broadcast_under_the_cfg_key(dataset_path):
    data = LatentDataset(dataset_path)
    batch = torch.utils.data.default_collate([data[0], data[1]])
    out = with_negative(batch, data.negative)
    assert out["negative_encoder_hidden_states"].shape == batch["encoder_hidden_states"].shape
    assert torch.equal(out["negative_encoder_hidden_states"][1], data.negative["encoder_hidden_states"][0])
