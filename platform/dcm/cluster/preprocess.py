"""Real videos + captions -> distillation training data, with Ray Data.

    captions table -> from_items -> map_batches(decode + clip, CPU tasks) -> map_batches(EncodeClips, encoder actors)
                   -> driver writes shards with dcm.data.DatasetWriter (resumable) + rejects.parquet

The caption table is a JSON list of ``{"path", "caption"}`` (the FastVideo / Mixkit layout) or a CSV / Parquet with
``path`` and ``caption`` columns; paths are relative to ``--videos`` (a folder or ``s3://`` prefix) unless absolute.
A video that cannot give a clip (unreadable, too short, wrong aspect) becomes a row of ``rejects.parquet`` with the
reason; the job goes on. Re-running the same command skips videos already in finished shards.
"""

from __future__ import annotations

import io
import json
import logging
import os
import tempfile
import time
from dataclasses import dataclass

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from dcm.data import META_NAME, DatasetWriter
from dcm.io.model_folder import load_pipeline
from dcm.io.storage import Store, is_s3
from dcm.io.video import probe, read_frames_at
from dcm.preprocess import ClipConfig, ClipRejected, resize_center_crop, sample_frame_indices

logger = logging.getLogger(__name__)

REJECTS_NAME = "rejects.parquet"
CAPTION_COLUMNS = ("path", "caption")


@dataclass(frozen=True, kw_only=True)
class PreprocessConfig:
    """A preprocessing run.

    Args:
        videos: folder or ``s3://`` prefix the caption table's relative paths are under.
        captions: JSON / CSV / Parquet caption table (local or ``s3://``).
        model: the teacher whose VAE and text encoder make the latents and embeddings.
        output: dataset folder or ``s3://`` prefix.
        clip: target frames, size and fps.
        shard_size: samples per shard.
        batch_size: clips per encoder call.
        concurrency: encoder actors; num_gpus_per_actor GPUs each (0 = CPU).
    """

    videos: str
    captions: str
    model: str
    output: str
    clip: ClipConfig
    shard_size: int = 64
    batch_size: int = 4
    concurrency: int = 1
    num_gpus_per_actor: float = 0.0
    num_cpus_per_actor: float = 0.5
    endpoint_url: str | None = None


def read_captions(config: PreprocessConfig) -> list[dict]:
    """The caption table as ``[{"path", "caption"}]``; fails fast with the offending row or column."""
    store = Store(os.path.dirname(config.captions) or ".", config.endpoint_url)
    name = os.path.basename(config.captions)
    try:
        data = store.get_bytes(name)
    except (FileNotFoundError, OSError) as err:
        raise ValueError(f"caption table {config.captions!r} cannot be read: {err}") from err
    if name.endswith(".json"):
        rows = json.loads(data)
        if not isinstance(rows, list):
            raise ValueError(f"{config.captions}: expected a JSON list of {{path, caption}} objects")
        frame = pd.DataFrame(rows)
    elif name.endswith(".csv"):
        frame = pd.read_csv(io.BytesIO(data))
    elif name.endswith(".parquet"):
        frame = pq.read_table(io.BytesIO(data)).to_pandas()
    else:
        raise ValueError(f"caption table must be .json, .csv or .parquet, got {config.captions!r}")
    missing = [c for c in CAPTION_COLUMNS if c not in frame.columns]
    if missing:
        raise ValueError(f"caption table {config.captions} lacks column(s) {missing}; it has {list(frame.columns)}")
    return frame[list(CAPTION_COLUMNS)].astype(str).to_dict("records")


def video_location(videos: str, path: str) -> str:
    if is_s3(path) or os.path.isabs(path):
        return path
    return f"{videos.rstrip('/')}/{path}"


def decode_clips(batch: pd.DataFrame, *, videos: str, clip: ClipConfig, endpoint_url: str | None) -> pd.DataFrame:
    """Ray Data task: decode each video into a clip, or record why it cannot give one."""
    out = []
    for row in batch.to_dict("records"):
        location = video_location(videos, row["path"])
        result = {"path": row["path"], "caption": row["caption"], "clip": None, "reason": None, "message": None}
        try:
            with tempfile.TemporaryDirectory() as tmp:
                local = location
                if is_s3(location):
                    local = os.path.join(tmp, "video")
                    store = Store(os.path.dirname(location), endpoint_url)
                    if not store.exists(os.path.basename(location)):
                        raise ClipRejected("missing", f"{location} does not exist")
                    with open(local, "wb") as f:
                        f.write(store.get_bytes(os.path.basename(location)))
                elif not os.path.exists(local):
                    raise ClipRejected("missing", f"{location} does not exist")
                meta = probe(local)
                indices = sample_frame_indices(meta.num_frames_estimate, meta.fps, clip)
                frames = read_frames_at(local, indices)
            result["clip"] = resize_center_crop(frames, clip).tobytes()
        except ClipRejected as err:
            result.update(reason=err.reason, message=str(err))
        except ValueError as err:
            result.update(reason="unreadable", message=str(err))
        out.append(result)
    return pd.DataFrame(out)


class EncodeClips:
    """Ray Data actor: the teacher's VAE encoder and text encoder, loaded once."""

    def __init__(self, model: str, clip: ClipConfig) -> None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
        self.pipeline = load_pipeline(model, device=device)
        self.clip = clip

    def __call__(self, batch: pd.DataFrame) -> pd.DataFrame:
        ok = batch[batch["reason"].isna()]
        rejected = batch[batch["reason"].notna()]
        rows = [{"path": r["path"], "caption": r["caption"], "reason": r["reason"], "message": r["message"],
                 "tensors": None} for r in rejected.to_dict("records")]  # fmt: skip
        if len(ok):
            shape = (self.clip.num_frames, self.clip.height, self.clip.width, 3)
            pixels = np.stack([np.frombuffer(b, dtype=np.uint8).reshape(shape) for b in ok["clip"]])
            video = torch.from_numpy(pixels).float().div(255).to(self.pipeline.device)
            latents = self.pipeline.family.encode_video(self.pipeline.pipe, video).float().cpu()
            cond = self.pipeline.encode_prompts(list(ok["caption"]))
            for i, r in enumerate(ok.to_dict("records")):
                tensors = {"latents": latents[i].numpy(), **{k: v[i].float().cpu().numpy() for k, v in cond.items()}}
                buffer = io.BytesIO()
                np.savez(buffer, **tensors)
                rows.append({"path": r["path"], "caption": r["caption"], "reason": None, "message": None,
                             "tensors": buffer.getvalue()})  # fmt: skip
        return pd.DataFrame(rows)


def run_preprocess(config: PreprocessConfig, *, progress: bool = True) -> dict:
    """Runs the job on the connected Ray cluster; returns a summary (samples, rejects, seconds, output)."""
    import ray
    from tqdm import tqdm

    start = time.perf_counter()
    rows = read_captions(config)
    output = Store(config.output, config.endpoint_url)
    if output.exists(META_NAME):
        logger.info("%s is complete already (meta.json exists); nothing to do", config.output)
        meta = json.loads(output.get_bytes(META_NAME))
        return {
            "samples": meta["num_samples"],
            "rejects": None,
            "seconds": 0.0,
            "output": output.root,
            "skipped": True,
        }
    teacher = load_pipeline(config.model)
    writer = DatasetWriter(config.output, family=teacher.config.family, negative=teacher.encode_prompts([""]),
                           shard_size=config.shard_size, endpoint_url=config.endpoint_url,
                           source=f"videos {config.videos}, captions {config.captions}", resume=True)  # fmt: skip
    done = writer.sources_written
    todo = [r for r in rows if r["path"] not in done]
    logger.info("%d videos in the caption table, %d already in finished shards, %d to do", len(rows), len(done),
                len(todo))  # fmt: skip
    rejects = []
    if todo:
        context = ray.data.DataContext.get_current()
        context.enable_progress_bars = False
        ds = ray.data.from_items(todo, override_num_blocks=max(1, min(len(todo), len(todo) // config.batch_size)))
        ds = ds.map_batches(
            decode_clips,
            batch_format="pandas",
            batch_size=config.batch_size,
            fn_kwargs={"videos": config.videos, "clip": config.clip, "endpoint_url": config.endpoint_url},
            num_cpus=config.num_cpus_per_actor,
        )
        ds = ds.map_batches(EncodeClips, fn_constructor_kwargs={"model": config.model, "clip": config.clip},
                            batch_format="pandas", batch_size=config.batch_size,
                            compute=ray.data.ActorPoolStrategy(size=config.concurrency),
                            num_cpus=config.num_cpus_per_actor, num_gpus=config.num_gpus_per_actor)  # fmt: skip
        with tqdm(total=len(todo), unit="video", disable=not progress, desc="encoding") as bar:
            for part in ds.iter_batches(batch_size=None, batch_format="pandas"):
                for r in part.to_dict("records"):
                    if r["tensors"] is None:
                        rejects.append({k: r[k] for k in ("path", "caption", "reason", "message")})
                        continue
                    arrays = np.load(io.BytesIO(r["tensors"]))
                    latents = torch.from_numpy(arrays["latents"])[None]
                    cond = {k: torch.from_numpy(arrays[k])[None] for k in arrays.files if k != "latents"}
                    writer.add(latents, cond, [r["caption"]], [r["path"]])
                bar.update(len(part))
                bar.set_postfix(rejected=len(rejects))
    sink = io.BytesIO()
    schema = pa.schema([(c, pa.string()) for c in ("path", "caption", "reason", "message")])
    pq.write_table(pa.Table.from_pylist(rejects, schema=schema), sink)
    output.put_bytes(REJECTS_NAME, sink.getvalue())
    meta = writer.close()
    seconds = time.perf_counter() - start
    return {"samples": meta["num_samples"], "rejects": len(rejects), "seconds": seconds, "output": output.root,
            "skipped": False}  # fmt: skip
