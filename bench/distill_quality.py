"""Does distillation bring the 4-step student closer to the teacher's 50-step output? Measured in one run.

    .venv/bin/python bench/distill_quality.py [--semantic-steps 150 --detail-steps 150 --samples 32]

For held-out seeds (disjoint from the training data's), reports the mean squared distance, in latent space, of:
  * the teacher's own 4-step Euler output,
  * the 4-step DCM sampler before distillation (the student at init equals the teacher),
  * the 4-step DCM sampler after both stages,
to the teacher's 50-step output with CFG. The tiny teacher is random, so this measures the method, not quality.
The distillation runs through ``run_distillation`` on a local Ray (2 CPU workers would only slow it down here).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from dataclasses import replace

import torch

from dcm.cluster.runtime import ray_session
from dcm.cluster.train import run_distillation
from dcm.config import GenerationConfig
from dcm.distill.recipes import tiny
from dcm.io.model_folder import load_pipeline, plain_transformer
from dcm.pipeline import DCMPipeline
from dcm_demo.synthetic import write_synthetic_dataset

EVAL_SEED_OFFSET = 10_000  # evaluation seeds never overlap the training data's seeds
PROMPTS = ["a red circle moving left", "a blue square moving up", "a green triangle moving right",
           "a yellow circle moving down"]  # fmt: skip


def latents(dcm: DCMPipeline, config: GenerationConfig, seeds: list[int]) -> torch.Tensor:
    prompts = [PROMPTS[i % len(PROMPTS)] for i in range(len(seeds))]
    return dcm.generate(prompts, seeds=seeds, config=config, output_type="latent")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--semantic-steps", type=int, default=150)
    parser.add_argument("--detail-steps", type=int, default=150)
    parser.add_argument("--samples", type=int, default=32)
    parser.add_argument("--eval-videos", type=int, default=8)
    parser.add_argument("--guidance-scale", type=float, default=6.0, help="the teacher's guidance scale g")
    args = parser.parse_args()
    shape = dict(num_frames=9, height=32, width=32)
    seeds = [EVAL_SEED_OFFSET + i for i in range(args.eval_videos)]

    student0 = load_pipeline("tiny-wan")  # dual expert at init == teacher
    teacher = DCMPipeline(student0.pipe, replace(student0.config, detail=None), plain_transformer(student0))
    reference = latents(teacher, GenerationConfig(**shape, num_inference_steps=50, guidance_scale=args.guidance_scale),
                        seeds)  # fmt: skip
    teacher4 = latents(teacher, GenerationConfig(**shape, num_inference_steps=4), seeds)
    before = latents(student0, GenerationConfig(**shape, num_inference_steps=4), seeds)

    with tempfile.TemporaryDirectory() as tmp:
        data = os.path.join(tmp, "data")
        write_synthetic_dataset(student0, data, num_samples=args.samples, **shape)
        config = tiny(data=data, output=os.path.join(tmp, "out"))
        config = replace(
            config,
            semantic=replace(config.semantic, num_steps=args.semantic_steps),
            detail=replace(config.detail, num_steps=args.detail_steps),
            teacher_guidance_scale=args.guidance_scale, checkpoint_every=10_000, report_every=50, log_every=50,
        )  # fmt: skip
        with ray_session():
            start = time.perf_counter()
            run_distillation(config)
            train_seconds = time.perf_counter() - start
        distilled = load_pipeline(os.path.join(tmp, "out", "final"))
        after = latents(distilled, GenerationConfig(**shape, num_inference_steps=4), seeds)

    def dist(x: torch.Tensor) -> float:
        return float((x - reference).pow(2).mean())

    print(f"tiny-wan teacher, {args.samples} training clips, {args.semantic_steps}+{args.detail_steps} steps "
          f"({train_seconds:.0f} s), {args.eval_videos} held-out seeds")  # fmt: skip
    print(f"latent MSE to the teacher's 50-step output with guidance scale {args.guidance_scale}")
    print("| sampler | MSE to teacher-50 |")
    print("|---|---|")
    print(f"| teacher, 4 Euler steps | {dist(teacher4):.4f} |")
    print(f"| DCM 4 steps, before distillation | {dist(before):.4f} |")
    print(f"| DCM 4 steps, after distillation | {dist(after):.4f} |")
    print(f"ratio after / teacher-4: {dist(after) / dist(teacher4):.2f}")


if __name__ == "__main__":
    main()
