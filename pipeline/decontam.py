"""Evaluation-set decontamination: samples that overlap an evaluation set become reject rows.

A top-level `decontaminate:` block names evaluation sets; each has evaluation images, texts, or both:

    decontaminate:
      sets:
        - {name: refcoco_testA, images: eval/coco_val/, texts: eval/refcoco_testA.jsonl}
        - {name: textvqa_val, texts: ["eval/textvqa/*.jsonl"]}
      image_distance: 10        # bits of a 64-bit pHash; default: dedup's near_distance default
      ngram: 13                 # words; default 13

`images` and `texts` are a path or a list of paths: files, folders (every file below, recursively) or
globs, relative to the config's folder, or URIs that `pyarrow.fs` understands (a file or a folder, no
globs). Every evaluation image is hashed (`pipeline.phash`); undecodable files are counted, not fatal.
Texts are JSON Lines (`.jsonl`, `.json`: every string value of each line's JSON, recursively, is the
item's text; the item is named `<file>:<line>`, followed by its `id`, `question_id` or `image_id` when the
line has one) or plain text (any other suffix: each non-empty line is an item, `<file>:<line>`).

Text overlap: texts are normalized (Unicode NFKC, casefolded, every character that is neither a letter nor
a digit replaced by a space) and split into words; every run of `ngram` consecutive words of an
evaluation item is indexed by a 64-bit BLAKE2b hash. A training sample overlaps when one of its text
segments (each on its own) has an n-gram in the index. Items shorter than `ngram` words are left out (they
would match common phrases; lower `ngram` for sets of short texts) and counted in `EvalIndex.short_items`.

Image overlap: a sample overlaps when one of its images is within `image_distance` bits of an evaluation
image (compared with every evaluation image; numpy, a few microseconds per thousand evaluation images).

A sample is rejected once (stage `decontaminate`): for the first image that overlaps (reason
`eval_image_overlap`, `value` the distance, the nearest evaluation image named), else for the first text
n-gram (reason `eval_text_overlap`). The detail starts with `eval set '<name>', item '<item>':`, which
`overlap_counts` reads back to count rejects per evaluation set.

`build_eval_index` reads the files once and returns an `EvalIndex`: a few numpy arrays and the item names,
small and picklable, so a job builds it in one task and ships it to the workers.
"""

from __future__ import annotations

import glob
import hashlib
import json
import re
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs

from pipeline import dedup, phash
from pipeline.errors import ConfigError
from schemas import reject as reject_schema

__all__ = [
    "DEFAULT_NGRAM",
    "DecontamOptions",
    "EvalIndex",
    "EvalSet",
    "build_eval_index",
    "ngram_hashes",
    "normalize_words",
    "overlap_counts",
    "parse_decontaminate",
]

DEFAULT_NGRAM = 13
"""Words per n-gram: the usual choice for contamination checks (GPT-3, Llama 2 reports)."""

_NAME = re.compile(r"^[A-Za-z0-9._-]+$")
_DETAIL = re.compile(r"^eval set '([A-Za-z0-9._-]+)', item ")
_NOT_WORD = re.compile(r"[\W_]+")
_JSON_SUFFIXES = (".jsonl", ".json", ".ndjson")
_ITEM_IDS = ("id", "question_id", "image_id")


@dataclass(frozen=True)
class EvalSet:
    """One named evaluation set: the image paths and text paths as configured (resolved, not yet expanded)."""

    name: str
    images: tuple[str, ...] = ()
    texts: tuple[str, ...] = ()


@dataclass(frozen=True)
class DecontamOptions:
    """The `decontaminate` block: the evaluation sets, the image distance and the n-gram length."""

    sets: tuple[EvalSet, ...]
    image_distance: int = dedup.DEFAULT_NEAR_DISTANCE
    ngram: int = DEFAULT_NGRAM


def parse_decontaminate(value: object, where: str, base_dir: str | Path) -> DecontamOptions | None:
    """The `decontaminate` block as options, or None when absent (null). `where` is its key path
    (`decontaminate`); paths resolve against `base_dir`. Local paths and globs must match something. A
    `ConfigError` names the key to change."""
    if value is None:
        return None
    if not isinstance(value, dict):
        raise ConfigError(f"{where}: must be a mapping with sets, image_distance, ngram; not {value!r}")
    known = ("sets", "image_distance", "ngram")
    for name in value:
        if name not in known:
            raise ConfigError(f"{where}.{name}: unknown option; known: {', '.join(known)}")
    sets = value.get("sets")
    if not isinstance(sets, list) or not sets:
        raise ConfigError(f"{where}.sets: required, a non-empty list of {{name, images, texts}}")
    parsed = []
    for position, entry in enumerate(sets):
        at = f"{where}.sets[{position}]"
        if not isinstance(entry, dict):
            raise ConfigError(f"{at}: must be a mapping with name, images, texts; not {entry!r}")
        for name in entry:
            if name not in ("name", "images", "texts"):
                raise ConfigError(f"{at}.{name}: unknown option; known: name, images, texts")
        name = entry.get("name")
        if not isinstance(name, str) or not _NAME.match(name):
            raise ConfigError(f"{at}.name: required, letters, digits, '.', '_', '-'; not {name!r}")
        if name in (s.name for s in parsed):
            raise ConfigError(f"{at}.name: {name!r} is used by an earlier set")
        images = _paths(entry.get("images"), f"{at}.images", base_dir)
        texts = _paths(entry.get("texts"), f"{at}.texts", base_dir)
        if not images and not texts:
            raise ConfigError(f"{at}: needs images, texts or both")
        parsed.append(EvalSet(name, images, texts))
    image_distance = value.get("image_distance", dedup.DEFAULT_NEAR_DISTANCE)
    if _not_int(image_distance) or not 0 <= image_distance <= dedup.MAX_NEAR_DISTANCE:
        raise ConfigError(
            f"{where}.image_distance: must be an integer from 0 to {dedup.MAX_NEAR_DISTANCE} (bits of a "
            f"64-bit pHash), not {image_distance!r}"
        )
    ngram = value.get("ngram", DEFAULT_NGRAM)
    if _not_int(ngram) or not 1 <= ngram <= 64:
        raise ConfigError(f"{where}.ngram: must be an integer from 1 to 64 (words), not {ngram!r}")
    return DecontamOptions(tuple(parsed), image_distance, ngram)


def normalize_words(text: str) -> list[str]:
    """The words of a text as n-grams see them: NFKC, casefolded, non-alphanumerics as spaces, split."""
    return _NOT_WORD.sub(" ", unicodedata.normalize("NFKC", text).casefold()).split()


def ngram_hashes(words: list[str], n: int) -> np.ndarray:
    """The 64-bit hashes (uint64) of every run of `n` consecutive words, in order; empty when shorter."""
    grams = [" ".join(words[i : i + n]) for i in range(len(words) - n + 1)]
    return np.array([_gram_hash(gram) for gram in grams], np.uint64)


@dataclass
class EvalIndex:
    """The evaluation sets as arrays: pHashes and n-gram hashes, each with the item it came from."""

    set_names: list[str]
    item_names: list[str]  # one per item of any set
    item_sets: np.ndarray  # int32: the set of each item
    image_hashes: np.ndarray  # uint64, one per evaluation image
    image_items: np.ndarray  # int32: its item
    gram_hashes: np.ndarray  # uint64, sorted
    gram_items: np.ndarray  # int32: the first item (in set, file, line order) with that n-gram
    image_distance: int
    ngram: int
    unreadable_images: list[str] = field(default_factory=list)  # evaluation images that did not decode
    short_items: int = 0  # text items shorter than ngram words, not indexed

    def check(self, samples: pa.Table) -> tuple[pa.Table, pa.Table]:
        """(the samples that overlap no evaluation set, reject rows of those that do), both in order."""
        if samples.num_rows == 0:
            return samples, reject_schema.to_table([])
        images = samples["images"].to_pylist()
        content = samples["content"].to_pylist()
        names = samples.select(["source", "key", "sample_id"]).to_pylist()
        rejects, overlapping = [], np.zeros(samples.num_rows, bool)
        for row, (sample_images, segments) in enumerate(zip(images, content, strict=True)):
            found = self._image_overlap(sample_images) or self._text_overlap(segments)
            if found is None:
                continue
            reason, item, detail, value = found
            overlapping[row] = True
            named = f"eval set '{self.set_names[self.item_sets[item]]}', item '{self.item_names[item]}'"
            rejects.append(
                reject_schema.reject(
                    names[row]["source"],
                    names[row]["key"],
                    "decontaminate",
                    reason,
                    f"{named}: {detail}",
                    sample_id=names[row]["sample_id"],
                    value=value,
                )
            )
        return samples.filter(pa.array(~overlapping)), reject_schema.to_table(rejects)

    def counts(self, rejects: pa.Table) -> dict[str, int]:
        """Rejects per evaluation set (see `overlap_counts`)."""
        return overlap_counts(rejects)

    def _image_overlap(self, images: list[dict]) -> tuple[str, int, str, float] | None:
        if not len(self.image_hashes):
            return None
        for number, image in enumerate(images):
            value = None if image["bytes"] is None else phash.phash_bytes(image["bytes"])
            if value is None:
                continue
            distances = phash.hamming_many(self.image_hashes, np.uint64(value))
            nearest = int(np.argmin(distances))  # the first evaluation image at the smallest distance
            distance = int(distances[nearest])
            if distance <= self.image_distance:
                detail = f"image {number} is {distance} bits (pHash) from this evaluation image"
                return "eval_image_overlap", int(self.image_items[nearest]), detail, float(distance)
        return None

    def _text_overlap(self, segments: list[dict]) -> tuple[str, int, str, None] | None:
        if not len(self.gram_hashes):
            return None
        for segment in segments:
            if segment["type"] != "text" or not segment["text"]:
                continue
            words = normalize_words(segment["text"])
            hashes = ngram_hashes(words, self.ngram)
            if not len(hashes):
                continue
            at = np.searchsorted(self.gram_hashes, hashes)
            hit = np.flatnonzero(self.gram_hashes[np.minimum(at, len(self.gram_hashes) - 1)] == hashes)
            if len(hit):
                first = int(hit[0])
                gram = " ".join(words[first : first + self.ngram])
                item = int(self.gram_items[at[first]])
                return "eval_text_overlap", item, f"shares the {self.ngram}-gram {gram!r}", None
        return None


def overlap_counts(rejects: pa.Table) -> dict[str, int]:
    """Decontamination rejects per evaluation set name, read from their details; other rows are ignored."""
    counts: dict[str, int] = {}
    chosen = rejects.filter(pc.equal(rejects["stage"], "decontaminate")) if rejects.num_rows else rejects
    for detail in chosen["detail"].to_pylist() if chosen.num_rows else []:
        match = _DETAIL.match(detail)
        if match:
            counts[match.group(1)] = counts.get(match.group(1), 0) + 1
    return counts


def build_eval_index(options: DecontamOptions) -> EvalIndex:
    """Read every evaluation set once: pHash every image, hash every text n-gram."""
    set_names, item_names, item_sets = [], [], []
    image_hashes, image_items, gram_hashes, gram_items = [], [], [], []
    unreadable, short = [], 0
    for set_number, eval_set in enumerate(options.sets):
        set_names.append(eval_set.name)
        for filesystem, path, shown in _files(eval_set.images):
            value = phash.phash_bytes(_read(filesystem, path))
            if value is None:
                unreadable.append(f"{eval_set.name}: {shown}")
                continue
            image_hashes.append(value)
            image_items.append(len(item_names))
            item_names.append(shown)
            item_sets.append(set_number)
        for filesystem, path, shown in _files(eval_set.texts):
            for name, text in _text_items(_read(filesystem, path), shown):
                hashes = ngram_hashes(normalize_words(text), options.ngram)
                if not len(hashes):
                    short += 1
                    continue
                gram_hashes.append(hashes)
                gram_items.append(np.full(len(hashes), len(item_names), np.int32))
                item_names.append(name)
                item_sets.append(set_number)
    grams = np.concatenate(gram_hashes) if gram_hashes else np.zeros(0, np.uint64)
    items = np.concatenate(gram_items) if gram_items else np.zeros(0, np.int32)
    # Sorted by hash, then item, so that each hash keeps its first item.
    order = np.lexsort((items, grams))
    grams, items = grams[order], items[order]
    first = np.ones(len(grams), bool)
    first[1:] = grams[1:] != grams[:-1]
    return EvalIndex(
        set_names=set_names,
        item_names=item_names,
        item_sets=np.array(item_sets, np.int32),
        image_hashes=np.array(image_hashes, np.uint64),
        image_items=np.array(image_items, np.int32),
        gram_hashes=grams[first],
        gram_items=items[first],
        image_distance=options.image_distance,
        ngram=options.ngram,
        unreadable_images=unreadable,
        short_items=short,
    )


def _not_int(value: object) -> bool:
    return isinstance(value, bool) or not isinstance(value, int)


def _gram_hash(gram: str) -> int:
    return int.from_bytes(hashlib.blake2b(gram.encode(), digest_size=8).digest(), "big")


def _paths(value: object, where: str, base_dir: str | Path) -> tuple[str, ...]:
    """A configured path or list of paths, resolved against `base_dir`; local ones must match a file."""
    if value is None:
        return ()
    values = [value] if isinstance(value, str) else value
    if not isinstance(values, list) or not all(isinstance(v, str) and v for v in values):
        raise ConfigError(
            f"{where}: must be a path or a list of paths (files, folders, globs), not {value!r}"
        )
    resolved = []
    for entry in values:
        if "://" in entry:
            resolved.append(entry)
            continue
        path = str(Path(base_dir) / Path(entry).expanduser())
        if not glob.glob(path, recursive=True):
            raise ConfigError(f"{where}: {entry!r} matches no file or folder")
        resolved.append(path)
    return tuple(resolved)


def _files(paths: tuple[str, ...]) -> list[tuple[pafs.FileSystem, str, str]]:
    """(filesystem, path, name shown in details) of every file the configured paths name, sorted per path."""
    found = []
    for entry in paths:
        if "://" in entry:
            filesystem, root = pafs.FileSystem.from_uri(entry)
            candidates = [root]
        else:
            filesystem, root = pafs.LocalFileSystem(), entry
            candidates = sorted(glob.glob(entry, recursive=True))
        for candidate in candidates:
            info = filesystem.get_file_info(candidate)
            if info.type == pafs.FileType.Directory:
                selector = pafs.FileSelector(candidate, recursive=True)
                inner = sorted(
                    i.path for i in filesystem.get_file_info(selector) if i.type == pafs.FileType.File
                )
                found += [(filesystem, path, path[len(candidate) :].lstrip("/")) for path in inner]
            elif info.type == pafs.FileType.File:
                found.append((filesystem, candidate, Path(candidate).name))
    return found


def _read(filesystem: pafs.FileSystem, path: str) -> bytes:
    with filesystem.open_input_stream(path) as stream:
        return stream.read()


def _text_items(data: bytes, shown: str) -> list[tuple[str, str]]:
    """(item name, text) of each item of an evaluation text file (see the module docstring)."""
    text = data.decode("utf-8", errors="replace")
    items = []
    as_json = shown.lower().endswith(_JSON_SUFFIXES)
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        name = f"{shown}:{number}"
        if not as_json:
            items.append((name, line))
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            items.append((name, line))  # a line that is not JSON is still text that must not leak
            continue
        if isinstance(record, dict):
            ids = [str(record[k]) for k in _ITEM_IDS if isinstance(record.get(k), str | int)]
            name = f"{name} ({ids[0]})" if ids else name
        items.append((name, "\n".join(_strings(record))))
    return items


def _strings(value: object) -> list[str]:
    """Every string in a JSON value, depth first, in order."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for inner in value.values() for s in _strings(inner)]
    if isinstance(value, list):
        return [s for inner in value for s in _strings(inner)]
    return []
