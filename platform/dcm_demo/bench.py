"""ShapesBench: one prompt set and seed set through several samplers, scored from decoded MP4 pixels alone.

A *row* is a model folder plus a sampler setting (steps, guidance). Every row generates the same prompts with the
same seeds; its videos go through an MP4 round trip (what a user downloads) and are scored by
:mod:`dcm_demo.evaluate` against the attributes the prompt asked for, and by their pixel distance to the reference
row's videos (the teacher's 50-step output). Wall time per video covers prompt encoding, sampling and VAE decoding.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from dcm.config import GenerationConfig
from dcm.io.video import decode_mp4, encode_mp4
from dcm.pipeline import DCMPipeline
from dcm_demo.evaluate import ACCURACY_METRICS, pixel_distance, score_video, summarise
from dcm_demo.world import SIZES, SPEEDS, Attributes, WorldConfig, clip_of

# Benchmark clips come from seeds far from every training range of dcm_demo.stages (VAE 0.., data 1e6.., VAE check
# 5e6..) and from the validation prompts (8e6..): a benchmark seed is never a training seed (its noise and layout
# are new; its caption comes from the same finite vocabulary).
BENCH_SEEDS = 9_000_000
# Validation prompts pick models and settings; the benchmark's prompts then only report.
VALIDATION_SEEDS = 8_000_000
# Every colour x shape x direction twice, so each combination is scored in two size / speed variants.
BENCH_REPEATS = 2
# The order in which prompt sets walk the colour x shape x direction grid: a fixed shuffle, so that a prefix of a
# prompt set is spread over colours, shapes and directions.
GRID_ORDER_SEED = 0
GENERATE_BATCH = 8


@dataclass(frozen=True, kw_only=True)
class BenchPrompt:
    seed: int
    caption: str
    attributes: Attributes


def attribute_grid(world: WorldConfig) -> list[tuple[int, int, int]]:
    """Indices (colour, shape, direction) of every combination of the world's vocabulary, in the fixed shuffled
    order of :data:`GRID_ORDER_SEED`."""
    grid = list(itertools.product(range(len(world.colours)), range(len(world.shapes)), range(len(world.directions))))
    return [grid[i] for i in np.random.default_rng(GRID_ORDER_SEED).permutation(len(grid))]


def size_speed_variants() -> list[tuple[str, str]]:
    """Every (size, speed) pair, in a Latin-square order: variants ``v`` and ``v + len / 2`` differ in both words,
    so the two copies of a combination in the benchmark differ in size and in speed."""
    sizes, speeds = list(SIZES), list(SPEEDS)
    n = len(speeds)
    return [(sizes[k // n], speeds[(k // n + k % n) % n]) for k in range(len(sizes) * n)]


def bench_prompts(num: int, world: WorldConfig, *, first_seed: int = BENCH_SEEDS) -> list[BenchPrompt]:
    """``num`` prompts walking the colour x shape x direction grid (:func:`attribute_grid`) as often as needed, with
    the size / speed variant of combination (c, s, d) in pass r being ``(c + s + d + r * V / 2 + r // 2) mod V``
    (V variants): within a pass every shape and colour gets each variant equally often, and two passes balance the
    directions too. Prompt i has seed ``first_seed + i``, which draws its clip's layout and its generation noise."""
    if num <= 0:
        raise ValueError(f"num must be positive, got {num}")
    grid, variants = attribute_grid(world), size_speed_variants()
    prompts = []
    for i in range(num):
        repeat, (c, s, d) = divmod(i, len(grid))[0], grid[i % len(grid)]
        offset = repeat * (len(variants) // 2) + repeat // 2
        size, speed = variants[(c + s + d + offset) % len(variants)]
        attributes = Attributes(colour=world.colours[c], shape=world.shapes[s], direction=world.directions[d],
                                size=size, speed=speed)  # fmt: skip
        prompts.append(BenchPrompt(seed=first_seed + i, caption=attributes.caption(), attributes=attributes))
    return prompts


def default_num_prompts(world: WorldConfig) -> int:
    """The benchmark's size: every colour x shape x direction :data:`BENCH_REPEATS` times."""
    return BENCH_REPEATS * len(world.colours) * len(world.shapes) * len(world.directions)


def validation_prompts(world: WorldConfig) -> list[BenchPrompt]:
    """One prompt per colour x shape x direction, on the validation seeds."""
    return bench_prompts(default_num_prompts(world) // BENCH_REPEATS, world, first_seed=VALIDATION_SEEDS)


def ground_truth(prompts: Sequence[BenchPrompt], world: WorldConfig) -> np.ndarray:
    """(N, F, H, W, 3) uint8: the world's clip of each prompt (its attributes, layout from its seed)."""
    return np.stack([clip_of(p.attributes, p.seed, world).frames for p in prompts])


@dataclass(frozen=True, kw_only=True)
class Row:
    """One line of the table: which model, how it samples, and what it is."""

    name: str
    model: str
    steps: int
    guidance_scale: float = 1.0
    description: str = ""

    @property
    def nfe(self) -> int:
        """Network evaluations per video (CFG doubles each step)."""
        return self.steps * (2 if self.guidance_scale > 1 else 1)


@dataclass(frozen=True, kw_only=True)
class RowResult:
    row: Row
    metrics: dict  # summarise() + shape_confusion + distance_to_reference + (sampling_)seconds_per_video
    videos: np.ndarray = None  # (N, F, H, W, 3) uint8 after the MP4 round trip


def through_mp4(videos: np.ndarray, fps: int) -> np.ndarray:
    """(N, F, H, W, 3) uint8 -> the same after encoding to MP4 and decoding back."""
    return np.stack([decode_mp4(encode_mp4(v, fps=fps)).frames for v in videos])


def generate_row(dcm: DCMPipeline, row: Row, prompts: Sequence[BenchPrompt]) -> tuple[np.ndarray, dict[str, float]]:
    """A row's videos (N, F, H, W, 3) uint8 after an MP4 round trip, and its wall seconds per video:
    ``seconds_per_video`` (prompt encoding + sampling + VAE decoding) and ``sampling_seconds_per_video`` (without the
    decoding, which costs the same in every row). The first batch runs once before the clock starts: warm-up."""
    config = dcm.with_defaults(num_inference_steps=row.steps, guidance_scale=row.guidance_scale, sigmas=None)
    batches = [prompts[i : i + GENERATE_BATCH] for i in range(0, len(prompts), GENERATE_BATCH)]
    dcm.decode(_run(dcm, config, batches[0]))
    sampling = decoding = 0.0
    videos = []
    for batch in batches:
        start = time.perf_counter()
        latents = _run(dcm, config, batch)
        middle = time.perf_counter()
        videos.append(dcm.decode(latents))
        sampling, decoding = sampling + middle - start, decoding + time.perf_counter() - middle
    n = len(prompts)
    seconds = {"seconds_per_video": (sampling + decoding) / n, "sampling_seconds_per_video": sampling / n}
    return through_mp4(np.concatenate(videos), config.fps), seconds


def vae_ceiling(dcm: DCMPipeline, prompts: Sequence[BenchPrompt], world: WorldConfig) -> dict:
    """ShapesBench of the ground-truth clips of these prompts after a round trip through the model's VAE and an MP4:
    the most any row of a model with this VAE can score (a generator can only draw what the decoder can)."""
    videos = through_mp4(vae_round_trip(dcm, ground_truth(prompts, world)), dcm.config.default_generation.fps)
    return summarise([score_video(v, p.attributes, world) for v, p in zip(videos, prompts)])


@torch.no_grad()
def vae_round_trip(dcm: DCMPipeline, clips: np.ndarray) -> np.ndarray:
    """(N, F, H, W, 3) uint8 clips -> the same encoded and decoded by the model's VAE (batches of
    :data:`GENERATE_BATCH`)."""
    decoded = []
    for i in range(0, len(clips), GENERATE_BATCH):
        video = torch.from_numpy(clips[i : i + GENERATE_BATCH]).to(dcm.device, dcm.dtype) / 255  # (B, F, H, W, 3)
        decoded.append(dcm.decode(dcm.family.encode_video(dcm.pipe, video)))
    return np.concatenate(decoded)


def _run(dcm: DCMPipeline, config: GenerationConfig, batch: Sequence[BenchPrompt]) -> torch.Tensor:
    """Latents (B, C, F', H', W') of a batch: prompt encoding and sampling."""
    prompts, seeds = [p.caption for p in batch], [p.seed for p in batch]
    return dcm.generate(prompts, seeds=seeds, config=config, output_type="latent")


def score_row(
    row: Row, videos: np.ndarray, seconds: dict[str, float], prompts: Sequence[BenchPrompt],
    reference: np.ndarray | None, world: WorldConfig,
) -> RowResult:  # fmt: skip
    """Scores decoded videos against their prompts and (if given) the reference row's videos; ``seconds`` are
    :func:`generate_row`'s timings."""
    scores = [score_video(v, p.attributes, world) for v, p in zip(videos, prompts)]
    metrics = summarise(scores) | {"shape_confusion": shape_confusion(scores, prompts, world)}
    if reference is not None:
        metrics["distance_to_reference"] = float(np.mean([pixel_distance(v, r) for v, r in zip(videos, reference)]))
    metrics.update(seconds)
    return RowResult(row=row, metrics=metrics, videos=videos)


def shape_confusion(scores: Sequence, prompts: Sequence[BenchPrompt], world: WorldConfig) -> dict:
    """``{prompted shape: {drawn shape: videos}}`` (``"none"`` where no object was found)."""
    confusion = {shape: dict.fromkeys([*world.shapes, "none"], 0) for shape in world.shapes}
    for score, prompt in zip(scores, prompts):
        confusion[prompt.attributes.shape][score.predicted.get("shape", "none")] += 1
    return confusion


# (title, key) of the table's columns; an accuracy is printed with its 95 % Wilson interval.
COLUMNS = (
    ("steps", "steps"),
    ("NFE", "nfe"),
    *((f"{name} %", f"{name}_acc") for name in ACCURACY_METRICS),
    ("multi-blob frames %", "multi_blob_frames"),
    ("hole frames %", "hole_frames"),
    ("area first → last px", "area_first_px"),
    ("area last / first", "area_growth"),
    ("jitter px", "jitter_px"),
    ("dist. to teacher-50", "distance_to_reference"),
    ("s / video", "seconds_per_video"),
    ("speed-up", "speedup"),
    ("sampling s / video", "sampling_seconds_per_video"),
    ("sampling speed-up", "sampling_speedup"),
)


def table_rows(results: Sequence[RowResult]) -> list[dict]:
    """One dict per row with every column; speed-ups are relative to the first (reference) row, end to end and for
    sampling alone (prompt encoding + denoising, without the VAE decoding every row shares)."""
    reference = results[0].metrics
    rows = []
    for r in results:
        values = {"name": r.row.name, "steps": r.row.steps, "nfe": r.row.nfe, **r.metrics}
        for speedup, seconds in (("speedup", "seconds_per_video"), ("sampling_speedup", "sampling_seconds_per_video")):
            values[speedup] = reference[seconds] / r.metrics[seconds]
        rows.append(values)
    return rows


def markdown_table(results: Sequence[RowResult], *, chance: dict[str, float], ceiling: dict | None = None) -> str:
    """The comparison as a Markdown table: a chance-level line, one line per row and (if given) the ceiling's line
    (ground truth through the VAE and an MP4). Accuracies in percent with [low, high] 95 % intervals."""
    header = "| row | " + " | ".join(title for title, _ in COLUMNS) + " |"
    lines = [header, "|---|" + "---:|" * len(COLUMNS)]
    named = [("chance", chance), *((values["name"], values) for values in table_rows(results))]
    if ceiling is not None:
        named.append(("ceiling: ground truth via VAE + MP4", ceiling))
    for name, values in named:
        lines.append(f"| {name} | " + " | ".join(_format(key, values) for _, key in COLUMNS) + " |")
    return "\n".join(lines) + "\n"


def _format(key: str, values: dict) -> str:
    """One cell: ``values[key]``; an accuracy with its ``<key>_ci`` interval, first frames' area with the last's."""
    value, interval = values.get(key), values.get(f"{key}_ci")
    if value is None:
        return "—"
    if key in ("steps", "nfe"):
        return str(int(value))
    if key in ("speedup", "sampling_speedup"):
        return f"{value:.1f}x"
    if key == "distance_to_reference":
        return f"{value:.4f}"
    if key in ("seconds_per_video", "sampling_seconds_per_video"):
        return f"{value:.3f}"
    if key == "area_growth":
        return f"{value:.2f}"
    if key == "area_first_px":
        return f"{value:.0f} → {values['area_last_px']:.0f}"
    text = f"{value:.1f}" if np.isfinite(value) else "inf"
    return f"{text} [{interval[0]:.1f}, {interval[1]:.1f}]" if interval is not None else text


def chart(results: Sequence[RowResult], path: str, *, chance: dict[str, float]) -> None:
    """A PNG: accuracies per row (grouped bars with 95 % intervals, chance levels as ticks) and wall time per video,
    end to end and sampling alone (log)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = table_rows(results)
    names = [r["name"] for r in rows]
    x = np.arange(len(rows))
    fig, (ax_acc, ax_time) = plt.subplots(1, 2, figsize=(13, 4.5), gridspec_kw={"width_ratios": [3, 2]})
    width = 0.8 / len(ACCURACY_METRICS)
    for i, name in enumerate(ACCURACY_METRICS):
        key, offset = f"{name}_acc", (i - (len(ACCURACY_METRICS) - 1) / 2) * width
        values = np.array([r[key] for r in rows])
        errors = np.abs(np.array([r[f"{key}_ci"] for r in rows]).T - values)  # (2, rows)
        bars = ax_acc.bar(x + offset, values, width, yerr=errors, capsize=1.5, label=name)
        if key in chance:
            ax_acc.hlines([chance[key]] * len(rows), x + offset - width / 2, x + offset + width / 2,
                          colors=bars.patches[0].get_facecolor(), linestyles="dotted")  # fmt: skip
    ax_acc.set_ylabel("percent")
    ax_acc.set_ylim(0, 105)
    ax_acc.set_title("ShapesBench (higher is better; dotted: chance)")
    ax_acc.legend(loc="lower left", fontsize=8)
    ax_time.bar(x - 0.2, [r["seconds_per_video"] for r in rows], 0.4, color="tab:gray", label="end to end")
    ax_time.bar(x + 0.2, [r["sampling_seconds_per_video"] for r in rows], 0.4, color="tab:olive",
                label="sampling (no VAE decode)")  # fmt: skip
    ax_time.set_yscale("log")
    ax_time.set_ylabel("seconds per video (log)")
    ax_time.set_title("wall time per video")
    ax_time.legend(loc="upper right", fontsize=8)
    for ax in (ax_acc, ax_time):
        ax.set_xticks(x)
        ax.set_xticklabels(names, rotation=30, ha="right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
