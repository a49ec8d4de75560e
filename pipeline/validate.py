"""Forward-pass validation of shard rows: the per-sample checks, the small validation model, expert load.

`Validator(model, shape)` takes a batch of shard rows, builds the official batch with the training reader's
`collate`, runs the model and checks every sample:

- `ids_in_vocab`: every input id, and every label other than -100, lies in [0, the model's vocabulary size);
- `labels_length`: the row holds as many labels as input ids;
- `reader`: the reader can build the sample (its stored images tile to their stored grids);
- `visual_tokens`: the visual embeddings the model produces for the sample's grids are as many as the
  row's `<image>` tokens and as `pipeline.layout` counts, and `images_seq_mask` is True exactly on the spans
  the row's `image_token_offsets` give;
- `spatial_crop`: `images_spatial_crop` holds the row's grids in order (then zero rows), each one a canvas of
  the shape's candidate resolutions;
- `loss_tokens`: at least one position is trained on;
- `finite`: logits and the sample's loss are finite at its real tokens (`attention_mask == 1`; the pad
  positions of left-padded rows are arbitrary in the official math);
- `forward`: the model accepts the sample.

The first two are checked on the stored row before anything is collated: a row that fails them never reaches
the reader or the model (an id outside the embedding table would be a bare IndexError inside the model, a
labels list of another length a shape error in the batch), and its other checks count neither as passed nor
as failed. A batch the reader or the model refuses (one sample with an extra `<image>` token makes
`prepare_inputs_embeds` raise for all) is redone one sample at a time, so the failing sample is named and the
others are still validated. Forward hooks on every MoE router count the experts each real token is sent to.
`Summary` merges `BatchResult`s and `Summary.to_json` gives `validation.json`'s content. Rows that could not
be validated at all (their shard file cannot be read, or the batch's work failed) are `Problem`s naming the
file and how many of its rows; `validation.json` lists them under `problems`, and they make the run fail.

`sample_rows(shard_entries, samples, seed)` picks the rows a run validates: all of them, or a bounded sample
spread over the sources, so that the default run (`DEFAULT_SAMPLES` rows) takes the same time on any corpus
and still sees every source.

`small_shape(shape)` is the random-weight model for any output: the `toy` shape's widths, depths and experts
with everything the data depends on (vocabulary, special token ids, image size, patch, downsampling, tiling)
taken from the output's shape. `check_compatible` refuses a model whose ids or layouts would not mean what the
rows mean.
"""

from __future__ import annotations

import dataclasses
import math
import re
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

import model_shapes
from model_shapes import ModelShape
from model_shapes.adaptor import visual_token_index
from model_shapes.masks import document_ids
from model_shapes.moe import Router
from pipeline import layout
from pipeline.loader import collate
from schemas.shard import IGNORE_INDEX

__all__ = [
    "CHECKS",
    "BatchResult",
    "Failure",
    "Problem",
    "Summary",
    "ValidateError",
    "Validator",
    "check_compatible",
    "sample_rows",
    "small_shape",
]

CHECKS = (
    "ids_in_vocab",
    "labels_length",
    "reader",
    "visual_tokens",
    "spatial_crop",
    "loss_tokens",
    "finite",
    "forward",
)
DEFAULT_SAMPLES = 64
"""Rows a validation run checks unless told otherwise: forward passes cost about a second a row on a CPU, so
checking every row of a large output by default would take hours."""
HIGHEST_LOSSES = 20
NAMED_IDS = 5
"""Most offending ids a failure message quotes."""
_LAYER = re.compile(r"\blayers\.(\d+)\.")


class ValidateError(ValueError):
    """A model that cannot validate this output (other vocabulary, special ids or image layouts)."""


def sample_rows(
    shard_entries: Sequence[Mapping[str, Any]], samples: int | None, seed: int = 0
) -> list[tuple[str, list[int]]]:
    """(shard path, ascending row numbers in it) for each shard file with rows to validate, in the order of
    `shard_entries` (the manifest's `shards`: `path`, `rows` and, where the rows come from one source,
    `source`; packed shards count as one source of their own).

    `samples=None` takes every row. Otherwise `samples` rows (or every row, when there are fewer) spread
    over the sources as evenly as their rows allow: each source gets an equal share, a source with fewer rows
    gives what it lacks to the others, and within a source the rows are drawn uniformly over its files. The
    choice depends only on the entries, `samples` and `seed`."""
    if samples is not None and samples < 0:
        raise ValueError(f"samples={samples}: must be at least 0")
    sources: dict[str, list[int]] = {}  # source -> indices into shard_entries, in order
    for index, entry in enumerate(shard_entries):
        sources.setdefault(_source_of(entry), []).append(index)
    chosen: dict[int, np.ndarray] = {}
    quotas = _quotas(
        {name: sum(shard_entries[i]["rows"] for i in files) for name, files in sources.items()}, samples
    )
    for name, files in sources.items():
        counts = [shard_entries[i]["rows"] for i in files]
        total = sum(counts)
        if quotas[name] >= total:
            picked = np.arange(total)
        else:  # a generator per source: one source's rows do not move another's draw
            rng = np.random.default_rng([seed, zlib.crc32(name.encode())])
            picked = np.sort(rng.choice(total, size=quotas[name], replace=False))
        starts = np.cumsum([0, *counts])
        for position, index in enumerate(files):
            inside = picked[(picked >= starts[position]) & (picked < starts[position + 1])]
            chosen[index] = inside - starts[position]
    return [
        (entry["path"], chosen[index].tolist())
        for index, entry in enumerate(shard_entries)
        if len(chosen[index])
    ]


def _source_of(entry: Mapping[str, Any]) -> str:
    """The source of a shard entry: its `source`, else the folder it lies in (`shards/<source>/...`)."""
    source = entry.get("source")
    if source:
        return str(source)
    parts = str(entry["path"]).split("/")
    return parts[-2] if len(parts) >= 2 else ""


def _quotas(capacity: Mapping[str, int], samples: int | None) -> dict[str, int]:
    """Rows per source: equal shares of `samples`, a source's unused share going to the others (water
    filling); the earlier sources take the remainder of an uneven split."""
    if samples is None:
        return dict(capacity)
    quota = dict.fromkeys(capacity, 0)
    left = min(samples, sum(capacity.values()))
    open_sources = [name for name in capacity if capacity[name] > 0]
    while left > 0:
        share, extra = divmod(left, len(open_sources))
        for position, name in enumerate(open_sources):
            give = min(capacity[name] - quota[name], share + (position < extra))
            quota[name] += give
            left -= give
        open_sources = [name for name in open_sources if quota[name] < capacity[name]]
    return quota


def small_shape(shape: ModelShape) -> ModelShape:
    """A small model for the rows of `shape`: toy widths, depths and experts; `shape`'s vocabulary, special
    ids, image size, patch, projector (downsampling), candidate resolutions, normalisation and length."""
    toy = model_shapes.load("toy")
    vision = dataclasses.replace(
        toy.vision, image_size=shape.vision.image_size, patch_size=shape.vision.patch_size
    )
    projector = dataclasses.replace(shape.projector, input_dim=vision.width, n_embed=toy.language.hidden_size)
    language = dataclasses.replace(
        toy.language,
        vocab_size=shape.language.vocab_size,
        max_position_embeddings=max(toy.language.max_position_embeddings, shape.max_seq_len),
    )
    return dataclasses.replace(
        shape,
        name=f"{shape.name}-small",
        vision=vision,
        projector=projector,
        language=language,
        description=f"random-weight validation model for outputs of shape {shape.name}",
    )


def check_compatible(model: ModelShape, output: ModelShape) -> None:
    """Raise ValidateError when `model` would read the rows of an `output`-shaped output differently: another
    vocabulary size, other special token ids (a shape without them takes the output's), or another image
    size, patch, downsampling or tiling."""
    problems = []
    if model.language.vocab_size != output.language.vocab_size:
        problems.append(
            f"vocabulary size {model.language.vocab_size}, the output's is {output.language.vocab_size}"
        )
    if model.special_tokens is not None and model.special_tokens != output.special_tokens:
        mine, theirs = model.special_tokens.as_dict(), output.special_tokens.as_dict()
        differing = ", ".join(f"{k} {mine[k]} (output: {theirs[k]})" for k in mine if mine[k] != theirs[k])
        problems.append(f"special token ids differ: {differing}")
    layout_of = ("image_size", "patch_size", "downsample_ratio", "candidate_resolutions")
    differing = [name for name in layout_of if getattr(model, name) != getattr(output, name)]
    if differing:
        problems.append(f"image layouts differ ({', '.join(differing)})")
    if problems:
        raise ValidateError(
            f"model shape {model.name} does not fit this output (shape {output.name}): "
            + "; ".join(problems)
            + ". The rows' ids would mean other tokens or other image layouts."
        )


@dataclass(frozen=True)
class Failure:
    """One failed check of one sample."""

    sample_id: str
    check: str
    message: str


@dataclass(frozen=True)
class Problem:
    """`rows` rows of the shard file `path` that could not be validated, and why."""

    path: str
    rows: int
    message: str


@dataclass
class BatchResult:
    """What one batch gave: per-check pass/fail counts, failures, per-sample losses of the samples that ran,
    tokens per expert per MoE layer (layer index → counts), and the rows it could not validate."""

    passed: dict[str, int] = field(default_factory=lambda: dict.fromkeys(CHECKS, 0))
    failures: list[Failure] = field(default_factory=list)
    losses: dict[str, float] = field(default_factory=dict)
    expert_tokens: dict[int, np.ndarray] = field(default_factory=dict)
    samples: int = 0
    problems: list[Problem] = field(default_factory=list)


class _ExpertCounter:
    """Forward hooks on every MoE router of a model, counting the experts chosen for the real tokens (those
    where `mask` is True) while a mask is set."""

    def __init__(self, model: nn.Module) -> None:
        self.mask: torch.Tensor | None = None
        self.counts: dict[int, np.ndarray] = {}
        for name, module in model.named_modules():
            if isinstance(module, Router):
                layer = int(_LAYER.search(name).group(1))
                module.register_forward_hook(self._hook(layer, module.weight.shape[0]))

    def _hook(self, layer: int, experts: int):
        def count(_module: nn.Module, _inputs: Any, output: tuple[torch.Tensor, torch.Tensor]) -> None:
            if self.mask is None:  # a forward pass outside `Validator`
                return
            index = output[0][self.mask.reshape(-1).to(output[0].device)]
            counts = torch.bincount(index.reshape(-1), minlength=experts).cpu().numpy()
            self.counts[layer] = self.counts.get(layer, 0) + counts

        return count

    def take(self) -> dict[int, np.ndarray]:
        counts, self.counts = self.counts, {}
        return counts


class Validator:
    """Validates batches of shard rows (dicts as stored) with `model`, for rows made for `shape`."""

    def __init__(self, model: model_shapes.DeepseekVL2, shape: ModelShape) -> None:
        self.model = model.eval()
        self.shape = shape
        self.device = next(model.parameters()).device
        self.experts = _ExpertCounter(model)

    def __call__(self, rows: Sequence[Mapping[str, Any]]) -> BatchResult:
        result = BatchResult(samples=len(rows))
        sound = []
        for row in rows:
            problems = self._row_checks(row)
            if problems:
                _record(result, row, problems, evaluated=("ids_in_vocab", "labels_length"))
            else:
                sound.append(row)
        if not sound:
            return result
        try:
            self._run(sound, collate(sound, self.shape), result)
        except ValueError:
            for row in sound:  # the batch is refused as a whole: find the sample(s) to blame
                self._run_alone(row, result)
        return result

    def _row_checks(self, row: Mapping[str, Any]) -> list[tuple[str, str]]:
        """(check, message) for each problem of the stored row that would stop the reader or the model."""
        vocab = self.model.shape.language.vocab_size
        problems: list[tuple[str, str]] = []
        ids = np.asarray(row["input_ids"] if row["input_ids"] is not None else [], dtype=np.int64)
        labels = np.asarray(row["labels"] if row["labels"] is not None else [], dtype=np.int64)
        outside = [
            f"{name} {_ids(values[(values < 0) | (values >= vocab)])}"
            for name, values in (("input ids", ids), ("labels", labels[labels != IGNORE_INDEX]))
            if ((values < 0) | (values >= vocab)).any()
        ]
        if outside:
            problems.append(("ids_in_vocab", f"{' and '.join(outside)} outside the vocabulary [0, {vocab})"))
        if len(labels) != len(ids):
            problems.append(("labels_length", f"{len(labels)} labels for {len(ids)} input ids"))
        return problems

    def _run_alone(self, row: Mapping[str, Any], result: BatchResult) -> None:
        try:
            batch = collate([row], self.shape)
        except ValueError as error:
            result.failures.append(Failure(row["sample_id"], "reader", str(error)))
            return
        try:
            self._run([row], batch, result)
        except ValueError as error:
            problems = [*self._static_checks(row, batch, 0), ("forward", str(error))]
            _record(result, row, problems, evaluated=[c for c in CHECKS if c != "finite"])

    @torch.no_grad()
    def _run(
        self, rows: Sequence[Mapping[str, Any]], batch: Mapping[str, torch.Tensor], result: BatchResult
    ) -> None:
        """Check `rows` (collated as `batch`) into `result`; ValueError, with `result` untouched, when the
        model refuses the batch."""
        checks = [self._static_checks(row, batch, b) for b, row in enumerate(rows)]
        self.experts.take()
        self.experts.mask = batch["attention_mask"].bool()
        inputs = {k: v.to(self.device) for k, v in batch.items() if k != "labels"}
        try:
            logits = self.model(**inputs).logits
        finally:
            self.experts.mask = None
        for layer, counts in self.experts.take().items():
            result.expert_tokens[layer] = result.expert_tokens.get(layer, 0) + counts
        losses = _sample_losses(logits, batch)
        for b, (row, problems) in enumerate(zip(rows, checks, strict=True)):
            real = batch["attention_mask"][b].bool().to(logits.device)
            loss = losses[b]
            # A row sum is finite exactly when the row is (short of float32 overflow, itself a fault).
            if not bool(torch.isfinite(logits[b].sum(dim=-1)[real]).all()):
                problems.append(("finite", "non-finite logits at real tokens"))
            elif loss is not None and not math.isfinite(loss):
                problems.append(("finite", f"non-finite loss {loss}"))
            elif loss is not None:
                result.losses[row["sample_id"]] = loss
            _record(result, row, problems, evaluated=CHECKS)

    def _static_checks(
        self, row: Mapping[str, Any], batch: Mapping[str, torch.Tensor], b: int
    ) -> list[tuple[str, str]]:
        """(check, message) for each problem of sample `b` that the batch shows before the forward pass."""
        problems: list[tuple[str, str]] = []
        grids = [tuple(grid) for grid in row["images_spatial_crop"]]
        size = self.shape.vision.image_size
        crop = batch["images_spatial_crop"][b].tolist()
        if crop[: len(grids)] != [list(g) for g in grids] or any(w or h for w, h in crop[len(grids) :]):
            problems.append(("spatial_crop", f"images_spatial_crop {crop} but the row's grids are {grids}"))
        canvases = set(self.shape.candidate_resolutions)
        bad = [g for g in grids if g != (1, 1) and (g[0] * size, g[1] * size) not in canvases]
        if bad:
            problems.append(("spatial_crop", f"grids {bad} are not canvases of the candidate resolutions"))
            return problems

        produced = sum(len(visual_token_index(w, h, self.model.tokens_per_side)) for w, h in grids)
        counts = [layout.image_token_count(g, self.shape) for g in grids]
        mask = batch["images_seq_mask"][b]
        found = (mask.nonzero().flatten() - (len(mask) - len(row["input_ids"]))).tolist()
        spans = [p for o, n in zip(row["image_token_offsets"], counts, strict=True) for p in range(o, o + n)]
        if not produced == len(found) == sum(counts) or found != spans:
            where = "" if found == spans else ", not on the spans at image_token_offsets"
            problems.append(
                (
                    "visual_tokens",
                    f"the model makes {produced} visual embeddings for grids {grids} "
                    f"(layout: {sum(counts)}), the row has {len(found)} <image> tokens{where}",
                )
            )
        if _loss_targets(batch)[b].sum() == 0:
            problems.append(("loss_tokens", "no position is trained on"))
        return problems


def _ids(values: np.ndarray) -> str:
    """The distinct values, the first `NAMED_IDS` of them in order, and how many more."""
    distinct = list(dict.fromkeys(values.tolist()))
    more = f" and {len(distinct) - NAMED_IDS} more" if len(distinct) > NAMED_IDS else ""
    return ", ".join(map(str, distinct[:NAMED_IDS])) + more


def _record(
    result: BatchResult, row: Mapping[str, Any], problems: list[tuple[str, str]], evaluated: Sequence[str]
) -> None:
    """Count the `evaluated` checks `row` passed and keep its failures."""
    failed = {check for check, _ in problems}
    for check in evaluated:
        if check not in failed:
            result.passed[check] += 1
    result.failures += [Failure(row["sample_id"], check, message) for check, message in problems]


def _loss_targets(batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """bool [B, L-1]: whether position i's logits are scored against labels[i + 1] for the sample's own loss:
    the official loss without the left padding's last position, which in the official batch predicts the bos
    (so a sample's loss does not depend on the batch it shares), and in packed rows never across a document
    boundary."""
    labels = batch["labels"]
    targets = (labels[:, 1:] != IGNORE_INDEX) & batch["attention_mask"][:, :-1].bool()
    if "cu_seqlens" in batch:
        docs = document_ids(batch["cu_seqlens"], *labels.shape)
        targets &= docs[:, 1:] == docs[:, :-1]
    return targets


def _sample_losses(logits: torch.Tensor, batch: Mapping[str, torch.Tensor]) -> list[float | None]:
    """Each sample's mean cross-entropy over its targets (None without targets)."""
    scored = _loss_targets(batch).to(logits.device)
    labels = batch["labels"][:, 1:].to(logits.device)
    losses = []
    for b in range(len(logits)):
        if not scored[b].any():
            losses.append(None)
            continue
        picked = logits[b, :-1][scored[b]]
        losses.append(float(F.cross_entropy(picked.float(), labels[b][scored[b]])))
    return losses


@dataclass
class Summary:
    """Merged `BatchResult`s."""

    samples: int = 0
    passed: dict[str, int] = field(default_factory=lambda: dict.fromkeys(CHECKS, 0))
    failures: list[Failure] = field(default_factory=list)
    losses: dict[str, float] = field(default_factory=dict)
    expert_tokens: dict[int, np.ndarray] = field(default_factory=dict)
    problems: list[Problem] = field(default_factory=list)

    def add(self, result: BatchResult) -> None:
        self.samples += result.samples
        self.problems += result.problems
        for check, count in result.passed.items():
            self.passed[check] += count
        self.failures += result.failures
        self.losses.update(result.losses)
        for layer, counts in result.expert_tokens.items():
            self.expert_tokens[layer] = self.expert_tokens.get(layer, 0) + counts

    @property
    def failed_sample_ids(self) -> list[str]:
        return sorted({failure.sample_id for failure in self.failures})

    @property
    def merged_problems(self) -> list[Problem]:
        """The problems, one per (file, message) with their rows summed, by file."""
        rows: dict[tuple[str, str], int] = {}
        for problem in self.problems:
            rows[(problem.path, problem.message)] = (
                rows.get((problem.path, problem.message), 0) + problem.rows
            )
        return [Problem(path, count, message) for (path, message), count in sorted(rows.items())]

    def to_json(self, with_losses: bool) -> dict[str, Any]:
        """`validation.json`'s checks, failures, losses, expert load and problems (rows not validated);
        `with_losses` (real weights) adds the highest-loss samples."""
        failed = dict.fromkeys(CHECKS, 0)
        for _, check in {(f.sample_id, f.check) for f in self.failures}:
            failed[check] += 1
        values = np.array(sorted(self.losses.values()))
        ranked = sorted(self.losses.items(), key=lambda item: (-item[1], item[0]))[:HIGHEST_LOSSES]
        return {
            "samples": {
                "validated": self.samples,
                "failed": len(self.failed_sample_ids),
                "passed": self.samples - len(self.failed_sample_ids),
            },
            "checks": {check: {"passed": self.passed[check], "failed": failed[check]} for check in CHECKS},
            "failed_sample_ids": self.failed_sample_ids,
            "failures": [dataclasses.asdict(f) for f in sorted(self.failures, key=lambda f: f.sample_id)],
            "loss": {
                "count": int(values.size),
                "mean": float(values.mean()) if values.size else None,
                "min": float(values[0]) if values.size else None,
                "p50": float(np.percentile(values, 50)) if values.size else None,
                "max": float(values[-1]) if values.size else None,
            },
            "highest_loss": [{"sample_id": s, "loss": v} for s, v in ranked] if with_losses else [],
            "expert_load": {
                str(layer): _load(counts) for layer, counts in sorted(self.expert_tokens.items())
            },
            "problems": [dataclasses.asdict(problem) for problem in self.merged_problems],
        }


def _load(counts: np.ndarray) -> dict[str, Any]:
    mean = float(counts.mean())
    return {
        "assignments": int(counts.sum()),
        "tokens_per_expert": counts.astype(int).tolist(),
        "imbalance": float(counts.max()) / mean if mean else None,
    }
