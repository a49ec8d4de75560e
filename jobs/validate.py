"""The validation job: forward passes over a finished output's rows on Ray actors (`pipeline.validate`).

The driver reads the manifest, settles the model before any work (`--shape` or the config of `--weights` must
keep the output's vocabulary, special ids and image layouts; by default a small seeded random-weight model
derived from the output's own shape, `pipeline.validate.small_shape`), picks the rows (by default
`pipeline.validate.DEFAULT_SAMPLES` of them spread over the sources and drawn with a fixed seed, or
`samples` so spread, or all with `samples=None`: `pipeline.validate.sample_rows`) and cuts them into batches
within one shard file. A pool of actors, one GPU each
when the cluster has GPUs, else CPU actors that never take every CPU, each builds the model once and validates
batches; the driver merges the results as they arrive (a progress line every `jobs.progress.PROGRESS_EVERY_S`
seconds and a last one: batches done / total, samples validated and failed, samples/s, time left) and writes
`validation.json` to `OUT/stats/` (or to `report_dir`), then, when `stats.json` lies there too, rewrites the
stats report with its validation section (its gallery included: it is part of `stats.json`).
The exit code is 1, with the failing sample ids listed, when any check fails.

Damaged outputs: a row whose ids lie outside the vocabulary, or whose labels are not as many as its ids,
fails its own check (`pipeline.validate`). A shard file that cannot be read (truncated, not Parquet, missing,
fewer rows than the manifest lists) is a problem naming the file and how many of its rows were not validated;
a batch whose work fails in its actor for any other reason is one too. The other files are still validated,
`validation.json` is written with everything found (problems under `problems`), each problem is one line on
stderr, and the exit code is 1. A manifest that cannot be read (not JSON) is one line and exit 2, as when
there is none.
"""

from __future__ import annotations

import datetime
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

import model_shapes
from jobs.progress import Progress
from jobs.ray_runtime import pool_resources, ray_scope, start_ray
from jobs.stats import STATS_DIR, VALIDATION_FILE
from pipeline import report, shards, verify
from pipeline import validate as checks

__all__ = ["VALIDATION_FILE", "ValidationActor", "batch_result", "read_rows", "run"]

SEED = 0
DEFAULT_BATCH = 2
UNREADABLE = (OSError, ValueError, pa.ArrowException)
"""What reading a damaged shard file raises: pyarrow's errors (ArrowInvalid is a ValueError, ArrowIOError an
OSError) and `read_rows`' own ValueError."""


def run(
    location: str,
    shape: str | None = None,
    weights: str | None = None,
    samples: int | None = checks.DEFAULT_SAMPLES,
    report_dir: str | None = None,
    batch_size: int = DEFAULT_BATCH,
    ray_address: str | None = None,
    num_cpus: int | None = None,
    out_stream: Any = None,
) -> int:
    """Validate the output at `location` (`samples` rows spread over its sources, or every row with
    `samples=None`); returns the process exit code (2: nothing could run)."""
    with ray_scope():  # the Ray this call starts (if any) is stopped when it ends
        return _run(
            location, shape, weights, samples, report_dir, batch_size, ray_address, num_cpus, out_stream
        )


def _run(
    location: str,
    shape: str | None,
    weights: str | None,
    samples: int | None,
    report_dir: str | None,
    batch_size: int,
    ray_address: str | None,
    num_cpus: int | None,
    out_stream: Any,
) -> int:
    out_stream = out_stream or sys.stdout
    started = time.perf_counter()
    out = shards.OutputDir(location)
    if not out.exists(shards.MANIFEST):
        print(f"{location}: no manifest.json: not a finished output", file=sys.stderr)
        return 2
    try:
        manifest = out.read_json(shards.MANIFEST)
    except (OSError, ValueError) as error:
        print(f"{location}: cannot read {shards.MANIFEST}: {error}", file=sys.stderr)
        return 2
    try:
        output_shape = verify.shape_for(manifest)
        model_shape = _model_shape(output_shape, shape, weights)
    except (verify.VerifyError, model_shapes.ShapeError, checks.ValidateError, OSError) as error:
        print(f"{location}: {error}", file=sys.stderr)
        return 2
    batches = _batches(manifest, samples, batch_size)
    progress = Progress(len(batches), out_stream, "batches", ("samples validated", "failed"), "samples")
    summary = _validate(
        location, batches, output_shape, model_shape, weights, ray_address, num_cpus, progress
    )
    progress.finish()

    result = {
        "output": location,
        "model": {
            "shape": model_shape.name,
            "fingerprint": model_shape.fingerprint(),
            "weights": weights,
            "seed": None if weights else SEED,
        },
        "requested_samples": samples,
        "batch_size": batch_size,
        **summary.to_json(with_losses=weights is not None),
        "seconds": round(time.perf_counter() - started, 2),
    }
    target = shards.OutputDir(report_dir) if report_dir else out.subfolder(STATS_DIR)
    target.write_json(VALIDATION_FILE, result)
    if target.exists("stats.json"):
        stats = target.read_json("stats.json")
        made = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
        target.write_bytes("report.html", report.html(stats, result, made, out.location).encode())
        target.write_bytes("report.md", report.markdown(stats, result).encode())
    counts = result["samples"]
    print(
        f"validate: {counts['validated']} samples with {model_shape.name} in {result['seconds']} s, "
        f"{counts['failed']} failed → {target.location}/{VALIDATION_FILE}",
        file=out_stream,
    )
    for problem in summary.merged_problems:
        print(
            f"{out.path(problem.path)}: {problem.rows} rows not validated: {problem.message}", file=sys.stderr
        )
    if summary.failures:
        for failure in sorted(summary.failures, key=lambda f: (f.sample_id, f.check)):
            print(f"sample {failure.sample_id}: {failure.check}: {failure.message}", file=sys.stderr)
        print(f"failing samples: {' '.join(summary.failed_sample_ids)}", file=sys.stderr)
    return 1 if summary.failures or summary.problems else 0


def _model_shape(
    output_shape: model_shapes.ModelShape, shape: str | None, weights: str | None
) -> model_shapes.ModelShape:
    """The validation model's shape, checked against the output's (special ids taken from the output's when
    the model's shape has none)."""
    if weights is not None:
        config = json.loads((Path(weights) / "config.json").read_text(encoding="utf-8"))
        chosen = model_shapes.from_official_config(config, name=Path(weights).name)
    elif shape is not None:
        chosen = model_shapes.load(shape)
    else:
        return checks.small_shape(output_shape)
    checks.check_compatible(chosen, output_shape)
    return chosen.with_special_tokens(output_shape.special_tokens)


def _batches(manifest: dict[str, Any], samples: int | None, batch_size: int) -> list[tuple[str, list[int]]]:
    """(shard path, row numbers in it) per batch: every row (`samples=None`), or `samples` rows spread over
    the sources with the fixed seed."""
    return [
        (path, rows[first : first + batch_size])
        for path, rows in checks.sample_rows(manifest["shards"], samples, SEED)
        for first in range(0, len(rows), batch_size)
    ]


def read_rows(location: str, path: str, numbers: list[int]) -> list[dict[str, Any]]:
    """Rows `numbers` (ascending) of one shard, reading only the row groups that hold them. Raises one of
    `UNREADABLE` when the file cannot be read or holds fewer rows."""
    out = shards.OutputDir(location)
    rows = []
    with out.fs.open_input_file(out.path(path)) as handle:
        parquet = pq.ParquetFile(handle)
        sizes = [parquet.metadata.row_group(g).num_rows for g in range(parquet.metadata.num_row_groups)]
        starts = np.cumsum([0, *sizes])
        if numbers and numbers[-1] >= starts[-1]:
            raise ValueError(f"it holds {starts[-1]} rows, the manifest lists row {numbers[-1]}")
        groups = np.searchsorted(starts, numbers, side="right") - 1
        for group in sorted(set(groups.tolist())):
            table = parquet.read_row_group(group)
            for number in np.asarray(numbers)[groups == group]:
                rows.append(table.slice(int(number - starts[group]), 1).to_pylist()[0])
    return rows


class ValidationActor:
    """Holds one model (built once) and validates batches of rows with it."""

    def __init__(
        self, output_shape: model_shapes.ModelShape, model_shape: model_shapes.ModelShape, weights: str | None
    ) -> None:
        import torch

        device = "cuda" if torch.cuda.is_available() else "cpu"
        if weights is not None:
            dtype = torch.bfloat16 if device == "cuda" else torch.float32
            model = model_shapes.from_pretrained(weights, device=device, dtype=dtype)
        else:
            torch.manual_seed(SEED)
            model = model_shapes.build_model(model_shape, device=device)
        self.validator = checks.Validator(model, output_shape)

    def validate(self, location: str, path: str, numbers: list[int]) -> checks.BatchResult:
        try:
            rows = read_rows(location, path, numbers)
        except UNREADABLE as error:
            message = "cannot be read: " + " ".join(str(error).split())
            return checks.BatchResult(problems=[checks.Problem(path, len(numbers), message)])
        return self.validator(rows)


def _validate(
    location: str,
    batches: list[tuple[str, list[int]]],
    output_shape: model_shapes.ModelShape,
    model_shape: model_shapes.ModelShape,
    weights: str | None,
    ray_address: str | None,
    num_cpus: int | None,
    progress: Progress,
) -> checks.Summary:
    """Run the batches on a pool of actors, one batch per actor at a time; results are merged as they finish
    (each advancing `progress` by its samples validated and failed), and a batch whose task fails is a
    problem of its file."""
    summary = checks.Summary()
    if not batches:
        return summary
    start_ray(ray_address, num_cpus)
    import ray  # after start_ray, which sets Ray's environment first

    gpus = int(ray.cluster_resources().get("GPU", 0))
    most, cpus = pool_resources()
    if gpus:
        options: dict[str, Any] = {"num_gpus": 1, "num_cpus": min(cpus, 1.0)}
        size = min(gpus, len(batches))
    else:
        options = {"num_cpus": cpus}
        size = min(most, len(batches))
    actor = ray.remote(ValidationActor).options(**options)
    actors = [actor.remote(output_shape, model_shape, weights) for _ in range(size)]
    idle, waiting, running = list(actors), list(reversed(batches)), {}
    while waiting or running:
        while idle and waiting:
            handle, batch = idle.pop(), waiting.pop()
            running[handle.validate.remote(location, *batch)] = (handle, batch)
        (done,), _ = ray.wait(list(running), num_returns=1)
        handle, batch = running.pop(done)
        idle.append(handle)
        result = batch_result(batch, lambda ref=done: ray.get(ref))
        summary.add(result)
        progress.advance(result.samples, len({failure.sample_id for failure in result.failures}))
    for handle in actors:
        ray.kill(handle)
    return summary


def batch_result(batch: tuple[str, list[int]], get: Callable[[], checks.BatchResult]) -> checks.BatchResult:
    """The result `get` gives for `batch`, or, when its task failed (an actor that died, an error no check
    foresaw), a problem of the batch's file saying what the task raised."""
    import ray

    try:
        return get()
    except ray.exceptions.RayError as error:
        cause = error
        while isinstance(getattr(cause, "cause", None), BaseException):
            cause = cause.cause  # a task error: the exception raised in the actor
        lines = str(cause).strip().splitlines()
        message = f"validation failed: {type(cause).__name__}: {lines[0] if lines else ''}"
        path, numbers = batch
        return checks.BatchResult(problems=[checks.Problem(path, len(numbers), message)])
