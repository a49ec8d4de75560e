"""Filters and deduplication in the pretokenize job, end to end through Ray: planted duplicates within and
across sources are dropped exactly once with the earliest copy kept, whatever the input partitioning;
filter drops are reject rows with their values; counts reconcile; the statistics report shows the filtered
distributions."""

from __future__ import annotations

import io
import itertools
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from jobs import pretokenize
from jobs.config import load_config
from pipeline.verify import verify

REPO = Path(__file__).resolve().parents[2]


def jpeg(size: tuple[int, int], seed: int) -> bytes:
    """A small JPEG whose bytes differ by `seed` (a different colour)."""
    buffer = io.BytesIO()
    Image.new("RGB", size, ((seed * 37) % 256, (seed * 91) % 256, (seed * 53) % 256)).save(buffer, "JPEG")
    return buffer.getvalue()


def records() -> dict[str, list[tuple[bytes, str]]]:
    """(image bytes, caption) records of two sources, in input order, with duplicates planted:

    - a[3] has a[1]'s image under another caption (an image duplicate within the source);
    - a[9] has a[2]'s caption, changed in case, spacing and width (a text duplicate);
    - a[10] is an exact copy of a[5] (a sample duplicate, also an image and text duplicate);
    - b[0] has a[0]'s image (an image duplicate across sources); b[2] has b[1]'s image in both.
    Filters on source a: a[6] is 30 px tall (min_image_side 32), a[7] is 400×50 (max_aspect_ratio 6),
    a[8]'s caption is 2 characters long (min_text_chars 3).
    """
    a = [(jpeg((64 + 8 * i, 48 + 4 * i), i), f"Picture number {i} of the first source.") for i in range(11)]
    a[3] = (a[1][0], "Another caption for the same picture.")
    a[6] = (jpeg((64, 30), 6), "A picture too short for the filter.")
    a[7] = (jpeg((400, 50), 7), "A picture too wide for the filter.")
    a[8] = (a[8][0], "ok")
    a[9] = (a[9][0], "  PICTURE   number 2 of the ＦＩＲＳＴ source. ")
    a[10] = a[5]
    b = [(a[0][0], "The second source shows the first picture."), (jpeg((80, 80), 99), "Unique one.")]
    b.append((b[1][0], "Same picture again in the second source."))
    return {"a": a, "b": b}


def write_corpus(folder: Path, split_a: list[int]) -> Path:
    """The records as Parquet files (source a cut at `split_a`), and a config with filters and dedup."""
    for name, rows in records().items():
        cuts = [0, *split_a, len(rows)] if name == "a" else [0, len(rows)]
        (folder / name).mkdir(parents=True)
        for part, (start, end) in enumerate(itertools.pairwise(cuts)):
            chunk = rows[start:end]
            table = pa.table(
                {
                    "image": [
                        {"bytes": data, "path": f"{name}-{start + i}.jpg"}
                        for i, (data, _) in enumerate(chunk)
                    ],
                    "text": [text for _, text in chunk],
                }
            )
            pq.write_table(table, folder / name / f"part-{part:02d}.parquet")
    config = folder / "job.yaml"
    config.write_text(
        "model_shape: tiny\n"
        "sources:\n"
        "  - name: a\n    format: parquet\n    path: a\n"
        "    filters: {min_image_side: 32, max_aspect_ratio: 6, min_text_chars: 3}\n"
        "    dedup: [sample, image, text]\n"
        "  - {name: b, format: parquet, path: b, dedup: {by: [image]}}\n"
        "output: {dir: out, shard_target_bytes: 64KiB}\n"
        "ray: {num_cpus: 2}\n"
    )
    return config


def run(config: Path) -> tuple[dict, pa.Table, pa.Table]:
    printed = io.StringIO()
    assert pretokenize.run(load_config(config), out_stream=printed) == 0
    (config.parent / "printed.txt").write_text(printed.getvalue())
    out = config.parent / "out"
    manifest = json.loads((out / "manifest.json").read_text())
    rows = pa.concat_tables(pq.read_table(out / e["path"]) for e in manifest["shards"])
    rejects = pa.concat_tables(pq.read_table(out / e["path"]) for e in manifest["rejects"])
    return manifest, rows, rejects


def record_of(source: str, key: str, split_a: list[int]) -> str:
    """`a3` for the fourth record of source a, from its key `part-NN.parquet#offset`."""
    name, offset = key.rsplit("#", 1)
    part = int(name.split("part-")[1].split(".")[0])
    starts = [0, *split_a] if source == "a" else [0]
    return f"{source}{starts[part] + int(offset)}"


KEPT = ["a0", "a1", "a2", "a4", "a5", "b1"]
DROPPED = {
    "a3": ("duplicate_image", "a1"),
    "a6": ("image_too_small", 30.0),
    "a7": ("extreme_aspect_ratio", 8.0),
    "a8": ("text_too_short", 2.0),
    "a9": ("duplicate_text", "a2"),
    "a10": ("duplicate_sample", "a5"),
    "b0": ("duplicate_image", "a0"),
    "b2": ("duplicate_image", "b1"),
}


def outcome(config: Path, split_a: list[int]) -> tuple[dict, list[str], dict[str, tuple]]:
    """The manifest, the kept records and the dropped ones with (reason, value or kept record)."""
    manifest, rows, rejects = run(config)
    kept = sorted(record_of(r["source"], r["key"], split_a) for r in rows.to_pylist())
    ids = {r["sample_id"]: record_of(r["source"], r["key"], split_a) for r in rows.to_pylist()}
    dropped = {}
    for reject in rejects.to_pylist():
        record = record_of(reject["source"], reject["key"], split_a)
        if reject["stage"] == "dedup":
            kept_id = reject["detail"].split("sample ")[1].split(" ")[0]
            dropped[record] = (reject["reason"], ids[kept_id])
            assert reject["value"] is None
        else:
            assert reject["stage"] == "filter"
            dropped[record] = (reject["reason"], reject["value"])
    return manifest, kept, dropped


def test_filters_and_dedup_in_the_job(ray_session, tmp_path):
    config = write_corpus(tmp_path / "one", split_a=[6])
    manifest, kept, dropped = outcome(config, [6])
    assert sorted(kept, key=lambda r: (r[0], int(r[1:]))) == KEPT
    assert dropped == DROPPED
    assert manifest["dedup"] == {"duplicates": 5}
    for name, counts in manifest["sources"].items():
        assert counts["read"] == counts["written"] + counts["rejected_total"]
        assert counts["written"] == counts["rows"] == sum(r[0] == name for r in KEPT)
    assert manifest["sources"]["a"]["rejected"] == {
        "duplicate_image": 1,
        "duplicate_sample": 1,
        "duplicate_text": 1,
        "extreme_aspect_ratio": 1,
        "image_too_small": 1,
        "text_too_short": 1,
    }
    out = config.parent / "out"
    assert verify(str(out)).ok
    printed = (config.parent / "printed.txt").read_text()
    assert "filters: 3 of 11 measured samples dropped" in printed and "dedup: 5 duplicates dropped" in printed

    # Every sample that reached the filters has its measurements, and the report plots them with the cut.
    measured = pa.concat_tables(pq.read_table(out / e["path"]) for e in manifest["filters"]["measurements"])
    assert measured.num_rows == 11
    assert sorted(measured.column("dropped_by").drop_null().to_pylist()) == [
        "max_aspect_ratio",
        "min_image_side",
        "min_text_chars",
    ]
    stats = json.loads((out / "stats" / "stats.json").read_text())
    side = stats["filters"]["a"]["image_min_side"]
    assert side["filters"] == {"min_image_side": 32}
    assert (side["measured"], side["cut"], side["min"]) == (11, 1, 30.0)
    assert sum(side["histogram"]["counts"]) == 11 and sum(side["histogram"]["cut_counts"]) == 1
    report = (out / "stats" / "report.html").read_text()
    for quantity in ("image_min_side", "image_max_aspect_ratio", "text_chars"):
        assert f'id="filter-a-{quantity}"' in report

    # verify holds the measurements to the rejects: a measurement row that says "kept" for a dropped sample
    # breaks the reconciliation.
    for entry in manifest["filters"]["measurements"]:  # one file per input file of the source
        path = out / entry["path"]
        table = pq.read_table(path)
        pq.write_table(table.set_column(table.schema.get_field_index("dropped_by"), "dropped_by",
                                        pa.nulls(table.num_rows, pa.string())), path)  # fmt: skip
    messages = [str(p) for p in verify(str(out)).problems]
    assert any("differs from the manifest" in m for m in messages)
    assert any("filter measurements drop {}" in m for m in messages)

    # Replaced with --overwrite by a config without filters: no measurement of the old run stays behind.
    config.write_text("".join(line for line in config.read_text().splitlines(True) if "filters:" not in line))
    assert pretokenize.run(load_config(config), overwrite=True, out_stream=io.StringIO()) == 0
    assert not (out / "filters").exists() and verify(str(out)).ok


def test_the_kept_copy_does_not_depend_on_the_partitioning(ray_session, tmp_path):
    for split in ([], [2, 4, 9, 10]):
        config = write_corpus(tmp_path / f"split-{len(split)}", split_a=split)
        _, kept, dropped = outcome(config, split)
        assert sorted(kept, key=lambda r: (r[0], int(r[1:]))) == KEPT
        assert dropped == DROPPED
