"""GPU check: real-size inference on one GPU, written as JSON figures; also runs at a tiny size on a CPU (--smoke).

    PYTHONPATH=platform python3 bench/gpu_check.py --out OUT_DIR            # one H200: finishes in about 4 minutes
    PYTHONPATH=platform .venv/bin/python bench/gpu_check.py --out /tmp/gpu-check --smoke   # CPU, tiny, ~1 minute

A list of named checks runs in turn; each writes ``OUT_DIR/<name>.json`` (its figures, or its error and traceback)
whatever the others do, then ``summary.json`` lists them all:

* ``environment``: versions of torch, diffusers, transformers, peft, safetensors; the device and its memory.
* ``wan_dcm_vs_teacher``: the real-size Wan2.1-T2V-1.3B transformer (random weights, bf16) at 81 x 480 x 832 with the
  real Wan VAE architecture (random weights) and a small random text encoder: teacher 50 steps + CFG vs DCM 4 steps
  and the released 6-step list; seconds per video end to end and per phase, peak GPU memory, NFE, and the expert each
  step ran (checked against the schedule's routing).
* ``stage_two_step``: ``bench/gpu_check_train.py``'s ``stage_two_step(out_dir) -> dict`` when that module exists; its
  absence is recorded otherwise.

It needs torch, diffusers, transformers, peft, safetensors (and accelerate, which diffusers and peft use) and nothing
else: no Ray, imageio or boto3 is imported on the way (tests/models/test_gpu_check.py runs --smoke with those blocked).
"""

from __future__ import annotations

import argparse
import importlib.util
import inspect
import json
import platform
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from dcm.config import DetailExpertConfig, GenerationConfig
from dcm.experts import DualExpertTransformer, record_experts
from dcm.models.real_size import SMALL_WAN_TEXT, real_size_wan_components
from dcm.models.wan import DUPLICATED_MODULES, tiny_wan_components
from dcm.pipeline import DCMPipeline
from dcm.presets import get_preset
from dcm.sampling import CFGDenoiser, CountingDenoiser
from dcm.schedule import WAN_6STEP_SIGMAS, build_grid, is_detail

TEACHER_STEPS = 50
TEACHER_GUIDANCE = 6.0  # docs/algorithm.md "Stage I": the Wan teacher's CFG, g = 6
DCM_STEPS = 4
PROMPT = "a red circle moving left"
BYTES_PER_GIB = 2**30
TRAIN_CHECK = Path(__file__).with_name("gpu_check_train.py")


@dataclass(frozen=True, kw_only=True)
class Setting:
    """Where and at what size the checks run."""

    device: str
    dtype: torch.dtype
    video: GenerationConfig  # frames and size; steps and guidance are set per run
    real_size: bool


FULL = Setting(device="cuda", dtype=torch.bfloat16, video=GenerationConfig(num_frames=81, height=480, width=832),
               real_size=True)  # fmt: skip
# Same code path on a CPU: the tiny preset's components, a tiny video, bf16 as on the GPU.
SMOKE = Setting(device="cpu", dtype=torch.bfloat16, video=GenerationConfig(num_frames=9, height=32, width=32),
                real_size=False)  # fmt: skip


def synchronize(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def peak_memory_gib(device: str) -> float | None:
    return torch.cuda.max_memory_allocated() / BYTES_PER_GIB if device.startswith("cuda") else None


def reset_peak_memory(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()


# -- checks -----------------------------------------------------------------------------------------------------------


def environment(setting: Setting, out_dir: Path) -> dict:
    import diffusers
    import peft
    import safetensors
    import transformers

    info = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "diffusers": diffusers.__version__,
        "transformers": transformers.__version__,
        "peft": peft.__version__,
        "safetensors": safetensors.__version__,
        "device": setting.device,
        "dtype": str(setting.dtype),
        "cuda_available": torch.cuda.is_available(),
    }
    if setting.device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise RuntimeError("CUDA is not available: run with --smoke on a CPU")
        props = torch.cuda.get_device_properties(0)
        info |= {"gpu": props.name, "gpu_memory_gib": props.total_memory / BYTES_PER_GIB,
                 "cuda": torch.version.cuda, "bf16_supported": torch.cuda.is_bf16_supported()}  # fmt: skip
    return info


def timed_video(dcm: DCMPipeline, config: GenerationConfig, device: str) -> dict:
    """One video end to end with the seconds of each phase, the peak memory, the NFE and each step's expert."""
    negatives = [""] if config.guidance_scale > 1 else None
    noise = dcm.initial_noise([0], config)
    sigmas = dcm.sigmas(config)
    counter = CountingDenoiser(dcm.denoiser(config.guidance_scale).inner)
    reset_peak_memory(device)
    synchronize(device)
    start = time.perf_counter()
    cond = dcm.encode_prompts([PROMPT], negatives)
    synchronize(device)
    encoded = time.perf_counter()
    experts: list[str] = []
    if dcm.is_dual_expert:
        with record_experts(dcm.transformer) as experts:
            latents = dcm.denoise(noise, cond, sigmas, denoiser=CFGDenoiser(counter, config.guidance_scale))
    else:
        latents = dcm.denoise(noise, cond, sigmas, denoiser=CFGDenoiser(counter, config.guidance_scale))
    synchronize(device)
    denoised = time.perf_counter()
    frames = dcm.decode(latents)
    synchronize(device)
    end = time.perf_counter()
    result = {
        "steps": len(sigmas) - 1,
        "guidance_scale": config.guidance_scale,
        "sigmas": [round(float(s), 6) for s in sigmas],
        "seconds": end - start,
        "seconds_text": encoded - start,
        "seconds_denoise": denoised - encoded,
        "seconds_decode": end - denoised,
        "nfe": counter.nfe,
        "peak_memory_gib": peak_memory_gib(device),
        "frames_shape": list(frames.shape),
        "latents_dtype": str(latents.dtype),
    }
    if dcm.is_dual_expert:
        expected = ["detail" if d else "semantic" for d in is_detail(sigmas[:-1].cpu(), dcm.grid).tolist()]
        result |= {"experts": experts, "routing_ok": experts == expected}
    return result


def build_teacher(setting: Setting) -> DCMPipeline:
    """The plain model: real-size Wan2.1-1.3B (random weights) with the real VAE architecture, or the tiny preset's."""
    config = get_preset("tiny-wan").config
    if setting.real_size:
        components = real_size_wan_components(real_vae=True, device=setting.device)
        config = replace(config, detail=DetailExpertConfig(duplicated_modules=DUPLICATED_MODULES))  # the paper's r 128
    else:
        components = tiny_wan_components()
    return DCMPipeline.from_components(components, config, with_detail=False).to(setting.device, setting.dtype)


def wan_dcm_vs_teacher(setting: Setting, out_dir: Path) -> dict:
    start = time.perf_counter()
    teacher = build_teacher(setting)
    built = time.perf_counter() - start
    video = dict(num_frames=setting.video.num_frames, height=setting.video.height, width=setting.video.width)
    dcm_config = GenerationConfig(**video, num_inference_steps=DCM_STEPS)
    teacher_config = GenerationConfig(**video, num_inference_steps=TEACHER_STEPS, guidance_scale=TEACHER_GUIDANCE)
    released_config = GenerationConfig(**video, num_inference_steps=len(WAN_6STEP_SIGMAS), sigmas=WAN_6STEP_SIGMAS)
    params = sum(p.numel() for p in teacher.transformer.parameters())
    timed_video(teacher, GenerationConfig(**video, num_inference_steps=1), setting.device)  # warm-up: kernels, cuDNN
    teacher_run = timed_video(teacher, teacher_config, setting.device)
    # The student on the same weights, in place: semantic expert = the teacher, detail expert = LoRA r 128 + layers.
    config = teacher.config
    detail = DualExpertTransformer(teacher.transformer, build_grid(config.schedule), config.detail)
    student = DCMPipeline(teacher.pipe, config, detail).to(setting.device, setting.dtype)
    dcm_run = timed_video(student, dcm_config, setting.device)
    released_run = timed_video(student, released_config, setting.device)
    return {
        "transformer": "Wan2.1-T2V-1.3B, random weights" if setting.real_size else "tiny-wan preset",
        "transformer_params": params,
        "vae": "Wan2.1 VAE architecture, random weights" if setting.real_size else "tiny-wan preset's",
        "text_encoder": f"small random UMT5 {SMALL_WAN_TEXT}" if setting.real_size else "tiny-wan preset's",
        "video": video,
        "seconds_to_build": built,
        "teacher_50_steps_cfg": teacher_run,
        "dcm_4_steps": dcm_run,
        "dcm_released_6_steps": released_run,
        "speedup_end_to_end": teacher_run["seconds"] / dcm_run["seconds"],
        "speedup_denoise": teacher_run["seconds_denoise"] / dcm_run["seconds_denoise"],
        "routing_ok": dcm_run["routing_ok"] and released_run["routing_ok"],
    }


def stage_two_step(setting: Setting, out_dir: Path) -> dict:
    """The Stage II training-step check of ``bench/gpu_check_train.py`` (``stage_two_step(out_dir) -> dict``, with
    ``smoke=True`` at the tiny size), when that module is there."""
    if not TRAIN_CHECK.exists():
        return {"skipped": f"{TRAIN_CHECK.name} is not there (the Stage II training-step check is not written yet)"}
    spec = importlib.util.spec_from_file_location("gpu_check_train", TRAIN_CHECK)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    if setting.real_size:
        return module.stage_two_step(out_dir)
    if "smoke" not in inspect.signature(module.stage_two_step).parameters:
        return {"skipped": f"{TRAIN_CHECK.name}'s stage_two_step has no smoke mode: it runs on a GPU only"}
    return module.stage_two_step(out_dir, smoke=True)


CHECKS: list[tuple[str, Callable[[Setting, Path], dict]]] = [
    ("environment", environment),
    ("wan_dcm_vs_teacher", wan_dcm_vs_teacher),
    ("stage_two_step", stage_two_step),
]


def run_checks(setting: Setting, out_dir: Path) -> dict:
    """Runs every check in turn; each writes its own JSON, a failing one does not stop the rest."""
    out_dir.mkdir(parents=True, exist_ok=True)
    summary = {}
    for name, check in CHECKS:
        start = time.perf_counter()
        print(f"[{time.strftime('%H:%M:%S')}] {name} ...", flush=True)
        try:
            result = {"ok": True, **check(setting, out_dir)}
        except (Exception, SystemExit) as err:  # a check's failure (or exit) is its result; the next check still runs
            result = {"ok": False, "error": f"{type(err).__name__}: {err}", "traceback": traceback.format_exc()}
        result["wall_seconds"] = time.perf_counter() - start
        (out_dir / f"{name}.json").write_text(json.dumps(result, indent=2) + "\n")
        summary[name] = {k: result[k] for k in ("ok", "wall_seconds", "skipped", "error") if k in result}
        print(f"[{time.strftime('%H:%M:%S')}] {name}: {summary[name]}", flush=True)
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="folder for the JSON files")
    parser.add_argument("--smoke", action="store_true", help="CPU, tiny model and video: the same code path")
    args = parser.parse_args(argv)
    summary = run_checks(SMOKE if args.smoke else FULL, Path(args.out))
    return 0 if all(s["ok"] for s in summary.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
