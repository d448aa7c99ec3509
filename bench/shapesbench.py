"""ShapesBench: the DCM paper's comparison in miniature, on the demo stack trained by jobs/train_demo.py.

    .venv/bin/python jobs/train_demo.py --work-dir outputs/demo            # teacher, DCM and the baselines
    .venv/bin/python bench/shapesbench.py --work-dir outputs/demo --out docs/shapesbench
    .venv/bin/python bench/shapesbench.py --rows teacher-50,bundled-dcm-4 --out outputs/shapesbench-before
    .venv/bin/python bench/shapesbench.py --prompt-set validation --rows teacher-50 --out outputs/val \
        --teacher outputs/demo/teacher-snapshots/step-003000

Runs the same prompts and seeds through each row (default: every colour x shape x direction twice, 144 prompts, on
seeds disjoint from every training seed), passes the videos through an MP4 round trip and scores them from pixels
(:mod:`dcm_demo.evaluate`): colour / shape / direction / size / speed accuracy and solidity with 95 % Wilson
intervals, multi-blob and hole frames, area growth, trajectory jitter, pixel distance to the teacher's 50-step output
and wall time per video. Writes <out>/table.md (a chance-level line first, the VAE ceiling last), <out>/chart.png,
<out>/results.json (with each row's prompted x drawn shape counts) and <out>/strip.png (every 4th frame of the first
prompts, one line per row). ``--prompt-set validation`` scores the validation prompts (one per colour x shape x
direction, their own seeds), on which models and settings are chosen before the benchmark reports.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time

import imageio.v3 as iio
import numpy as np
import torch

from dcm.io.model_folder import load_pipeline
from dcm_demo.bench import (
    Row,
    bench_prompts,
    chart,
    default_num_prompts,
    generate_row,
    markdown_table,
    score_row,
    table_rows,
    vae_ceiling,
    validation_prompts,
)
from dcm_demo.evaluate import chance_levels
from dcm_demo.world import WorldConfig

logger = logging.getLogger("shapesbench")
TEACHER_GUIDANCE = 5.0
STRIP_PROMPTS, STRIP_EVERY = 3, 4  # the frame strip: prompts shown, every n-th frame
REFERENCE_ROW = "teacher-50"  # distances are measured to this row's videos when it is in the table
WORK_DIR_ROWS = ("teacher-50", "teacher-4", "lcm", "pcm", "no-tcl", "no-gan", "dcm-4", "dcm-8")


def all_rows(work: str, teacher: str | None = None) -> dict[str, Row]:
    """Every row ShapesBench knows, by key: the work dir's teacher (or ``teacher``), baselines and DCM, and the
    bundled model."""
    teacher, dcm = teacher or os.path.join(work, "teacher"), os.path.join(work, "dcm", "final")
    base = os.path.join(work, "baselines")
    return {
        "teacher-50": Row(name="teacher-50 + CFG", model=teacher, steps=50, guidance_scale=TEACHER_GUIDANCE,
                          description="the teacher, 50 Euler steps, CFG 5"),
        "teacher-4": Row(name="teacher-4 Euler + CFG", model=teacher, steps=4, guidance_scale=TEACHER_GUIDANCE,
                         description="the teacher, 4 Euler steps, CFG 5"),
        "lcm": Row(name="LCM-style 4", model=os.path.join(base, "lcm", "semantic"), steps=4,
                   description="single expert, one phase (every level -> x0)"),
        "pcm": Row(name="PCM-style 4", model=os.path.join(base, "pcm", "semantic"), steps=4,
                   description="single expert, 4 phases"),
        "no-tcl": Row(name="DCM-4 no TCL", model=os.path.join(base, "no-tcl", "final"), steps=4,
                      description="dual expert without the Temporal Coherence Loss"),
        "no-gan": Row(name="DCM-4 no GAN/FM", model=os.path.join(base, "no-gan", "final"), steps=4,
                      description="dual expert without the GAN hinge and feature matching"),
        "dcm-4": Row(name="DCM-4", model=dcm, steps=4, description="full DCM"),
        "dcm-8": Row(name="DCM-8", model=dcm, steps=8, description="full DCM, 8 steps"),
        "bundled-dcm-4": Row(name="bundled DCM-4", model="demo", steps=4,
                             description="the model shipped in the package (--model demo), 4 steps"),
        "bundled-dcm-8": Row(name="bundled DCM-8", model="demo", steps=8,
                             description="the model shipped in the package (--model demo), 8 steps"),
    }  # fmt: skip


def frame_strip(videos: list[np.ndarray], every: int) -> np.ndarray:
    """Stacks videos (F, H, W, 3) as rows of every n-th frame, with a 2-pixel gap: (rows*H', cols*W', 3) uint8."""
    gap = 2
    rows_ = []
    for v in videos:
        frames = v[::every]
        padded = [np.pad(f, ((0, gap), (0, gap), (0, 0)), constant_values=255) for f in frames]
        rows_.append(np.concatenate(padded, axis=1))
    return np.concatenate(rows_, axis=0)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work-dir", default="outputs/demo", help="jobs/train_demo.py's work dir")
    parser.add_argument(
        "--rows",
        default=",".join(WORK_DIR_ROWS),
        help=f"comma-separated row keys, in table order (known: {', '.join(all_rows('.'))})",
    )
    parser.add_argument("--teacher", default=None, help="teacher folder (default: <work-dir>/teacher)")
    parser.add_argument("--prompt-set", choices=("bench", "validation"), default="bench")
    parser.add_argument(
        "--prompts",
        type=int,
        default=None,
        help="prompts per row (default: the whole set, every colour x shape x direction)",
    )
    parser.add_argument("--out", default="outputs/shapesbench", help="folder for table.md, chart.png, results.json")
    parser.add_argument("--size", type=int, default=WorldConfig().size)
    parser.add_argument("--frames", type=int, default=WorldConfig().num_frames)
    parser.add_argument("--no-ceiling", action="store_true", help="skip the ground truth through the VAE")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch CPU threads")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    # 1. Arguments, prompts and rows
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    torch.set_num_threads(args.threads)
    world = WorldConfig(size=args.size, num_frames=args.frames, pixels_per_frame=args.size / 64 * 1.5)
    prompts = validation_prompts(world) if args.prompt_set == "validation" else bench_prompts(
        default_num_prompts(world), world)  # fmt: skip
    prompts = prompts[: args.prompts] if args.prompts else prompts
    known = all_rows(args.work_dir, args.teacher)
    keys = [k.strip() for k in args.rows.split(",") if k.strip()]
    unknown = [k for k in keys if k not in known]
    if unknown or not keys:
        print(f"shapesbench: --rows {args.rows!r}: unknown keys {unknown}; known: {list(known)}", file=sys.stderr)
        return 2
    table = [known[k] for k in keys]
    missing = [r.model for r in table if r.model != "demo" and not os.path.isdir(r.model)]
    if missing:
        print(f"shapesbench: missing model folders {missing}: run `python jobs/train_demo.py --work-dir "
              f"{args.work_dir}` first, or choose --rows", file=sys.stderr)  # fmt: skip
        return 2
    os.makedirs(args.out, exist_ok=True)
    started = time.perf_counter()
    # 2. Rows: generate, MP4 round trip, score (one model in memory at a time)
    results, reference, loaded = [], None, {}
    for key, row in zip(keys, table):
        if row.model not in loaded:
            loaded = {row.model: load_pipeline(row.model)}
        videos, seconds = generate_row(loaded[row.model], row, prompts)
        result = score_row(row, videos, seconds, prompts, reference, world)
        reference = videos if key == REFERENCE_ROW and reference is None else reference
        results.append(result)
        logger.info("%s: %s", row.name, {k: v for k, v in result.metrics.items() if not isinstance(v, dict)})
    # 3. Ceiling: every row's model carries the same VAE, so the one still loaded measures it
    ceiling = None if args.no_ceiling else vae_ceiling(next(iter(loaded.values())), prompts, world)
    logger.info("VAE round trip of the ground-truth clips: %s", ceiling)
    # 4. Outputs
    chance = chance_levels(world)
    markdown = markdown_table(results, chance=chance, ceiling=ceiling)
    with open(os.path.join(args.out, "table.md"), "w") as f:
        f.write(markdown)
    chart(results, os.path.join(args.out, "chart.png"), chance=chance)
    strip = [r.videos[i] for i in range(min(STRIP_PROMPTS, len(prompts))) for r in results]
    iio.imwrite(os.path.join(args.out, "strip.png"), frame_strip(strip, STRIP_EVERY))
    summary = {
        "command": " ".join(["python", "bench/shapesbench.py", *(argv if argv is not None else sys.argv[1:])]),
        "prompt_set": args.prompt_set,
        "prompts": [{"seed": p.seed, "caption": p.caption} for p in prompts],
        "rows": table_rows(results),
        "descriptions": {r.name: r.description for r in table},
        "chance": chance,
        "vae_ceiling": ceiling,
        "wall_time_s": time.perf_counter() - started,
        "threads": args.threads,
    }
    with open(os.path.join(args.out, "results.json"), "w") as f:
        json.dump(summary, f, indent=2)
    print(markdown)
    print(f"shapesbench: {len(table)} rows x {len(prompts)} prompts in {summary['wall_time_s']:.0f} s -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
