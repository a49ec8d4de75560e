"""pipeline.dedup, image_near: band rows, the per-bucket search and the near-duplicate rule against a
brute-force reference, with any bucketing and any cut into partitions; real photos with planted variants."""

from __future__ import annotations

import io
import itertools
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image, ImageEnhance
from shard_support import sample_of

from pipeline import dedup, phash
from pipeline.dedup import DedupOptions
from pipeline.errors import ConfigError
from schemas import reject as reject_schema
from schemas.sample import sample_id_for, to_table

PHOTOS = Path(__file__).resolve().parents[1] / "golden" / "images"


def near_keys(samples: list[dict], partition: int) -> pa.Table:
    """KEY_SCHEMA image_near rows made directly from {source, scope, hashes, distance} dicts (a hash of None:
    an image without one)."""
    rows = []
    for row, entry in enumerate(samples):
        for number, value in enumerate(entry["hashes"]):
            if value is not None:
                rows.append(
                    {
                        "kind": "image_near",
                        "scope": entry["scope"],
                        "hash": bytes(16),
                        "partition": partition,
                        "row": row,
                        "source": entry["source"],
                        "key": entry["key"],
                        "sample_id": sample_id_for(entry["source"], entry["key"]),
                        "image": number,
                        "phash": value,
                        "near_distance": entry["distance"],
                    }
                )
    return pa.Table.from_pylist(rows, schema=dedup.KEY_SCHEMA)


def run_near(partitions: list[pa.Table], buckets: int, shuffle_seed: int = 0) -> tuple[pa.Table, list[int]]:
    """The stage's near road without Ray: band rows per partition, buckets, nearest per bucket, then per
    partition group (here: one) the near duplicates."""
    keys = pa.concat_tables(partitions)
    bands = pa.concat_tables([dedup.band_rows(part) for part in partitions])
    order = np.random.default_rng(shuffle_seed).permutation(bands.num_rows)
    bands = bands.take(pa.array(order, pa.int64()))
    bucket = dedup.band_bucket_of(bands, buckets).to_numpy()
    nearest = pa.concat_tables(
        [dedup.nearest_earlier(bands.filter(pa.array(bucket == b))) for b in range(buckets)]
    )
    return dedup.near_duplicates(nearest, keys)


def reference(samples: list[dict]) -> tuple[list[tuple], list[int]]:
    """(key, kept key, distance) of each near duplicate and the histogram, by brute force over all earlier
    images in scope; samples in global order."""
    found, histogram = [], [0] * 65
    for position, sample in enumerate(samples):
        best_of_sample = None
        for number, value in enumerate(sample["hashes"]):
            if value is None or value in sample["hashes"][:number]:
                continue
            candidates = [
                (phash.hamming(value, other), earlier, other_number)
                for earlier in range(position)
                if samples[earlier]["scope"] == sample["scope"]
                for other_number, other in enumerate(samples[earlier]["hashes"])
                if other is not None
            ]
            if not candidates:
                continue
            nearest = min(candidates)
            histogram[nearest[0]] += 1
            if nearest[0] <= sample["distance"] and (best_of_sample is None or nearest < best_of_sample):
                best_of_sample = nearest
        if best_of_sample is not None:
            distance, earlier, _ = best_of_sample
            found.append((sample["key"], samples[earlier]["key"], distance))
    return found, histogram


def cut(samples: list[dict], bounds: list[int]) -> list[pa.Table]:
    edges = [0, *bounds, len(samples)]
    return [near_keys(samples[a:b], index) for index, (a, b) in enumerate(itertools.pairwise(edges))]


@st.composite
def corpora(draw):
    bases = draw(st.lists(st.integers(0, 2**64 - 1), min_size=1, max_size=4))
    options = {
        name: (draw(st.sampled_from([0, 2, 6, 10, 13, 16])), draw(st.booleans())) for name in ("a", "b")
    }
    samples = []
    for number in range(draw(st.integers(0, 24))):
        source = draw(st.sampled_from(["a", "b"]))
        distance, across = options[source]
        hashes = []
        for _ in range(draw(st.integers(0, 3))):
            if draw(st.integers(0, 9)) == 0:
                hashes.append(None)
                continue
            value = draw(st.sampled_from(bases))
            for bit in draw(st.lists(st.integers(0, 63), max_size=14, unique=True)):
                value ^= 1 << bit
            hashes.append(value)
        samples.append(
            {
                "source": source,
                "scope": "" if across else source,
                "key": f"k{number}",
                "hashes": hashes,
                "distance": distance,
            }
        )
    bounds = sorted(draw(st.lists(st.integers(0, len(samples)), max_size=3)))
    return samples, bounds, draw(st.integers(1, 5)), draw(st.integers(0, 1000))


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(corpora())
def test_any_cut_and_bucketing_matches_brute_force(corpus):
    samples, bounds, buckets, seed = corpus
    duplicates, histogram = run_near(cut(samples, bounds), buckets, seed)
    expected, expected_histogram = reference(samples)
    got = list(
        zip(
            duplicates["key"].to_pylist(),
            duplicates["kept_key"].to_pylist(),
            duplicates["distance"].to_pylist(),
            strict=True,
        )
    )
    assert got == expected
    assert set(duplicates["kind"].to_pylist()) <= {"image_near"}
    # Every pair within a source's distance is found, so the histogram is exact up to the smallest one;
    # beyond it only candidates that shared a band are counted.
    smallest = min((s["distance"] for s in samples), default=0)
    assert histogram[: smallest + 1] == expected_histogram[: smallest + 1]
    assert sum(histogram) <= sum(expected_histogram)


def test_a_flood_of_identical_hashes_collapses_to_the_first_copy():
    value = 0x0123_4567_89AB_CDEF
    samples = [
        {"source": "s", "scope": "", "key": f"k{i}", "hashes": [value, value], "distance": 10}
        for i in range(3000)
    ]
    keys = near_keys(samples, 0)
    bands = dedup.band_rows(keys)
    assert bands.num_rows == 6000 * (4 * 12 + 2 * 11)  # per image and band: 1 index + 1 probe per bit
    duplicates, histogram = dedup.near_duplicates(dedup.nearest_earlier(bands), keys)
    assert duplicates.num_rows == 2999
    assert set(duplicates["kept_key"].to_pylist()) == {"k0"} and set(duplicates["distance"].to_pylist()) == {
        0
    }
    assert histogram[0] == 2999 and sum(histogram) == 2999  # the second image of each sample is left out


def test_band_rows_and_buckets():
    samples = [{"source": "s", "scope": "", "key": "k", "hashes": [2**64 - 1], "distance": 5}]
    bands = dedup.band_rows(near_keys(samples, 3))
    assert bands.schema == dedup.BAND_SCHEMA
    assert bands["index"].to_pylist() == [True] * 6  # radius 5 // 6 = 0: index rows only
    assert bands["value"].to_pylist() == [2047, 2047, 2047, 2047, 1023, 1023]
    assert bands["partition"].to_pylist() == [3] * 6
    wide = dedup.band_rows(near_keys([{**samples[0], "distance": 12}], 0))
    assert wide.num_rows == 6 + 4 * (11 + 55) + 2 * (10 + 45)  # radius 2
    assert (
        wide.filter(pa.array(~np.array(wide["index"].to_pylist())))["source"].null_count == wide.num_rows - 6
    )
    buckets = dedup.band_bucket_of(wide, 7).to_numpy()
    assert buckets.min() >= 0 and buckets.max() < 7 and len(set(buckets.tolist())) > 1
    assert dedup.band_bucket_of(wide, 7).equals(dedup.band_bucket_of(wide.slice(0), 7))
    with pytest.raises(ValueError, match="at least 1"):
        dedup.band_bucket_of(wide, 0)


def test_empty_near_inputs():
    assert dedup.band_rows(dedup.KEY_SCHEMA.empty_table()).num_rows == 0
    assert dedup.nearest_earlier(dedup.BAND_SCHEMA.empty_table()).schema == dedup.NEAREST_SCHEMA
    duplicates, histogram = dedup.near_duplicates(
        dedup.NEAREST_SCHEMA.empty_table(), dedup.KEY_SCHEMA.empty_table()
    )
    assert duplicates.num_rows == 0 and histogram == [0] * 65


# ----------------------------------------------------------------------------------------------------
# real photos through sample_keys


def encoded(picture: Image.Image, fmt: str = "PNG", **options) -> bytes:
    buffer = io.BytesIO()
    picture.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def photo_sample(source: str, key: str, images: list[bytes]) -> dict:
    content = [
        {"turn": 0, "role": None, "type": "image", "text": None, "image": i} for i in range(len(images))
    ]
    content.append({"turn": 0, "role": None, "type": "text", "text": f"caption of {key}", "image": None})
    pictures = [
        {"bytes": data, "path": f"{key}-{i}", "width": 1, "height": 1, "format": "PNG"}
        for i, data in enumerate(images)
    ]
    return sample_of(source, key, "caption", content, pictures)


@pytest.fixture(scope="module")
def photos() -> dict[str, Image.Image]:
    return {path.stem: Image.open(path).convert("RGB") for path in sorted(PHOTOS.glob("skimage_*.png"))}


def test_planted_variants_of_real_photos_are_dropped_and_distinct_photos_kept(photos):
    astronaut, camera, horse = photos["skimage_astronaut"], photos["skimage_camera"], photos["skimage_horse"]
    rows = [
        photo_sample("web", "astronaut", [encoded(astronaut)]),
        photo_sample("web", "camera", [encoded(camera)]),
        photo_sample("web", "horse", [encoded(horse)]),
        photo_sample("web", "astronaut-jpeg", [encoded(astronaut, "JPEG", quality=25)]),
        photo_sample("web", "camera-small", [encoded(camera.resize((300, 300), Image.Resampling.BILINEAR))]),
        photo_sample("web", "horse-bright", [encoded(ImageEnhance.Brightness(horse).enhance(1.1))]),
        photo_sample("web", "no-image", []),
        photo_sample("web", "undecodable", [b"not an image"]),
    ]
    options = DedupOptions(by=("image", "image_near"))
    keys = dedup.sample_keys(to_table(rows), options, 0)
    near = keys.filter(pa.array([kind == "image_near" for kind in keys["kind"].to_pylist()]))
    assert near["key"].to_pylist() == [r["key"] for r in rows[:6]]  # none for no image or undecodable bytes
    assert set(near["near_distance"].to_pylist()) == {dedup.DEFAULT_NEAR_DISTANCE}
    assert (
        keys.filter(pa.array([k != "image_near" for k in keys["kind"].to_pylist()]))["phash"].null_count == 7
    )
    duplicates, histogram = run_near([keys], buckets=2)
    assert duplicates["key"].to_pylist() == ["astronaut-jpeg", "camera-small", "horse-bright"]
    assert duplicates["kept_key"].to_pylist() == ["astronaut", "camera", "horse"]
    assert all(d <= dedup.DEFAULT_NEAR_DISTANCE for d in duplicates["distance"].to_pylist())
    assert sum(histogram) >= 3
    rejects = dedup.reject_rows(dedup.one_per_sample(duplicates))
    assert rejects.schema == reject_schema.SCHEMA
    first = rejects.to_pylist()[0]
    assert first["reason"] == "near_duplicate_image" and first["stage"] == "dedup"
    assert first["value"] == duplicates["distance"].to_pylist()[0]
    assert first["detail"] == (
        f"an image {int(first['value'])} bits (pHash) from an image of sample "
        f"{sample_id_for('web', 'astronaut')} (web: astronaut)"
    )


def test_the_cut_into_partitions_does_not_change_what_is_dropped(photos):
    pictures = list(photos.values())
    rows = []
    for number in range(12):
        picture = pictures[number % len(pictures)]
        if number >= len(pictures):
            picture = picture.resize((picture.width * (7 + number % 3) // 10, picture.height * 8 // 10))
        rows.append(photo_sample("s", f"k{number}", [encoded(picture, "JPEG", quality=40 + number)]))
    options = DedupOptions(by=("image_near",))
    results = []
    for bounds in ([0, 12], [0, 5, 12], [0, 1, 2, 7, 11, 12]):
        parts = [
            dedup.sample_keys(to_table(rows[a:b]), options, i)
            for i, (a, b) in enumerate(itertools.pairwise(bounds))
        ]
        duplicates, histogram = run_near(parts, buckets=3)
        results.append((duplicates["key"].to_pylist(), duplicates["kept_key"].to_pylist(), histogram))
    assert results[0] == results[1] == results[2]
    assert results[0][0] == [f"k{n}" for n in range(len(pictures), 12)]


def test_exact_kinds_win_the_reason_and_near_only_samples_say_near(photos):
    astronaut = encoded(photos["skimage_astronaut"])
    variant = encoded(photos["skimage_astronaut"], "JPEG", quality=30)
    rows = [
        photo_sample("s", "first", [astronaut]),
        photo_sample("s", "same-bytes", [astronaut]),
        photo_sample("s", "variant", [variant]),
    ]
    keys = dedup.sample_keys(to_table(rows), DedupOptions(by=("image", "image_near")), 0)
    near, _ = run_near([keys], buckets=1)
    found = dedup.one_per_sample(pa.concat_tables([dedup.find_duplicates(keys), near]))
    assert list(zip(found["key"].to_pylist(), found["kind"].to_pylist(), strict=True)) == [
        ("same-bytes", "image"),
        ("variant", "image_near"),
    ]
    assert found["distance"].to_pylist()[0] is None
    reasons = dedup.reject_rows(found)["reason"].to_pylist()
    assert reasons == ["duplicate_image", "near_duplicate_image"]
    assert dedup.reject_rows(found)["value"].to_pylist()[0] is None


# ----------------------------------------------------------------------------------------------------
# config


def test_parse_near_distance():
    assert dedup.parse_dedup({"by": ["image_near"]}, "x") == DedupOptions(by=("image_near",))
    assert dedup.parse_dedup({"by": ["image_near", "text"], "near_distance": 4}, "x") == DedupOptions(
        by=("text", "image_near"), near_distance=4
    )


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ({"by": ["image"], "near_distance": 4}, "sources[2].dedup.near_distance: only used with image_near"),
        (
            {"by": ["image_near"], "near_distance": 17},
            "sources[2].dedup.near_distance: must be an integer from 0",
        ),
        (
            {"by": ["image_near"], "near_distance": -1},
            "sources[2].dedup.near_distance: must be an integer from 0",
        ),
        ({"by": ["image_near"], "near_distance": 2.5}, "sources[2].dedup.near_distance: must be an integer"),
        ({"by": ["image_near"], "near_distance": True}, "sources[2].dedup.near_distance: must be an integer"),
        (["near"], "sources[2].dedup.by: 'near' is not one of sample, image, text, image_near"),
    ],
)
def test_parse_near_distance_errors_name_the_key(value, message):
    with pytest.raises(ConfigError) as raised:
        dedup.parse_dedup(value, "sources[2].dedup")
    assert str(raised.value).startswith(message)


def test_options_reject_a_distance_out_of_range():
    with pytest.raises(ValueError, match="near_distance"):
        DedupOptions(by=("image_near",), near_distance=dedup.MAX_NEAR_DISTANCE + 1)
