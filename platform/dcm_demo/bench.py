"""ShapesBench: one prompt set and seed set through several samplers, scored from decoded MP4 pixels alone.

A *row* is a model folder plus a sampler setting (steps, guidance). Every row generates the same prompts with the
same seeds; its videos go through an MP4 round trip (what a user downloads) and are scored by
:mod:`dcm_demo.evaluate` against the attributes the prompt asked for, and by their pixel distance to the reference
row's videos (the teacher's 50-step output). Wall time per video covers prompt encoding, sampling and VAE decoding.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from dcm.config import GenerationConfig
from dcm.io.video import decode_mp4, encode_mp4
from dcm.pipeline import DCMPipeline
from dcm_demo.evaluate import pixel_distance, score_video, summarise
from dcm_demo.world import Attributes, WorldConfig, make_clip

# Benchmark clips come from seeds far from every training range of jobs/train_demo.py (VAE 0.., data 1e6..,
# VAE check 5e6..): a benchmark seed is never a training seed (its noise is new; its caption comes from the same
# finite vocabulary).
BENCH_SEEDS = 9_000_000
GENERATE_BATCH = 8


@dataclass(frozen=True, kw_only=True)
class BenchPrompt:
    seed: int
    caption: str
    attributes: Attributes


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
    metrics: dict[str, float]  # summarise() + distance_to_reference + (sampling_)seconds_per_video
    videos: np.ndarray = None  # (N, F, H, W, 3) uint8 after the MP4 round trip


def bench_prompts(num: int, world: WorldConfig, *, first_seed: int = BENCH_SEEDS) -> list[BenchPrompt]:
    """``num`` prompts drawn from the world with benchmark seeds; the same seed is the generation seed."""
    clips = [(first_seed + i, make_clip(first_seed + i, world)) for i in range(num)]
    return [BenchPrompt(seed=s, caption=c.caption, attributes=c.attributes) for s, c in clips]


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


def vae_ceiling(dcm: DCMPipeline, prompts: Sequence[BenchPrompt], world: WorldConfig) -> dict[str, float]:
    """ShapesBench of the ground-truth clips of these prompts after a round trip through the model's VAE and an MP4:
    the most any row of a model with this VAE can score (a generator can only draw what the decoder can)."""
    decoded = []
    for i in range(0, len(prompts), GENERATE_BATCH):
        clips = np.stack([make_clip(p.seed, world).frames for p in prompts[i : i + GENERATE_BATCH]])  # (B, F, H, W, 3)
        video = torch.from_numpy(clips).to(dcm.device, dcm.dtype) / 255
        decoded.append(dcm.decode(dcm.family.encode_video(dcm.pipe, video)))
    videos = through_mp4(np.concatenate(decoded), dcm.config.default_generation.fps)
    return summarise([score_video(v, p.attributes) for v, p in zip(videos, prompts)])


def _run(dcm: DCMPipeline, config: GenerationConfig, batch: Sequence[BenchPrompt]) -> torch.Tensor:
    """Latents (B, C, F', H', W') of a batch: prompt encoding and sampling."""
    prompts, seeds = [p.caption for p in batch], [p.seed for p in batch]
    return dcm.generate(prompts, seeds=seeds, config=config, output_type="latent")


def score_row(
    row: Row, videos: np.ndarray, seconds: dict[str, float], prompts: Sequence[BenchPrompt],
    reference: np.ndarray | None,
) -> RowResult:  # fmt: skip
    """Scores decoded videos against their prompts and (if given) the reference row's videos; ``seconds`` are
    :func:`generate_row`'s timings."""
    scores = [score_video(v, p.attributes) for v, p in zip(videos, prompts)]
    metrics = summarise(scores)
    if reference is not None:
        metrics["distance_to_reference"] = float(np.mean([pixel_distance(v, r) for v, r in zip(videos, reference)]))
    metrics.update(seconds)
    return RowResult(row=row, metrics=metrics, videos=videos)


COLUMNS = (
    ("steps", "steps"),
    ("NFE", "nfe"),
    ("colour %", "colour_acc"),
    ("shape %", "shape_acc"),
    ("direction %", "direction_acc"),
    ("jitter px", "jitter_px"),
    ("consistency %", "consistency"),
    ("dist. to teacher-50", "distance_to_reference"),
    ("s / video", "seconds_per_video"),
    ("speed-up", "speedup"),
    ("sampling s / video", "sampling_seconds_per_video"),
    ("sampling speed-up", "sampling_speedup"),
)


def table_rows(results: Sequence[RowResult]) -> list[dict[str, float | str]]:
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


def markdown_table(results: Sequence[RowResult]) -> str:
    """The comparison as a Markdown table (accuracies and consistency in percent, distances in [0, 1])."""
    header = "| row | " + " | ".join(title for title, _ in COLUMNS) + " |"
    lines = [header, "|---|" + "---:|" * len(COLUMNS)]
    for values in table_rows(results):
        cells = [_format(key, values.get(key)) for _, key in COLUMNS]
        lines.append(f"| {values['name']} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _format(key: str, value) -> str:
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
    return f"{value:.1f}" if np.isfinite(value) else "inf"


def chart(results: Sequence[RowResult], path: str) -> None:
    """A PNG: accuracies per row (grouped bars) and wall time per video, end to end and sampling alone (log)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = table_rows(results)
    names = [r["name"] for r in rows]
    x = np.arange(len(rows))
    fig, (ax_acc, ax_time) = plt.subplots(1, 2, figsize=(13, 4.5), gridspec_kw={"width_ratios": [3, 2]})
    metrics = (("colour_acc", "colour"), ("shape_acc", "shape"), ("direction_acc", "direction"),
               ("consistency", "consistency"))  # fmt: skip
    width = 0.8 / len(metrics)
    for i, (key, label) in enumerate(metrics):
        ax_acc.bar(x + (i - (len(metrics) - 1) / 2) * width, [r[key] for r in rows], width, label=label)
    ax_acc.set_ylabel("percent")
    ax_acc.set_ylim(0, 105)
    ax_acc.set_title("ShapesBench (higher is better)")
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
