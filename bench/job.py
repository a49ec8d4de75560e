"""Benchmark: the pretokenize job's data path, against plain Ray Data and a one-core loop, in the same run.

A caption corpus is generated: Parquet files of JPEGs (two sizes, about 30 KB and 150 KB, like the example
corpora) with captions. Every run uses shape tiny and the shipped DeepSeek-VL2 tokenizer, no statistics
pass (`output.stats: false`), and a fresh subprocess with its own embedded Ray on the same CPUs.

- floor:    one process, no Ray: `PartitionWorker.write` over every input file in order (the job's
            work without orchestration; named baseline of the scaling column);
- job:      `vl2prep pretokenize` (`jobs.pretokenize.run`), at 1× and 4× the corpus;
- ray data: plain Ray Data on the same CPUs: `from_items(files) → map_batches(the same reader and
            sequence builder calls) → write_parquet` (named baseline of the overhead column);
- memory:   the job on one big input file against the same rows cut into many small files.

Measured per job run: wall time; the driver's own I/O around the run as a share of the bytes written under
`shards/`, from `/proc/self/io`: storage I/O (`read_bytes + write_bytes`) and every read and write call
(`rchar + wchar`: also Ray's sockets, imports and the code hash); the commit (everything after the last
partition's result came back: the manifest) as a share of the run, from the job's own `time:` line; the
driver's and the workers' peak RSS (`VmHWM`). The last lines extrapolate, from the measured per-core
rate, the wall time of 10⁹ samples of 100 KB on 100 nodes of 32 cores, and name what bounds it.

Run: `.venv/bin/python bench/job.py [--files 8] [--per-file 48] [--cpus 2]`
"""

from __future__ import annotations

import argparse
import io
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

PHOTO = ROOT / "tests" / "golden" / "images" / "skimage_astronaut.png"

# One job run in a fresh process: timings, the driver's I/O and peak RSS, as JSON on the last line.
_JOB = """
import io, json, re, sys, time
from jobs.ray_runtime import start_ray
from jobs.config import load_config
from jobs import pretokenize
config = load_config(sys.argv[1])
start_ray(num_cpus=config.ray_num_cpus)
def io_bytes():
    fields = dict(line.split(": ") for line in open("/proc/self/io").read().splitlines())
    return int(fields["read_bytes"]) + int(fields["write_bytes"]), int(fields["rchar"]) + int(fields["wchar"])
before = io_bytes()
started = time.perf_counter()
stream = io.StringIO()
code = pretokenize.run(config, out_stream=stream)
seconds = time.perf_counter() - started
after = io_bytes()
driver_io, driver_calls = after[0] - before[0], after[1] - before[1]
printed = stream.getvalue()
timing = printed.split("time: ")[1]
stages = {name: float(value) for name, value in re.findall(r"(\\w+) ([0-9.]+) s", timing)}
worker = float(re.search(r"worker peak memory ([0-9]+) MiB", printed).group(1))
peak = pretokenize.peak_rss_mib()
print(json.dumps({"code": code, "seconds": seconds, "driver_io": driver_io, "driver_calls": driver_calls,
                  "stages": stages,
                  "driver_mib": peak, "worker_mib": worker}))
"""

# Plain Ray Data over the same library calls, same CPUs: files in, Parquet out.
_RAY_DATA = """
import json, sys, time
import pyarrow as pa
from jobs.ray_runtime import start_ray
from jobs.config import load_config
from pipeline.sequence import SequenceBuilder
config = load_config(sys.argv[1])
start_ray(num_cpus=config.ray_num_cpus)
import ray
ray.data.DataContext.get_current().enable_progress_bars = False
source = config.sources[0]
class Build:
    def __init__(self):
        self.builder = SequenceBuilder(config.load_tokenizer(), config.shape, source.sequence)
    def __call__(self, batch):
        for file in batch["file"]:
            for read in source.reader.batches(str(file)):
                rows, _ = self.builder.build_table(read.samples)
                yield rows
started = time.perf_counter()
files = [{"file": f} for f in source.reader.files()]
data = ray.data.from_items(files, override_num_blocks=len(files))
data = data.map_batches(Build, batch_size=1, concurrency=int(ray.cluster_resources()["CPU"]))
data.write_parquet(sys.argv[2], compression="zstd")
print(json.dumps({"seconds": time.perf_counter() - started}))
"""

# The one-core floor: the job's per-partition function, in order, no Ray.
_FLOOR = """
import json, sys, time
from jobs.config import load_config
from jobs.pretokenize import make_worker
from pipeline.partition import Partition
config = load_config(sys.argv[1])
worker = make_worker(config)
started = time.perf_counter()
source = config.sources[0]
for order, file in enumerate(source.reader.files()):
    worker.write(Partition(0, source.name, file, order))
print(json.dumps({"seconds": time.perf_counter() - started}))
"""


def make_corpus(folder: Path, files: int, per_file: int) -> int:
    """`files` Parquet files of `per_file` captioned JPEGs (every other one large); returns image bytes."""
    folder.mkdir(parents=True, exist_ok=True)
    with Image.open(PHOTO) as photo:
        source = photo.convert("RGB")
    total = 0
    for f in range(files):
        images, texts = [], []
        for i in range(per_file):
            buffer = io.BytesIO()
            step = i % 48  # the same spread of sizes in every file, however many samples a file holds
            side = (384 + 3 * step, 320 + f % 48) if i % 2 else (1024 + 5 * step, 768 + f % 48)
            picture = source.resize(side)
            picture.putpixel((0, 0), (i % 256, f % 256, (i * 7 + f) % 256))  # every file's bytes its own
            picture.save(buffer, format="JPEG", quality=88)
            images.append({"bytes": buffer.getvalue(), "path": f"{f}-{i}.jpg"})
            texts.append(f"A photograph, number {i} of part {f}, {side[0]} by {side[1]} pixels.")
            total += len(buffer.getvalue())
        # Row groups of 64 rows, as dataset tools write them: a reader holds one row group of its input.
        table = pa.table({"image": images, "text": texts})
        pq.write_table(table, folder / f"part-{f:04d}.parquet", row_group_size=64)
    return total


def write_config(folder: Path, corpus: Path, cpus: int) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    config = folder / "job.yaml"
    config.write_text(
        "model_shape: tiny\n"
        f"sources:\n  - {{name: captions, format: parquet, path: {corpus}}}\n"
        f"output: {{dir: {folder / 'out'}, shard_target_bytes: 64MiB, stats: false}}\n"
        f"ray: {{num_cpus: {cpus}}}\n"
    )
    return config


def child(script: str, *arguments: str) -> dict:
    done = subprocess.run(
        [sys.executable, "-c", script, *arguments], cwd=ROOT, capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        raise SystemExit(f"benchmark child failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def shard_bytes(out: Path) -> int:
    return sum(p.stat().st_size for p in (out / "shards").rglob("*.parquet"))


def job_row(label: str, folder: Path, corpus: Path, cpus: int, samples: int) -> dict:
    config = write_config(folder, corpus, cpus)
    result = child(_JOB, str(config))
    written = shard_bytes(folder / "out")
    commit = result["stages"].get("commit", 0.0)
    return {
        "label": label,
        "samples": samples,
        "seconds": result["seconds"],
        "driver_io_share": result["driver_io"] / written,
        "driver_calls_share": result["driver_calls"] / written,
        "commit_share": commit / result["seconds"],
        "driver_mib": result["driver_mib"],
        "worker_mib": result["worker_mib"],
        "shard_bytes": written,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--files", type=int, default=8)
    parser.add_argument("--per-file", type=int, default=48)
    parser.add_argument("--cpus", type=int, default=2)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="vl2prep-bench-job-") as scratch:
        base = Path(scratch)
        one = base / "corpus-1x"
        image_bytes = make_corpus(one, args.files, args.per_file)
        four = base / "corpus-4x"
        make_corpus(four, 4 * args.files, args.per_file)
        samples = args.files * args.per_file
        rows = [
            job_row("job 1x", base / "job-1x", one, args.cpus, samples),
            job_row("job 4x", base / "job-4x", four, args.cpus, 4 * samples),
        ]
        floor = child(_FLOOR, str(write_config(base / "floor", one, 1)))["seconds"]
        ray_data = child(_RAY_DATA, str(write_config(base / "raydata", one, args.cpus)), str(base / "rd-out"))
        # Memory: the 4x corpus as one file against the same rows in 16 files.
        big = base / "one-file"
        make_corpus(big, 1, 4 * samples)
        small = base / "many-files"
        make_corpus(small, 16, 4 * samples // 16)
        memory = [
            job_row("one big file", base / "job-big", big, args.cpus, 4 * samples),
            job_row("16 small files", base / "job-small", small, args.cpus, 4 * samples),
        ]

    print(
        f"corpus: {samples} samples in {args.files} files at 1x ({image_bytes / samples / 1024:.0f} KiB of "
        f"JPEG per sample), {args.cpus} CPUs, shape tiny, DeepSeek-VL2 tokenizer\n"
    )
    print(
        "| run | samples | s | samples/s | driver storage I/O / shards | driver read+write calls / shards "
        "| commit share | driver MiB | worker MiB |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for row in rows + memory:
        print(
            f"| {row['label']} | {row['samples']} | {row['seconds']:.2f} "
            f"| {row['samples'] / row['seconds']:.1f} "
            f"| {row['driver_io_share']:.2%} | {row['driver_calls_share']:.2%} | {row['commit_share']:.2%} "
            f"| {row['driver_mib']:.0f} "
            f"| {row['worker_mib']:.0f} |"
        )
    job = rows[0]["seconds"]
    print("\n| comparison (1x corpus) | s | ratio |")
    print("|---|---:|---:|")
    print(
        f"| one-core floor (PartitionWorker.write in a loop) | {floor:.2f} | job / floor {job / floor:.2f}x |"
    )
    print(f"| plain Ray Data, same calls, {args.cpus} CPUs | {ray_data['seconds']:.2f} | "
          f"job / Ray Data {job / ray_data['seconds']:.2f}x |")  # fmt: skip
    big_run, small_run = memory
    print(
        f"\nmemory, one file / 16 files: driver {big_run['driver_mib'] / small_run['driver_mib']:.2f}x, "
        f"worker {big_run['worker_mib'] / small_run['worker_mib']:.2f}x"
    )
    # Extrapolation: per-core rate from the 4x run, scaled by image size to 100 KB samples.
    per_core = rows[1]["samples"] / rows[1]["seconds"] / args.cpus
    kib = image_bytes / samples / 1024
    per_core_100k = per_core * kib / 100
    cores = 100 * 32
    hours = 1e9 / (per_core_100k * cores) / 3600
    print(
        f"\n10^9 samples x 100 KB on 100 nodes x 32 cores: {per_core:.1f} samples/s per core measured at "
        f"{kib:.0f} KiB/sample, about {per_core_100k:.1f} at 100 KB (scaled by bytes) -> about {hours:.1f} h "
        f"of parallel work; the driver handles only one small record per input file"
    )


if __name__ == "__main__":
    main()
