"""ShapesBench: the DCM paper's comparison in miniature, on the demo stack trained by jobs/train_demo.py.

    .venv/bin/python jobs/train_demo.py --work-dir outputs/demo            # teacher, DCM and the baselines
    .venv/bin/python bench/shapesbench.py --work-dir outputs/demo --prompts 64 --out docs/shapesbench

Runs the same prompts and seeds (disjoint from every training seed) through each row, passes the videos through an
MP4 round trip and scores them from pixels: colour / shape / direction accuracy, trajectory jitter, subject
consistency, pixel distance to the teacher's 50-step output, and wall time per video. Writes <out>/table.md,
<out>/chart.png, <out>/results.json and <out>/strip.png (frames of the first prompts: teacher-50 above DCM-4). The
table's footnote is the ceiling: the same prompts' ground-truth clips through the VAE and an MP4 round trip.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import time

import imageio.v3 as iio
import numpy as np
import torch

from dcm.io.model_folder import load_pipeline
from dcm_demo.bench import (
    Row,
    bench_prompts,
    chart,
    generate_row,
    markdown_table,
    score_row,
    table_rows,
    vae_ceiling,
)
from dcm_demo.world import WorldConfig

logger = logging.getLogger("shapesbench")
TEACHER_GUIDANCE = 5.0
STRIP_PROMPTS, STRIP_EVERY = 3, 4  # the README's frame strip: prompts shown, every n-th frame


def rows(work: str) -> list[Row]:
    """The table's rows; the first is the reference (teacher, 50 steps, CFG)."""
    teacher, dcm = os.path.join(work, "teacher"), os.path.join(work, "dcm", "final")
    base = os.path.join(work, "baselines")
    return [
        Row(name="teacher-50 + CFG", model=teacher, steps=50, guidance_scale=TEACHER_GUIDANCE,
            description="the teacher, 50 Euler steps, CFG 5"),
        Row(name="teacher-4 Euler + CFG", model=teacher, steps=4, guidance_scale=TEACHER_GUIDANCE,
            description="the teacher, 4 Euler steps, CFG 5"),
        Row(name="LCM-style 4", model=os.path.join(base, "lcm", "semantic"), steps=4,
            description="single expert, one phase (every level -> x0)"),
        Row(name="PCM-style 4", model=os.path.join(base, "pcm", "semantic"), steps=4,
            description="single expert, 4 phases"),
        Row(name="DCM-4 no TCL", model=os.path.join(base, "no-tcl", "final"), steps=4,
            description="dual expert without the Temporal Coherence Loss"),
        Row(name="DCM-4 no GAN/FM", model=os.path.join(base, "no-gan", "final"), steps=4,
            description="dual expert without the GAN hinge and feature matching"),
        Row(name="DCM-4", model=dcm, steps=4, description="full DCM"),
        Row(name="DCM-8", model=dcm, steps=8, description="full DCM, 8 steps"),
    ]  # fmt: skip


def frame_strip(videos: list[np.ndarray], every: int) -> np.ndarray:
    """Stacks videos (F, H, W, 3) as rows of every n-th frame, with a 2-pixel gap: (rows*H', cols*W', 3) uint8."""
    gap = 2
    rows_ = []
    for v in videos:
        frames = v[::every]
        padded = [np.pad(f, ((0, gap), (0, gap), (0, 0)), constant_values=255) for f in frames]
        rows_.append(np.concatenate(padded, axis=1))
    return np.concatenate(rows_, axis=0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work-dir", default="outputs/demo", help="jobs/train_demo.py's work dir")
    parser.add_argument("--prompts", type=int, default=64, help="prompts (and seeds) per row")
    parser.add_argument("--out", default="outputs/shapesbench", help="folder for table.md, chart.png, results.json")
    parser.add_argument("--size", type=int, default=WorldConfig().size)
    parser.add_argument("--frames", type=int, default=WorldConfig().num_frames)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch CPU threads")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    torch.set_num_threads(args.threads)
    world = WorldConfig(size=args.size, num_frames=args.frames, pixels_per_frame=args.size / 64 * 1.5)
    prompts = bench_prompts(args.prompts, world)
    table = rows(args.work_dir)
    missing = [r.model for r in table if not os.path.isdir(r.model)]
    if missing:
        raise SystemExit(f"missing model folders {missing}: run `python jobs/train_demo.py --work-dir "
                         f"{args.work_dir}` first (stages distill and baselines)")  # fmt: skip
    os.makedirs(args.out, exist_ok=True)
    started = time.perf_counter()
    results, reference, loaded = [], None, {}
    for row in table:
        if row.model not in loaded:
            loaded = {row.model: load_pipeline(row.model)}  # one model in memory at a time
        videos, seconds = generate_row(loaded[row.model], row, prompts)
        result = score_row(row, videos, seconds, prompts, reference)
        reference = videos if reference is None else reference
        results.append(result)
        logger.info("%s: %s", row.name, {k: round(v, 4) for k, v in result.metrics.items()})
    # Every row's model carries the teacher's VAE: the one still loaded measures the ceiling.
    ceiling = vae_ceiling(next(iter(loaded.values())), prompts, world)
    logger.info("VAE round trip of the ground-truth clips: %s", {k: round(v, 4) for k, v in ceiling.items()})
    markdown = markdown_table(results) + (
        f"\nCeiling — the ground-truth clips of the same prompts through the demo VAE and an MP4 round trip score "
        f"colour {ceiling['colour_acc']:.1f} %, shape {ceiling['shape_acc']:.1f} %, direction "
        f"{ceiling['direction_acc']:.1f} %, jitter {ceiling['jitter_px']:.2f} px, consistency "
        f"{ceiling['consistency']:.1f} %: every row decodes through that VAE.\n"
    )
    with open(os.path.join(args.out, "table.md"), "w") as f:
        f.write(markdown)
    chart(results, os.path.join(args.out, "chart.png"))
    by_name = {r.row.name: r for r in results}
    strip = [v for i in range(STRIP_PROMPTS) for v in (by_name["teacher-50 + CFG"].videos[i],
                                                       by_name["DCM-4"].videos[i])]  # fmt: skip
    iio.imwrite(os.path.join(args.out, "strip.png"), frame_strip(strip, STRIP_EVERY))
    summary = {
        "prompts": [{"seed": p.seed, "caption": p.caption} for p in prompts],
        "rows": table_rows(results),
        "descriptions": {r.name: r.description for r in table},
        "vae_ceiling": ceiling,
        "wall_time_s": time.perf_counter() - started,
        "threads": args.threads,
    }
    with open(os.path.join(args.out, "results.json"), "w") as f:
        json.dump(summary, f, indent=2)
    print(markdown)
    print(f"shapesbench: {len(table)} rows x {len(prompts)} prompts in {summary['wall_time_s']:.0f} s -> {args.out}")


if __name__ == "__main__":
    main()
