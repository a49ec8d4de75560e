"""Benchmark: `pipeline.ingest` readers, records/s on one core, full image decode against header only.

A small corpus is generated per format in a temporary folder (`--records` records each; images are
the golden photographs scaled to about 320×240 and 640×480, half JPEG, half PNG, so that decoding
costs what real photos cost). Every file of each source is read with `Reader.read_file` on one
thread, best of `--repeat`, twice: `image_check: full` (every image decoded, the default) and
`image_check: header` (the baseline: size and format from the header only). The decode share is
the part of the full read that the header-only read saves: 1 − header time / full time. The text
format has no images, so it has one row.

Run: `.venv/bin/python bench/ingest.py [--records N] [--repeat N]`.
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ[_var] = "1"

import argparse  # noqa: E402
import io  # noqa: E402
import json  # noqa: E402
import pickle  # noqa: E402
import sys  # noqa: E402
import tarfile  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import pyarrow as pa  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402
from PIL import Image  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pipeline import ingest  # noqa: E402
from pipeline.ingest.base import ImageOptions  # noqa: E402

GOLDEN_IMAGES = ROOT / "tests" / "golden" / "images"
SIZES = ((320, 240), (640, 480))


def image_pool() -> list[tuple[str, bytes]]:
    """(extension, encoded bytes): each golden photograph at each size, alternately JPEG and PNG."""
    pool = []
    for number, path in enumerate(sorted(GOLDEN_IMAGES.glob("*.png"))):
        with Image.open(path) as original:
            photo = original.convert("RGB")
        for size in SIZES:
            image_format, extension = (("JPEG", "jpg"), ("PNG", "png"))[(number + len(pool)) % 2]
            buffer = io.BytesIO()
            photo.resize(size, Image.Resampling.BICUBIC).save(buffer, image_format, quality=90)
            pool.append((extension, buffer.getvalue()))
    return pool


def write_corpus(folder: Path, records: int) -> dict[str, dict]:
    """Write one source per format under `folder`; return their source mappings."""
    pool = image_pool()
    images = folder / "images"
    images.mkdir()
    names = []
    for index, (extension, data) in enumerate(pool):
        names.append(f"{index:03d}.{extension}")
        (images / names[-1]).write_bytes(data)

    def caption(i: int) -> str:
        return f"Photograph number {i}, a sample caption of ordinary length for a benchmark."

    turns = [{"from": "human", "value": "<image>\nDescribe the image."}, {"from": "gpt", "value": caption(0)}]
    with open(folder / "llava.jsonl", "w", encoding="utf-8") as file:
        for i in range(records):
            file.write(
                json.dumps({"id": str(i), "image": names[i % len(names)], "conversations": turns}) + "\n"
            )

    captions_per_image = 3
    coco = {
        "images": [
            {"id": i, "file_name": names[i % len(names)]} for i in range(-(-records // captions_per_image))
        ],
        "annotations": [
            {"id": i, "image_id": i // captions_per_image, "caption": caption(i)} for i in range(records)
        ],
    }
    (folder / "coco.json").write_text(json.dumps(coco), encoding="utf-8")

    shards = folder / "shards"
    shards.mkdir()
    per_shard = -(-records // 2)
    for shard in range(2):
        with tarfile.open(shards / f"{shard:05d}.tar", "w") as tar:
            for i in range(shard * per_shard, min(records, (shard + 1) * per_shard)):
                extension, data = pool[i % len(pool)]
                meta = json.dumps({"url": f"https://example.com/{i}.{extension}", "key": f"{i:09d}"}).encode()
                for suffix, payload in ((extension, data), ("txt", caption(i).encode()), ("json", meta)):
                    info = tarfile.TarInfo(f"{i:09d}.{suffix}")
                    info.size = len(payload)
                    tar.addfile(info, io.BytesIO(payload))

    images_column = pa.array([pool[i % len(pool)][1] for i in range(records)], pa.binary())
    pq.write_table(
        pa.table({"image": images_column, "text": [caption(i) for i in range(records)]}),
        folder / "pairs.parquet",
    )

    with open(folder / "text.jsonl", "w", encoding="utf-8") as file:
        for i in range(records):
            file.write(json.dumps({"text": " ".join([caption(i)] * 8)}) + "\n")

    def lines(name: str, records: list[dict]) -> None:
        (folder / name).write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")

    def name_of(i: int) -> str:
        return names[i % len(names)]

    lines(
        "obelics.jsonl",
        [
            {"texts": [caption(i), None, caption(i)], "images": [None, f"http://x/{name_of(i)}", None]}
            for i in range(records)
        ],
    )
    mmc4_info = [{"image_name": "", "raw_url": "", "matched_text_index": 1, "matched_sim": 0.3}]
    lines(
        "mmc4.jsonl",
        [
            {"text_list": [caption(i)] * 2, "image_info": [{**mmc4_info[0], "image_name": name_of(i)}]}
            for i in range(records)
        ],
    )
    words = {
        f"{i}_{j}": {"image_id": str(i), "bbox": [10 * j, 10, 8, 8], "utf8_string": f"w{j}"}
        for i in range(records)
        for j in range(4)
    }
    textocr = {"imgs": {str(i): {"file_name": name_of(i)} for i in range(records)}, "anns": words}
    (folder / "textocr.json").write_text(json.dumps(textocr), encoding="utf-8")
    box_lines = [{"text": "Photograph number", "bbox": [10, 10, 100, 30]}]
    lines(
        "ocr.jsonl", [{"image": name_of(i), "text": caption(i), "lines": box_lines} for i in range(records)]
    )
    refer = folder / "refcoco"
    refer.mkdir()
    instances = {
        "images": [{"id": i, "file_name": name} for i, name in enumerate(names)],
        "annotations": [{"id": i, "image_id": i, "bbox": [10, 10, 50, 40]} for i in range(len(names))],
    }
    (refer / "instances.json").write_text(json.dumps(instances), encoding="utf-8")
    sentences = [{"raw": "the thing on the left"}, {"raw": "left thing"}]
    refs = [
        {"ref_id": i, "image_id": i % len(names), "ann_id": i % len(names), "sentences": sentences}
        for i in range(records)
    ]
    (refer / "refs(unc).p").write_bytes(pickle.dumps(refs, protocol=2))
    spans = [[0, 10, 0.1, 0.1, 0.5, 0.5, 0.9], [19, 25, 0.2, 0.3, 0.9, 0.8, 0.7]]
    lines(
        "grit.jsonl",
        [
            {"key": str(i), "caption": caption(i), "image": name_of(i), "noun_chunks": spans}
            for i in range(records)
        ],
    )

    return {
        "obelics": {"format": "obelics", "path": "obelics.jsonl", "images_root": "images"},
        "mmc4": {"format": "mmc4", "path": "mmc4.jsonl", "images_root": "images"},
        "textocr": {"format": "textocr", "path": "textocr.json", "images_root": "images"},
        "ocr_jsonl": {"format": "ocr_jsonl", "path": "ocr.jsonl", "images_root": "images"},
        "refcoco": {"format": "refcoco", "path": "refcoco", "images_root": "images"},
        "grit": {"format": "grit", "path": "grit.jsonl", "images_root": "images"},
        "llava": {"format": "llava", "path": "llava.jsonl", "images_root": "images"},
        "coco_captions": {"format": "coco_captions", "path": "coco.json", "images_root": "images"},
        "webdataset": {"format": "webdataset", "path": "shards/*.tar"},
        "parquet": {"format": "parquet", "path": "pairs.parquet"},
        "text": {"format": "text", "path": "text.jsonl"},
    }


def read_all(reader: ingest.Reader) -> ingest.Counts:
    counts = ingest.Counts()
    for file in reader.files():
        for row in reader.read_file(file):
            counts.add(row)
    return counts


def best_seconds(reader: ingest.Reader, repeat: int) -> tuple[float, ingest.Counts]:
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        counts = read_all(reader)
        best = min(best, time.perf_counter() - start)
    return best, counts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=300, help="records per format")
    parser.add_argument("--repeat", type=int, default=3, help="timed reads per measurement; the best counts")
    args = parser.parse_args()

    header = ("format", "records", "samples", "full rec/s", "header rec/s", "full/header", "decode share")
    rows = []
    with tempfile.TemporaryDirectory() as temporary:
        folder = Path(temporary)
        for name, source in write_corpus(folder, args.records).items():
            has_images = issubclass(ingest.READERS[source["format"]].options, ImageOptions)
            timings = {}
            for mode in ("full", "header") if has_images else ("none",):
                options = {"image_check": mode} if has_images else {}
                reader = ingest.make_reader({"name": name, **source, **options}, base_dir=folder)
                timings[mode], counts = best_seconds(reader, args.repeat)
                if counts.samples != args.records:
                    raise SystemExit(
                        f"{name}: {counts.samples} samples of {args.records} records: {counts.rejected}"
                    )
            if has_images:
                full, header_only = timings["full"], timings["header"]
                cells = [f"{counts.read / full:,.0f}", f"{counts.read / header_only:,.0f}"]
                cells += [f"{full / header_only:.2f}", f"{1 - header_only / full:.0%}"]
            else:
                cells = [f"{counts.read / timings['none']:,.0f}", "", "", ""]
            rows.append((name, str(counts.read), str(counts.samples), *cells))

    print(
        f"ingest: one thread, best of {args.repeat}; {args.records} records per format; "
        "images 320×240 and 640×480, half JPEG, half PNG"
    )
    widths = [max(len(row[i]) for row in (header, *rows)) for i in range(len(header))]
    for row in (header, tuple("-" * w for w in widths), *rows):
        print(
            "  ".join(
                cell.ljust(w) if i == 0 else cell.rjust(w)
                for i, (cell, w) in enumerate(zip(row, widths, strict=True))
            )
        )


if __name__ == "__main__":
    main()
