"""A few hundred random manifest rows through the real batch job on tiny-wan: the job never aborts, every valid row
gets its video, every invalid row is an ``error`` naming its field, and the results and the gallery are written.

Rows are drawn from a valid template (tiny sizes: at most 9x32x32, 1-2 steps) and most get exactly one bad field, so
the test knows which field each error must name: wrong types, fractions, huge numbers, infinities, blanks, overlong
text, sizes the model's positional table cannot hold, and duplicate ids. NaN in an optional column means "missing".
"""

import math
import os
import random

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from dcm.cluster.batch import BatchConfig, run_batch
from dcm.manifest import JobDefaults

pytestmark = [pytest.mark.ray, pytest.mark.slow]

NUM_ROWS = 300
NUM_VALID = 24
NUM_DUPLICATE_PAIRS = 6
FUZZ_SEED = 20261201
TEXT = "abcdefghij XYZ éü漢字🙂\u200bשלום"
# One bad value per row: the field whose error it must be, and the value (each column keeps one Parquet type).
BAD_VALUES = {
    "prompt": ["", "   ", None, "x" * 2001],
    "negative_prompt": ["y" * 2001],
    "id": ["i" * 300],
    "seed": [1.5, float(2**70), -1.0, math.inf, -math.inf],
    "num_frames": [10.0, 0.0, -3.0, 1e30, 8.5, 133.0],
    "height": [36, 0, -16, 100_000, 528],  # 528: a multiple of 16 beyond tiny-wan's table (512)
    "width": [20, 2**40, 1024],
    "num_inference_steps": [0.0, 50.0, 2.5, 9.0],
    "fps": [0, -1, 1000, 10**12],
}
DTYPES = {"seed": "float64", "num_frames": "float64", "num_inference_steps": "float64", "height": "Int64",
          "width": "Int64", "fps": "Int64"}  # fmt: skip


def valid_row(rng: random.Random, i: int) -> dict:
    prompt = "".join(rng.choice(TEXT) for _ in range(rng.randint(1, 40))).strip() or "p"
    return {
        "id": rng.choice([None, f"row-{i}", f"ü/../{i}", f"Clip {i}"]),  # None: derived from the content
        "prompt": f"{prompt} #{i}",
        "negative_prompt": rng.choice([None, "blurry"]),
        "seed": rng.choice([math.nan, float(rng.randint(0, 2**52))]),
        "num_frames": rng.choice([math.nan, 1.0, 5.0, 9.0]),
        "height": rng.choice([None, 16, 32]),
        "width": rng.choice([None, 16, 32]),
        "num_inference_steps": rng.choice([math.nan, 1.0, 2.0]),
        "fps": rng.choice([None, 1, 24, 120]),
    }


def fuzz_rows() -> tuple[list[dict], list[str | None]]:
    """(rows, the field each row's error must name; None for a valid row)."""
    rng = random.Random(FUZZ_SEED)
    rows, expected = [], []
    for i in range(NUM_ROWS):
        row = valid_row(rng, i)
        if i < NUM_VALID:
            expected.append(None)
        elif i < NUM_VALID + 2 * NUM_DUPLICATE_PAIRS:
            row["id"] = f"twin-{(i - NUM_VALID) // 2}"
            expected.append("id")
        else:
            field = rng.choice(sorted(BAD_VALUES))
            row[field] = rng.choice(BAD_VALUES[field])
            expected.append(field)
        rows.append(row)
    order = list(range(NUM_ROWS))
    rng.shuffle(order)
    return [rows[i] for i in order], [expected[i] for i in order]


def test_random_manifest_rows(ray_cluster, tmp_path):
    rows, expected = fuzz_rows()
    frame = pd.DataFrame(rows).astype(DTYPES)
    pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), tmp_path / "fuzz.parquet")
    out = tmp_path / "out"
    defaults = JobDefaults(num_frames=9, height=32, width=32, num_inference_steps=2)
    config = BatchConfig(manifest=str(tmp_path / "fuzz.parquet"), output=str(out), model="tiny-wan", defaults=defaults,
                         batch_size=4)  # fmt: skip
    summary = run_batch(config, progress=False)

    records = summary.records().set_index("row").sort_index()
    assert list(records.index) == list(range(NUM_ROWS))  # one record per row, whatever it held
    for row, field in enumerate(expected):
        r = records.loc[row]
        if field is None:
            assert r["status"] == "ok", (rows[row], r["error"])
            assert os.path.getsize(r["uri"]) == r["bytes"] > 0
        else:
            assert r["status"] == "error" and r["error_field"] == field, (field, rows[row], r["error"])
            assert field in r["error"] or field == "id", r["error"]
    assert summary.count("ok") == NUM_VALID
    view = pq.read_table(out / "results.parquet").to_pandas()
    assert (view["status"] == "ok").sum() == NUM_VALID and (out / "index.html").exists()
    assert np.isin(view["id"].dropna(), records["id"].dropna()).all()
