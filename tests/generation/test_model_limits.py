"""``model_limits_from_source`` (configs only, no weights) equals what the loaded model reports, for every kind of
source: tiny presets, the bundled demo folder and its stock-diffusers export, a saved DCM folder, a plain teacher
folder, the authors' released layout, ``s3://`` copies, and configs that leave defaulted keys out."""

import copy
import json
import shutil
from pathlib import Path

import pytest
from diffusers import WanPipeline
from peft import LoraConfig
from safetensors.torch import save_file

from dcm.generation import model_limits, model_limits_from_source
from dcm.io.model_folder import load_pipeline, save_pretrained
from dcm.io.storage import Store
from dcm.models import wan
from dcm.presets import DEMO_EXPORT_FOLDER, DEMO_FOLDER


@pytest.mark.parametrize("source", ["tiny-wan", "tiny-hunyuan", "demo", str(DEMO_FOLDER), str(DEMO_EXPORT_FOLDER)])
def test_configs_give_the_loaded_models_limits(source):
    assert model_limits_from_source(source) == model_limits(load_pipeline(source))


@pytest.fixture(scope="module")
def saved_tiny_wan(tiny_wan, tmp_path_factory):
    return save_pretrained(tiny_wan, tmp_path_factory.mktemp("tiny-wan") / "model")


def test_saved_folder_and_plain_teacher_folder(saved_tiny_wan, tmp_path):
    assert model_limits_from_source(str(saved_tiny_wan)) == model_limits(load_pipeline(str(saved_tiny_wan)))
    teacher = shutil.copytree(saved_tiny_wan, tmp_path / "teacher", ignore=shutil.ignore_patterns("dcm_config.json"))
    limits = model_limits_from_source(str(teacher))
    assert limits.schedule is None  # a plain teacher samples any step count
    assert limits == model_limits(load_pipeline(str(teacher)))


def test_configs_without_defaulted_keys_read_like_diffusers(saved_tiny_wan, tmp_path):
    """Older diffusers wrote fewer keys (the hub's Wan VAE has no scale factors): the class's defaults fill in."""
    folder = shutil.copytree(saved_tiny_wan, tmp_path / "model")
    for name, keys in (("vae", ("scale_factor_temporal", "scale_factor_spatial")), ("transformer", ("patch_size",))):
        path = folder / name / "config.json"
        config = json.loads(path.read_text())
        path.write_text(json.dumps({k: v for k, v in config.items() if k not in keys}))
    assert model_limits_from_source(str(folder)) == model_limits(load_pipeline(str(folder)))


@pytest.mark.s3
def test_s3_copy_reads_configs_only(saved_tiny_wan, s3_bucket, monkeypatch, tmp_path):
    uri = f"s3://{s3_bucket}/models/tiny-wan"
    Store(uri).upload_from(saved_tiny_wan)
    monkeypatch.setenv("DCM_MODEL_CACHE", str(tmp_path / "cache"))
    from_configs = model_limits_from_source(uri)
    assert not (tmp_path / "cache").exists()  # nothing was downloaded: only the JSON configs were read
    assert from_configs == model_limits(load_pipeline(uri))


@pytest.mark.parametrize(
    "source, match",
    [
        ("/no/such/folder", "is neither a preset"),
        ("no-such-preset", "is neither a preset"),
        ("owner/not-cached-repo", "cannot read owner/not-cached-repo/model_index.json"),
    ],
)
def test_unreadable_sources_name_the_model(source, match):
    with pytest.raises(ValueError, match=match):
        model_limits_from_source(source)


def test_a_folder_that_is_not_a_model(tmp_path):
    with pytest.raises(ValueError, match="has no model_index.json: not a diffusers/DCM model folder"):
        model_limits_from_source(str(tmp_path))
    (tmp_path / "model_index.json").write_text(
        '{"_class_name": "WanPipeline", "vae": ["diffusers", "AutoencoderKLWan"]'
    )
    with pytest.raises(ValueError, match="model_index.json is not valid JSON"):
        model_limits_from_source(str(tmp_path))


def write_released_wan(folder: Path) -> Path:
    """A tiny Wan folder in the authors' released layout: one transformer file holding the base weights, the PEFT
    adapter ``lora1`` and ``*_lora`` copies of the timestep layers (how their training code saved it)."""
    parts = wan.tiny_wan_components()
    WanPipeline(**parts).save_pretrained(folder)
    transformer = parts["transformer"]
    transformer.add_adapter(LoraConfig(r=4, lora_alpha=8, target_modules=["to_q", "to_k", "to_v", "to_out.0"]),
                            adapter_name="lora1")  # fmt: skip
    for name in wan.DUPLICATED_MODULES:
        transformer.add_module(f"{name}_lora", copy.deepcopy(transformer.get_submodule(name)))
    weights = folder / "transformer" / "diffusion_pytorch_model.safetensors"
    save_file({k: v.contiguous() for k, v in transformer.state_dict().items()}, str(weights))
    return folder


@pytest.fixture(scope="module")
def released_wan(tmp_path_factory):
    return write_released_wan(tmp_path_factory.mktemp("released") / "DCM_WAN")


def test_released_layout_is_read_from_the_safetensors_header(released_wan):
    """Configs alone cannot tell the released layout from a plain teacher: the tensor names in the header can."""
    limits = model_limits_from_source(str(released_wan))
    assert limits.schedule is not None and limits.defaults.sigmas is not None  # the released schedule and list
    assert limits == model_limits(load_pipeline(str(released_wan)))


@pytest.mark.s3
def test_released_layout_on_s3_reads_only_the_header(released_wan, s3_bucket, monkeypatch, tmp_path):
    uri = f"s3://{s3_bucket}/models/DCM_WAN"
    Store(uri).upload_from(released_wan)
    monkeypatch.setenv("DCM_MODEL_CACHE", str(tmp_path / "cache"))
    from_configs = model_limits_from_source(uri)
    assert not (tmp_path / "cache").exists()
    assert from_configs == model_limits(load_pipeline(str(released_wan)))


def test_configs_that_do_not_fit_are_named(saved_tiny_wan, tmp_path):
    folder = shutil.copytree(saved_tiny_wan, tmp_path / "model")
    config = json.loads((folder / "dcm_config.json").read_text())
    (folder / "dcm_config.json").write_text(json.dumps({**config, "future_field": 1}))
    with pytest.raises(ValueError, match="its configs do not fit its pipeline"):
        model_limits_from_source(str(folder))
