"""jobs.dedup on Ray: exact and near-duplicate keys staged per partition, shuffled by bucket and band, the
duplicates staged per partition and the statistics in the stage's marker, whatever the bucket count."""

from __future__ import annotations

import io
import sys
from pathlib import Path

import pyarrow as pa
import pytest
from PIL import Image, ImageEnhance

from jobs import dedup as stage
from pipeline import dedup, shards
from pipeline.dedup import DedupOptions
from schemas.sample import to_table

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "pipeline"))
from shard_support import sample_of

PHOTOS = Path(__file__).resolve().parents[1] / "golden" / "images"


def jpeg(picture: Image.Image, quality: int) -> bytes:
    buffer = io.BytesIO()
    picture.save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


def caption(key: str, words: str, data: bytes) -> dict:
    content = [
        {"turn": 0, "role": None, "type": "image", "text": None, "image": 0},
        {"turn": 0, "role": None, "type": "text", "text": words, "image": None},
    ]
    image = {"bytes": data, "path": f"{key}.jpg", "width": 1, "height": 1, "format": "JPEG"}
    return sample_of("web", key, "caption", content, [image])


def corpus() -> list[list[dict]]:
    """Three partitions: photos, their variants later (some in the same partition), a repeated caption."""
    photos = [Image.open(path).convert("RGB") for path in sorted(PHOTOS.glob("skimage_*.png"))]
    astronaut, camera, horse = photos
    return [
        [caption("a", "an astronaut", jpeg(astronaut, 90)), caption("c", "a camera man", jpeg(camera, 90))],
        [
            caption("a-small", "a small astronaut", jpeg(astronaut.resize((256, 256)), 80)),
            caption("h", "a horse", jpeg(horse, 90)),
            caption("c-text", "A camera  man", jpeg(ImageEnhance.Brightness(horse).enhance(0.9), 70)),
        ],
        [
            caption("h-low", "a grainy horse", jpeg(horse, 15)),
            caption("fresh", "nothing alike", jpeg(camera.rotate(90), 90)),
        ],
    ]


@pytest.mark.timeout(300)
def test_run_dedup_stages_exact_and_near_duplicates_per_partition(ray_session, tmp_path):
    options = DedupOptions(by=("text", "image_near"))
    out = shards.OutputDir(str(tmp_path))
    keyed, total = [], 0
    for order, rows in enumerate(corpus()):
        keys = dedup.sample_keys(to_table(rows), options, order)
        path = f"{shards.STAGING}/keys/p{order}.parquet"
        out.write_table(path, keys, "none")
        keyed.append((order, f"p{order}", path))
        total += keys.num_rows
    results = []
    for cpus in (1, 3):  # one bucket and partition group, or three of each
        count = stage.run_dedup(str(tmp_path), keyed, total, cpus=cpus, task_cpus=0.5)
        staged = {pid: stage.staged_duplicates(out, pid) for _, pid, _ in keyed}
        assert staged["p0"] is None
        rows = pa.concat_tables([table for table in staged.values() if table is not None])
        assert rows.schema == dedup.DUPLICATE_SCHEMA and rows.num_rows == count
        marker = out.read_json(stage.DONE)
        results.append(
            (
                sorted(
                    zip(
                        rows["key"].to_pylist(),
                        rows["kind"].to_pylist(),
                        rows["kept_key"].to_pylist(),
                        strict=True,
                    )
                ),
                {name: value for name, value in marker.items() if name != "buckets"},
            )
        )
    assert results[0] == results[1]
    found, marker = results[0]
    assert found == [
        ("a-small", "image_near", "a"),
        ("c-text", "text", "c"),
        ("h-low", "image_near", "h"),
    ]
    assert marker["duplicates"] == 3 and marker["near_duplicates"] == 2
    histogram = marker["near_distance_histogram"]
    # c-text's image (the horse darkened) is near h too: counted, though its reason is the exact text
    assert len(histogram) == 65 and sum(histogram[: dedup.DEFAULT_NEAR_DISTANCE + 1]) == 3


@pytest.mark.timeout(300)
def test_without_image_near_the_marker_has_no_near_statistics(ray_session, tmp_path):
    out = shards.OutputDir(str(tmp_path))
    rows = corpus()[0] + corpus()[1]
    keys = dedup.sample_keys(to_table(rows), DedupOptions(by=("text",)), 0)
    out.write_table(f"{shards.STAGING}/keys/p0.parquet", keys, "none")
    assert (
        stage.run_dedup(
            str(tmp_path), [(0, "p0", f"{shards.STAGING}/keys/p0.parquet")], keys.num_rows, 2, 0.5
        )
        == 1
    )
    assert out.read_json(stage.DONE) == {"duplicates": 1, "buckets": 2}
