"""Preprocessing throughput on the tiny Wan VAE: videos/s of the Ray Data job, and decode vs encode time shares.

    .venv/bin/python bench/preprocess_throughput.py [--videos 32]

The shares are measured in-process over the same videos with the job's own functions (decode_clips, EncodeClips).
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time

import pandas as pd

from dcm.cluster.preprocess import EncodeClips, PreprocessConfig, decode_clips, run_preprocess
from dcm.cluster.runtime import ray_session
from dcm.io.video import write_mp4
from dcm.preprocess import ClipConfig
from dcm_demo.synthetic import world_video

CLIP = ClipConfig(num_frames=17, height=64, width=64, fps=8)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--videos", type=int, default=32, help="videos to preprocess")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        rows = []
        for i in range(args.videos):  # 3 s of 24 fps 96x128 video each
            write_mp4(world_video(i, num_frames=72, height=96, width=128)[0], os.path.join(tmp, f"{i}.mp4"),
                      fps=24)  # fmt: skip
            rows.append({"path": f"{i}.mp4", "caption": f"a square moving, clip {i}"})
        with open(os.path.join(tmp, "captions.json"), "w") as f:
            json.dump(rows, f)

        start = time.perf_counter()
        decoded = decode_clips(pd.DataFrame(rows), videos=tmp, clip=CLIP, endpoint_url=None)
        decode_s = time.perf_counter() - start
        encoder = EncodeClips("tiny-wan", CLIP)
        start = time.perf_counter()
        encoder(decoded)
        encode_s = time.perf_counter() - start

        config = PreprocessConfig(videos=tmp, captions=os.path.join(tmp, "captions.json"), model="tiny-wan",
                                  output=os.path.join(tmp, "out"), clip=CLIP)  # fmt: skip
        with ray_session():
            summary = run_preprocess(config, progress=False)
    total = decode_s + encode_s
    print(f"{args.videos} videos (72 frames 96x128 -> clips of 17x64x64), tiny Wan VAE, CPU")
    print(
        f"in-process: decode + clip {decode_s:.2f} s ({100 * decode_s / total:.0f}%), "
        f"VAE + text encode {encode_s:.2f} s ({100 * encode_s / total:.0f}%), {args.videos / total:.1f} videos/s"
    )
    print(
        f"ray data job end to end: {summary['seconds']:.2f} s, {args.videos / summary['seconds']:.2f} videos/s "
        f"(includes actor start and model load)"
    )


if __name__ == "__main__":
    main()
