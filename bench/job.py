"""Benchmark: the whole pretokenize job on Ray against a plain single-process loop over the same functions.

A caption corpus is generated (Parquet files of small JPEGs with captions). Measured:

- plain:  one process, no Ray: for each file, `Reader.batches` → `SequenceBuilder.build_table` →
          `ShardWriter` — the job's work without its orchestration (the named baseline);
- job:    `jobs.pretokenize.run` on an embedded Ray with 1 and with 2 CPUs (Ray started before the clock,
          its start time shown apart), at 1× and 4× the corpus size;
- tokenizer: every run with shape tiny and its default tokenizer, the real DeepSeek-VL2 one (`vl2`); the
          plain loop and the 2-CPU job also with shape toy and the demo sentencepiece model (`demo`, the
          baseline the real tokenizer replaced: same tiling, same images, other ids);
- curated: the same job on 2 CPUs with filters (image side, aspect ratio, padding share, text tokens)
          and deduplication by sample, image and text; every 10th image of the corpus repeats the one
          before it, so 10% of the samples are duplicates;
- driver peak RSS of each job run (the driver's own `ru_maxrss`; workers are separate processes).

Each job run is a fresh subprocess, so its Ray and its memory peak are its own. Prints one table:
samples/s, job/plain (Ray's overhead ratio), 2-CPU/1-CPU (scaling), driver peak RSS.

Run: `.venv/bin/python bench/job.py [--files 8] [--per-file 64]`
"""

from __future__ import annotations

import argparse
import io
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

PHOTO = ROOT / "tests" / "golden" / "images" / "skimage_astronaut.png"

# Runs one job in a fresh process and prints its timings and the driver's peak RSS as JSON.
_CHILD = """
import json, resource, sys, time, io
from jobs.ray_runtime import start_ray
from jobs.config import load_config
from jobs import pretokenize
config = load_config(sys.argv[1])
started = time.perf_counter()
start_ray(num_cpus=config.ray_num_cpus)
import ray
ray.data.DataContext.get_current().enable_progress_bars = False
ray_start = time.perf_counter() - started
started = time.perf_counter()
code = pretokenize.run(config, out_stream=io.StringIO())
seconds = time.perf_counter() - started
peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"code": code, "seconds": seconds, "ray_start": ray_start, "peak_mib": peak_kib / 1024}))
"""


def make_corpus(folder: Path, files: int, per_file: int) -> int:
    """`files` Parquet files of `per_file` captioned JPEGs (sizes vary, so grids vary); returns samples."""
    folder.mkdir(parents=True, exist_ok=True)
    with Image.open(PHOTO) as photo:
        source = photo.convert("RGB")
    for f in range(files):
        images, texts = [], []
        for i in range(per_file):
            size = (200 + 37 * ((f * per_file + i) % 17), 150 + 23 * ((f + i) % 11))
            buffer = io.BytesIO()
            source.resize(size).save(buffer, format="JPEG", quality=80)
            data = images[-1]["bytes"] if i % 10 == 9 else buffer.getvalue()  # 10% image duplicates
            images.append({"bytes": data, "path": f"{f}/{i}.jpg"})
            texts.append(f"Photograph {i} of batch {f}: a portrait, {size[0]} by {size[1]} pixels, indoors.")
        table = pa.table({"image": images, "text": texts})
        pq.write_table(table, folder / f"part-{f:03d}.parquet")
    return files * per_file


CURATION = (
    "filters: {min_image_side: 160, max_aspect_ratio: 4, max_padding_share: 0.5, min_text_tokens: 4}, "
    "dedup: [sample, image, text]"
)


SHAPES = {"vl2": "tiny", "demo": "toy"}
"""Tokenizer label → the shape whose default it is."""


def write_config(folder: Path, corpus: Path, cpus: int, curate: bool = False, tokenizer: str = "vl2") -> Path:
    name = f"{cpus}-{tokenizer}" + ("-curated" if curate else "")
    extra = f", {CURATION}" if curate else ""
    config = folder / f"job-{name}.yaml"
    config.write_text(
        f"model_shape: {SHAPES[tokenizer]}\n"
        f"sources:\n  - {{name: captions, format: parquet, path: {corpus}{extra}}}\n"
        f"output: {{dir: {folder / f'out-{name}'}, stats: false}}\n"
        f"ray: {{num_cpus: {cpus}}}\n"
    )
    return config


def plain_loop(config_path: Path) -> float:
    """The job's work in one process: read, build sequences, write shards. Returns seconds."""
    from jobs.config import load_config
    from pipeline import shards
    from pipeline.sequence import SequenceBuilder
    from schemas import shard as shard_schema

    config = load_config(config_path)
    started = time.perf_counter()
    tokenizer = config.load_tokenizer()
    builder = SequenceBuilder(tokenizer, config.shape, config.sequence_options[0])
    reader = config.readers[0]
    with tempfile.TemporaryDirectory() as scratch:
        writer = shards.ShardWriter(shards.OutputDir(scratch), "shards", shard_schema.SCHEMA, 256 << 20)
        for file in reader.files():
            for batch in reader.batches(file):
                rows, _ = builder.build_table(batch.samples)
                writer.write(rows)
        writer.close()
    return time.perf_counter() - started


def job_run(config_path: Path) -> dict:
    result = subprocess.run(
        [sys.executable, "-c", _CHILD, str(config_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
        env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"},
    )
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=8, help="input files at 1× (one partition each)")
    parser.add_argument("--per-file", type=int, default=256, help="captioned images per file")
    args = parser.parse_args()

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        for scale in (1, 4):
            corpus = base / f"corpus-{scale}x"
            samples = make_corpus(corpus, args.files * scale, args.per_file)
            work = base / f"run-{scale}x"
            work.mkdir()
            plain = {tok: plain_loop(write_config(work, corpus, 1, tokenizer=tok)) for tok in ("demo", "vl2")}
            for tok, seconds in plain.items():
                rows.append((f"{scale}×", "plain loop", tok, "1", samples, seconds, None, None, None))
            runs = {cpus: job_run(write_config(work, corpus, cpus)) for cpus in (1, 2)}
            for cpus, run in runs.items():
                scaling = runs[1]["seconds"] / run["seconds"] if cpus == 2 else None
                rows.append(
                    (f"{scale}×", "job", "vl2", str(cpus), samples, run["seconds"], plain["vl2"], scaling,
                     run["peak_mib"])
                )  # fmt: skip
            demo = job_run(write_config(work, corpus, 2, tokenizer="demo"))
            rows.append(
                (
                    f"{scale}×",
                    "job",
                    "demo",
                    "2",
                    samples,
                    demo["seconds"],
                    plain["demo"],
                    None,
                    demo["peak_mib"],
                )
            )
            curated = job_run(write_config(work, corpus, 2, curate=True))
            rows.append(
                (f"{scale}×", "curated job", "vl2", "2", samples, curated["seconds"], plain["vl2"], None,
                 curated["peak_mib"])
            )  # fmt: skip
            ray_start = sum(run["ray_start"] for run in runs.values()) / len(runs)

    header = ("corpus", "run", "tokenizer", "CPUs", "samples", "seconds", "samples/s", "job/plain time",
              "2/1 speed-up", "driver peak MiB")  # fmt: skip
    table = [header]
    for scale, name, tok, cpus, samples, seconds, plain, scaling, peak in rows:
        table.append(
            (
                scale,
                name,
                tok,
                cpus,
                str(samples),
                f"{seconds:.2f}",
                f"{samples / seconds:.0f}",
                f"{seconds / plain:.2f}" if plain else "",
                f"{scaling:.2f}" if scaling else "",
                f"{peak:.0f}" if peak else "",
            )
        )
    widths = [max(len(line[i]) for line in table) for i in range(len(header))]
    print(f"pretokenize job vs plain loop; caption corpus, {args.files}×{args.per_file} samples at 1×")
    for line in table:
        print(
            "  ".join(
                cell.rjust(w) if i >= 3 else cell.ljust(w)
                for i, (cell, w) in enumerate(zip(line, widths, strict=True))
            )
        )
    print(f"\nRay start (not in the job times): {ray_start:.1f} s; job/plain compares runs of one tokenizer")


if __name__ == "__main__":
    main()
