"""4-step DCM student vs 50-step teacher with CFG: wall time, NFE and where the time goes, measured in one run.

    .venv/bin/python bench/generate_speed.py [--rows tiny,wide,real] [--repeats 3] [--frames 17 --size 64]

Three rows. ``tiny``: the tiny-wan preset (VAE and pipeline overhead dominate). ``wide``: a wider tiny Wan transformer.
``real``: the real-size Wan2.1-T2V-1.3B transformer (1.42B parameters, random fp32 weights, built from the config kept
in the repository) on a tiny video, where the denoiser dominates as it does on real checkpoints; its text encoder and
VAE are small random ones, so text encoding and decoding cost less than with the real UMT5-XXL and Wan VAE. Every
model has random weights: this measures cost, not quality. Each run is end to end (text encoding, denoising, VAE
decoding), and the shares of the three are printed. The real row needs ~8 GB of RAM and several minutes on 2 cores.
"""

from __future__ import annotations

import argparse
import statistics
import time
from dataclasses import dataclass, replace

import torch

from dcm.config import DetailExpertConfig, GenerationConfig
from dcm.experts import DualExpertTransformer
from dcm.models.real_size import SMALL_WAN_TEXT, real_size_wan_components
from dcm.models.wan import DUPLICATED_MODULES, TinyWanSpec, tiny_wan_components
from dcm.pipeline import DCMPipeline
from dcm.presets import get_preset
from dcm.sampling import CFGDenoiser, CountingDenoiser
from dcm.schedule import build_grid

TEACHER_STEPS = 50
TEACHER_GUIDANCE = 6.0  # docs/algorithm.md "Stage I": the Wan teacher's CFG, g = 6 (the reference's w = 5)
STUDENT_STEPS = 4
WIDE_SPEC = TinyWanSpec(num_layers=4, num_attention_heads=4, attention_head_dim=32, ffn_dim=256)
PROMPT = "a red circle moving left"
PHASES = ("text", "denoise", "decode")
# The student costs a few percent of the teacher: at least this many runs of it, so its median damps load noise.
MIN_STUDENT_REPEATS = 3


@dataclass(frozen=True)
class Timing:
    """Median seconds per video of each phase, and the network evaluations per video."""

    text: float
    denoise: float
    decode: float
    nfe: int

    @property
    def total(self) -> float:
        return self.text + self.denoise + self.decode

    def shares(self) -> str:
        return " / ".join(f"{100 * getattr(self, p) / self.total:.1f}" for p in PHASES)


def time_generation(dcm: DCMPipeline, config: GenerationConfig, *, repeats: int) -> Timing:
    """One video per run, end to end: encode the prompt (and the empty negative under CFG), denoise, decode."""
    negatives = [""] if config.guidance_scale > 1 else None
    noise = dcm.initial_noise([0], config)
    sigmas = dcm.sigmas(config)  # teacher: shifted uniform grid; dual expert: the DCM schedule
    runs, nfe = [], 0
    for _ in range(repeats):
        counter = CountingDenoiser(dcm.denoiser(config.guidance_scale).inner)
        start = time.perf_counter()
        cond = dcm.encode_prompts([PROMPT], negatives)
        encoded = time.perf_counter()
        latents = dcm.denoise(noise, cond, sigmas, denoiser=CFGDenoiser(counter, config.guidance_scale))
        denoised = time.perf_counter()
        dcm.decode(latents)
        runs.append((encoded - start, denoised - encoded, time.perf_counter() - denoised))
        nfe = counter.nfe
    return Timing(*(statistics.median(r[i] for r in runs) for i in range(3)), nfe=nfe)


def teacher_pipeline(row: str) -> DCMPipeline:
    """The row's plain model, sampled as a teacher. The real row's config carries the paper's detail expert (LoRA
    r 128), the tiny rows the tiny preset's."""
    config = get_preset("tiny-wan").config
    components = {
        "tiny": lambda: tiny_wan_components(),
        "wide": lambda: tiny_wan_components(WIDE_SPEC),
        "real": lambda: real_size_wan_components(),
    }[row]()
    if row == "real":
        config = replace(config, detail=DetailExpertConfig(duplicated_modules=DUPLICATED_MODULES))
    return DCMPipeline.from_components(components, config, with_detail=False)


def student_of(teacher: DCMPipeline) -> DCMPipeline:
    """The dual-expert student built on the teacher's transformer, in place (one copy of the weights in memory): its
    semantic expert is the teacher, its detail expert adds a LoRA and timestep layers."""
    config = teacher.config
    detail = DualExpertTransformer(teacher.transformer, build_grid(config.schedule), config.detail)
    return DCMPipeline(teacher.pipe, config, detail)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", default="tiny,wide,real", help="comma-separated rows: tiny, wide, real")
    parser.add_argument("--repeats", type=int, default=3, help="runs per measurement of the tiny and wide rows")
    parser.add_argument("--real-repeats", type=int, default=1, help="teacher runs of the real-size row")
    parser.add_argument("--frames", type=int, default=17)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--real-frames", type=int, default=9, help="frames of the real-size row's video")
    parser.add_argument("--real-size", type=int, default=64, help="height and width of the real-size row's video")
    args = parser.parse_args()
    rows = [r.strip() for r in args.rows.split(",") if r.strip()]
    unknown = sorted(set(rows) - {"tiny", "wide", "real"})
    if unknown:
        parser.error(f"--rows: unknown rows {unknown}; choose from tiny, wide, real")
    torch.set_grad_enabled(False)
    print(f"{time.strftime('%Y-%m-%d')}, torch threads {torch.get_num_threads()}, one video per run, medians")
    print(f"teacher: {TEACHER_STEPS} steps + CFG {TEACHER_GUIDANCE:g} (both branches in one batched forward); "
          f"DCM: {STUDENT_STEPS} steps, guidance 1. Shares: text encoding / denoising / VAE decoding, %.")  # fmt: skip
    if "real" in rows:
        print(f"real: Wan2.1-T2V-1.3B transformer (random weights); small random text encoder ({SMALL_WAN_TEXT}) "
              f"and the tiny preset's VAE, not UMT5-XXL and the Wan VAE")  # fmt: skip
    print("| row | video | transformer params | teacher (s) | NFE | shares | DCM (s) | NFE | shares | speed-up |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for row in rows:
        teacher = teacher_pipeline(row)
        params = sum(p.numel() for p in teacher.transformer.parameters())
        frames, size = (args.real_frames, args.real_size) if row == "real" else (args.frames, args.size)
        repeats = args.real_repeats if row == "real" else args.repeats
        base = dict(num_frames=frames, height=size, width=size)
        teacher_cfg = GenerationConfig(**base, num_inference_steps=TEACHER_STEPS, guidance_scale=TEACHER_GUIDANCE)
        student_cfg = GenerationConfig(**base, num_inference_steps=STUDENT_STEPS)
        t = time_generation(teacher, teacher_cfg, repeats=repeats)
        student = student_of(teacher)
        s = time_generation(student, student_cfg, repeats=max(repeats, MIN_STUDENT_REPEATS))
        cells = [row, f"{frames}x{size}x{size}", f"{params:,}", f"{t.total:.2f}", t.nfe, t.shares(), f"{s.total:.2f}",
                 s.nfe, s.shares(), f"{t.total / s.total:.1f}x"]  # fmt: skip
        print("| " + " | ".join(map(str, cells)) + " |", flush=True)
        del teacher, student


if __name__ == "__main__":
    main()
