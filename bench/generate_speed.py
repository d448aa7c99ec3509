"""4-step DCM student vs 50-step teacher with CFG: wall time and NFE per video, measured in one run.

    .venv/bin/python bench/generate_speed.py [--repeats 3] [--frames 17 --size 64]

Two model sizes: the tiny preset (VAE and pipeline overhead dominate) and a wider tiny Wan transformer where the
denoiser dominates, closer to real checkpoints. The student here has random weights: this measures cost, not quality.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from dcm.config import GenerationConfig
from dcm.models.wan import TinyWanSpec, tiny_wan_components
from dcm.pipeline import DCMPipeline
from dcm.presets import get_preset
from dcm.sampling import CFGDenoiser, CountingDenoiser

TEACHER_STEPS = 50
TEACHER_GUIDANCE = 5.0  # spec §3: the Wan teacher's CFG weight
STUDENT_STEPS = 4
WIDE_SPEC = TinyWanSpec(num_layers=4, num_attention_heads=4, attention_head_dim=32, ffn_dim=256)


def time_generation(dcm: DCMPipeline, config: GenerationConfig, *, repeats: int) -> tuple[float, int]:
    """Median seconds per video (whole pipeline: encode, denoise, decode) and the NFE per video."""
    cond = dcm.encode_prompts(["a red circle moving left"], [""] if config.guidance_scale > 1 else None)
    noise = dcm.initial_noise([0], config)
    sigmas = dcm.sigmas(config)  # teacher: shifted uniform grid; dual expert: the DCM schedule
    times, nfe = [], 0
    for _ in range(repeats):
        counter = CountingDenoiser(dcm.denoiser(config.guidance_scale).inner)
        start = time.perf_counter()
        dcm.encode_prompts(["a red circle moving left"])
        latents = dcm.denoise(noise, cond, sigmas, denoiser=CFGDenoiser(counter, config.guidance_scale))
        dcm.decode(latents)
        times.append(time.perf_counter() - start)
        nfe = counter.nfe
    return statistics.median(times), nfe


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--frames", type=int, default=17)
    parser.add_argument("--size", type=int, default=64)
    args = parser.parse_args()
    torch.set_grad_enabled(False)
    preset = get_preset("tiny-wan")
    specs = {"tiny-wan preset": TinyWanSpec(), "wide tiny Wan": WIDE_SPEC}
    threads = torch.get_num_threads()
    print(f"video {args.frames}x{args.size}x{args.size}, median of {args.repeats}, torch threads {threads}")
    print("| model | transformer params | teacher 50 steps + CFG (s) | NFE | DCM 4 steps (s) | NFE | speed-up |")
    print("|---|---|---|---|---|---|---|")
    for name, spec in specs.items():
        # Same seed, same weights: the student's semantic expert equals the teacher at init.
        teacher = DCMPipeline.from_components(tiny_wan_components(spec), preset.config, with_detail=False)
        student = DCMPipeline.from_components(tiny_wan_components(spec), preset.config, with_detail=True)
        base = dict(num_frames=args.frames, height=args.size, width=args.size)
        teacher_cfg = GenerationConfig(**base, num_inference_steps=TEACHER_STEPS, guidance_scale=TEACHER_GUIDANCE)
        student_cfg = GenerationConfig(**base, num_inference_steps=STUDENT_STEPS)
        t_time, t_nfe = time_generation(teacher, teacher_cfg, repeats=args.repeats)
        s_time, s_nfe = time_generation(student, student_cfg, repeats=args.repeats)
        params = sum(p.numel() for p in teacher.transformer.parameters())
        row = [name, f"{params / 1e3:.0f}k", f"{t_time:.3f}", t_nfe, f"{s_time:.3f}", s_nfe, f"{t_time / s_time:.1f}x"]
        print("| " + " | ".join(map(str, row)) + " |")


if __name__ == "__main__":
    main()
