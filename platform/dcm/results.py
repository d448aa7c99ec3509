"""The batch job's results manifest: one row per manifest row, its status and where its video went."""

from __future__ import annotations

import pyarrow as pa

STATUS_OK, STATUS_ERROR, STATUS_SKIPPED = "ok", "error", "skipped"

RESULT_SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("prompt", pa.string()),
        ("seed", pa.int64()),
        ("negative_prompt", pa.string()),
        ("num_frames", pa.int64()),
        ("height", pa.int64()),
        ("width", pa.int64()),
        ("num_inference_steps", pa.int64()),
        ("fps", pa.int64()),
        ("uri", pa.string()),
        ("bytes", pa.int64()),
        ("status", pa.string()),
        ("error", pa.string()),
        ("seconds", pa.float64()),
        ("batch_size", pa.int64()),
        ("model", pa.string()),
        ("model_version", pa.string()),
    ]
)
