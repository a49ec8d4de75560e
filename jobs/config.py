"""The pretokenize job's configuration: a YAML file turned into a validated `JobConfig`.

Everything is checked before Ray starts: unknown keys, wrong types, impossible values, missing input
paths, an unknown model shape or an unloadable tokenizer are `ConfigError`s that name the key to
change (`sources[1].format: unknown format ...`, `sequence.overflow: ...`). Only `sources[].name`,
`sources[].format`, `sources[].path` and `output.dir` are required; every other key has the default
listed in `REFERENCE` (the README's config table is this list). Relative paths resolve against the
config file's folder; input paths and `output.dir` may be `pyarrow.fs` URIs (file://, s3://, gs://).
`output.dir` may not be `/`, a home folder, a file-system or bucket root, nor be, hold or lie inside any
source's `path` or `images_root` (the job deletes only what it wrote, and never an input).
"""

from __future__ import annotations

import functools
import os
import stat
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

import model_shapes
from pipeline import ingest, shards
from pipeline import packing as packing_options
from pipeline import tokenizer as tokenizers
from pipeline.decontam import DecontamOptions, parse_decontaminate
from pipeline.dedup import parse_dedup
from pipeline.errors import ConfigError
from pipeline.filters import FILTERS, parse_filters
from pipeline.partition import OutputPlan, SourcePlan
from pipeline.sequence import OVERFLOW_POLICIES, SequenceOptions
from pipeline.templates import PROMPT_LISTS, TemplateConfig

__all__ = ["REFERENCE", "ConfigError", "JobConfig", "load_config", "parse_config"]

TEMPLATE_KEYS = ("render", "prompts", "system")
"""Per-source keys that belong to templating, not to the reader."""
CURATION_KEYS = ("filters", "dedup")
"""Per-source keys that belong to filtering and deduplication (`pipeline.filters`, `pipeline.dedup`)."""

COMPRESSIONS = ("zstd", "snappy", "gzip", "lz4", "none")

REFERENCE: list[tuple[str, str, str]] = [
    (
        "model_shape",
        "tiny",
        "tiny, small, base or toy, or a path to a shape JSON file or an official config.json",
    ),
    (
        "tokenizer",
        "default",
        "default: the shape's own (deepseek-vl2, shipped, for tiny and base; demo for toy; small needs "
        "{kind: hf, path: ...}; for a model_shape config.json, the tokenizer.json beside it); a shipped one "
        "by name (deepseek-vl2, demo); or {kind: hf, path: tokenizer.json or a model folder} / "
        "{kind: sentencepiece, path: FILE}",
    ),
    ("sources", "(required)", "list of input sources, read in order; see the per-source keys below"),
    (
        "sources[].name",
        "(required)",
        "the source's name: letters, digits, '.', '_', '-'; names output folders",
    ),
    ("sources[].format", "(required)", "the input format: " + ", ".join(sorted(ingest.READERS))),
    ("sources[].path", "(required)", "a file, a folder or a glob (relative to the config file), or a URI"),
    (
        "sources[].images_root",
        "folder of path",
        "where image paths of the records are resolved; absolute paths are accepted when they resolve "
        "inside it",
    ),
    ("sources[].render", "the kind's default", "chat or plain, for kinds that allow both (caption, ocr)"),
    (
        "sources[].prompts",
        "shipped lists",
        "prompt lists replacing the shipped ones: " + ", ".join(PROMPT_LISTS),
    ),
    (
        "sources[].system",
        '""',
        "system text for chat renderings of samples that carry none, rendered exactly as a system message "
        "(see Templates and labels)",
    ),
    *(
        (
            f"sources[].filters.{spec.name}",
            "off",
            f"drop samples whose {spec.quantity} is {'below' if spec.bound == 'min' else 'above'} this "
            f"({spec.range_text}{', ' + spec.unit if spec.unit else ''}); "
            f"{spec.quantity}: {spec.description}",
        )
        for spec in FILTERS.values()
    ),
    (
        "sources[].dedup",
        "off",
        "exact deduplication by sample, image and/or text, and near-duplicate images by image_near: a list "
        "of those, or {by: [...], across_sources: true, image_hash: bytes or pixels, near_distance: 10}; the "
        "first copy in config and file order is kept",
    ),
    (
        "sources[].dedup.near_distance",
        "10",
        "with image_near: drop a sample whose image is within this many bits (0-16) of the 64-bit DCT pHash "
        "of an image of any earlier sample",
    ),
    (
        "decontaminate",
        "off",
        "{sets: [{name, images, texts}], image_distance: 10, ngram: 13}: reject samples whose image is "
        "within image_distance bits of an evaluation image (eval_image_overlap) or whose text shares an "
        "ngram-word n-gram with an evaluation text (eval_text_overlap); images and texts: files, folders, "
        "globs or URIs",
    ),
    ("sequence.max_seq_len", "the shape's (4096)", "longest sequence in tokens"),
    ("sequence.overflow", "drop", "what happens to longer samples: " + ", ".join(OVERFLOW_POLICIES)),
    (
        "sequence.packing",
        "false",
        "true: pack samples into rows of exactly max_seq_len tokens (within each input file); or "
        "{max_tiles: N, buffer: 1024}: also at most N tiles per row (a sample needing more is rejected, "
        "too_many_tiles)",
    ),
    ("sequence.embed_images", "true", "store image bytes in the rows (false: only their paths)"),
    (
        "output.dir",
        "(required)",
        "the output folder (path relative to the config file, or a URI); not /, a home folder, a file-system "
        "or bucket root, and neither inside, equal to nor holding any source's path or images_root",
    ),
    (
        "output.shard_target_bytes",
        "256MiB",
        "target size of a shard file (bytes, or 64MiB, 1GB, ...; at most 64GiB)",
    ),
    ("output.compression", "zstd", "Parquet compression: " + ", ".join(COMPRESSIONS)),
    (
        "output.shared",
        "false",
        "true: a local output.dir is a mount every node of a multi-node Ray cluster sees (NFS, Lustre, ...); "
        "without it a local output.dir on a multi-node cluster stops the job before any work",
    ),
    ("output.stats", "true", "write OUT/stats/ (stats.json, report.html, report.md) at the end of the job"),
    (
        "ray.address",
        "null",
        "null: an embedded local Ray (or RAY_ADDRESS when set); `local`: always the embedded Ray; `auto` or "
        "an address: join a running cluster, which must use token authentication (the address must answer "
        "within 30 s)",
    ),
    ("ray.num_cpus", "null", "CPUs of the embedded local Ray (null: all of this machine's)"),
]

_SECTIONS: dict[str, tuple[str, ...]] = {
    "sequence": ("max_seq_len", "overflow", "packing", "embed_images"),
    "output": ("dir", "shard_target_bytes", "compression", "stats", "shared"),
    "ray": ("address", "num_cpus"),
}
_TOP_KEYS = ("model_shape", "tokenizer", "sources", "decontaminate", *_SECTIONS)


@dataclass(frozen=True)
class JobConfig:
    """A validated job: readers and sequence options per source, the shape, tokenizer and output."""

    raw: Mapping[str, Any]  # the config as written (paths as given), recorded in the manifest
    base_dir: str
    shape: model_shapes.ModelShape
    tokenizer_path: str  # a shipped tokenizer's name (`pipeline.tokenizer.NAMES`) or a file or folder
    tokenizer_kind: str | None
    tokenizer_sha256: str
    tokenizer_summary: Mapping[str, Any]  # the manifest's `tokenizer`: kind, sha256, pieces
    sources: tuple[SourcePlan, ...]  # in config order
    max_seq_len: int  # sequence.max_seq_len, or the shape's
    packing: packing_options.PackingOptions | None  # sequence.packing (None: off)
    output: OutputPlan
    output_shared: bool  # output.shared: a local output.dir that every node of a cluster sees
    decontaminate: DecontamOptions | None  # the evaluation sets samples must not overlap (None: off)
    write_stats: bool
    ray_address: str | None
    ray_num_cpus: int | None

    def identity(self) -> str:
        """`pipeline.shards.config_identity` of this config: two runs with the same identity and the same
        inputs must produce the same output."""
        return shards.config_identity(self.raw, self.tokenizer_sha256, self.shape.fingerprint())

    def load_tokenizer(self) -> tokenizers.Tokenizer:
        """The tokenizer, checked against the shape."""
        return tokenizers.load(self.tokenizer_path, self.shape, kind=self.tokenizer_kind)

    @property
    def output_dir(self) -> str:
        return self.output.dir


MAX_CONFIG_BYTES = 16 * 2**20
"""The largest config file read; a longer one is refused unread."""
MAX_ALIAS_EXPANSION = 1_000_000
"""Nodes and scalar characters that YAML aliases may add to a config when expanded (a "billion laughs"
adds 10⁹ from a few hundred bytes)."""
MAX_NESTING = 100
"""Deepest nesting of mappings and lists in a config (a real one needs about 5)."""


def load_config(path: str | os.PathLike[str]) -> JobConfig:
    """Read and validate a YAML config file; relative paths resolve against its folder.

    Only a regular file is read (a folder, a FIFO or a device is refused before reading), at most
    `MAX_CONFIG_BYTES` of it, as UTF-8, with YAML aliases bounded by `MAX_ALIAS_EXPANSION` and nesting by
    `MAX_NESTING`: every problem is a one-line `ConfigError`."""
    config_path = Path(path)
    text = _read_config_text(config_path)
    try:
        raw = yaml.load(text, Loader=_BoundedLoader)  # a SafeLoader: builds no Python objects
    except yaml.MarkedYAMLError as error:
        mark = error.problem_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
        context = f" ({error.context})" if error.context else ""
        raise ConfigError(f"{config_path} is not valid YAML: {where}{error.problem}{context}") from None
    except yaml.YAMLError as error:
        raise ConfigError(f"{config_path} is not valid YAML: {' '.join(str(error).split())}") from None
    except RecursionError:
        raise ConfigError(f"{config_path} is not a usable config: its YAML is nested too deeply") from None
    except ConfigError as error:
        raise ConfigError(f"{config_path}: {error}") from None
    return parse_config(raw, base_dir=config_path.resolve().parent)


def _read_config_text(config_path: Path) -> str:
    """The text of a regular file of at most `MAX_CONFIG_BYTES`. The file is opened non-blocking (a FIFO
    opens at once instead of waiting for a writer) and its type is checked on the open descriptor, so
    nothing but a regular file is ever read."""
    unreadable = f"cannot read the config file {config_path}"
    try:
        fd = os.open(config_path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as error:
        raise ConfigError(f"{unreadable}: {error.strerror or error}") from None
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            kind = "a folder" if stat.S_ISDIR(mode) else "a FIFO" if stat.S_ISFIFO(mode) else "a device"
            raise ConfigError(f"{unreadable}: it is {kind}, not a regular file")
        with os.fdopen(os.dup(fd), "rb") as stream:
            data = stream.read(MAX_CONFIG_BYTES + 1)
    except OSError as error:
        raise ConfigError(f"{unreadable}: {error.strerror or error}") from None
    finally:
        os.close(fd)
    if len(data) > MAX_CONFIG_BYTES:
        raise ConfigError(f"{unreadable}: it is larger than {MAX_CONFIG_BYTES // 2**20} MiB")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise ConfigError(f"{unreadable}: not UTF-8 text (byte {error.start})") from None


class _BoundedLoader(yaml.SafeLoader):
    """A SafeLoader that measures each document before constructing it: what its aliases add once
    expanded and its nesting are bounded and recursive aliases refused, so that a tiny file cannot expand
    into gigabytes later (in the config's identity, in an error message quoting a value)."""

    def compose_document(self) -> yaml.Node:
        node = super().compose_document()
        _check_expansion(node)
        return node


def _check_expansion(root: yaml.Node) -> None:
    """`ConfigError` when aliases expand `root` by more than `MAX_ALIAS_EXPANSION` nodes and scalar
    characters, when it nests deeper than `MAX_NESTING`, or when an alias refers to a node that contains
    it. Each distinct node is visited once (no expansion happens here): its expanded weight is 1, plus its
    characters for a scalar, plus the weights of its children."""
    expanded: dict[int, int] = {}
    distinct = 0
    on_path: set[int] = set()
    stack: list[tuple[yaml.Node, bool, int]] = [(root, False, 0)]
    while stack:
        node, finished, depth = stack.pop()
        children = _children(node)
        if finished:
            own = 1 + (len(node.value) if isinstance(node, yaml.ScalarNode) else 0)
            distinct += own
            expanded[id(node)] = own + sum(expanded[id(child)] for child in children)
            on_path.discard(id(node))
            continue
        if id(node) in expanded:
            continue
        if id(node) in on_path:
            line = node.start_mark.line + 1 if node.start_mark is not None else "?"
            raise ConfigError(f"line {line}: a YAML alias refers to a node that contains it")
        if depth > MAX_NESTING:
            line = node.start_mark.line + 1 if node.start_mark is not None else "?"
            raise ConfigError(f"line {line}: the YAML nests more than {MAX_NESTING} levels deep")
        on_path.add(id(node))
        stack.append((node, True, depth))
        stack.extend((child, False, depth + 1) for child in children if id(child) not in expanded)
    if expanded[id(root)] - distinct > MAX_ALIAS_EXPANSION:
        raise ConfigError(
            f"YAML aliases expand the config by more than {MAX_ALIAS_EXPANSION} nodes and characters "
            "(a 'billion laughs'); write it out without such aliases"
        )


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    if isinstance(node, yaml.MappingNode):
        return [part for pair in node.value for part in pair]
    return []


def parse_config(raw: object, base_dir: str | os.PathLike[str]) -> JobConfig:
    """Validate a parsed config mapping completely (see the module docstring)."""
    if not isinstance(raw, Mapping):
        raise ConfigError("the config must be a mapping with at least sources and output")
    _no_unknown(raw, _TOP_KEYS, "")
    base = str(base_dir)
    sections = {name: _section(raw, name) for name in _SECTIONS}

    shape = _shape(raw.get("model_shape", "tiny"), base)
    tokenizer_path, tokenizer_kind = _tokenizer_spec(raw, base)
    tokenizer = _tokenizer(tokenizer_path, tokenizer_kind, shape)

    if "sources" not in raw:
        raise ConfigError("sources: required (a list of {name, format, path})")
    readers = tuple(
        ingest.make_readers(
            raw["sources"], where="sources", base_dir=base, reserved=(*TEMPLATE_KEYS, *CURATION_KEYS)
        )
    )
    source_filters = tuple(
        parse_filters(source.get("filters"), f"sources[{index}].filters")
        for index, source in enumerate(raw["sources"])
    )
    source_dedup = tuple(
        parse_dedup(source.get("dedup"), f"sources[{index}].dedup")
        for index, source in enumerate(raw["sources"])
    )

    sequence = sections["sequence"]
    max_seq_len = _optional_int(sequence, "max_seq_len", "sequence", minimum=3)
    shape_limit = tokenizer.shape.max_seq_len
    if (max_seq_len or shape_limit) > shape_limit:
        raise ConfigError(
            f"sequence.max_seq_len: {max_seq_len} exceeds the model shape's max_seq_len {shape_limit}"
        )
    overflow = sequence.get("overflow", "drop")
    if overflow not in OVERFLOW_POLICIES:
        raise ConfigError(f"sequence.overflow: {overflow!r} is not one of {', '.join(OVERFLOW_POLICIES)}")
    packing = packing_options.parse_packing(sequence.get("packing", False), "sequence.packing")
    embed_images = _bool(sequence, "embed_images", "sequence", True)
    plans = []
    for index, (source, reader) in enumerate(zip(raw["sources"], readers, strict=True)):
        try:
            templates = TemplateConfig(
                render=source.get("render"), prompts=source.get("prompts"), system=source.get("system", "")
            )
        except ValueError as error:
            raise ConfigError(f"sources[{index}]: {error}") from None
        plans.append(
            SourcePlan(
                index=index,
                name=reader.config.name,
                reader=reader,
                sequence=SequenceOptions(
                    max_seq_len=max_seq_len, overflow=overflow, embed_images=embed_images, templates=templates
                ),
                filters=source_filters[index],
                dedup=source_dedup[index],
            )
        )

    output = sections["output"]
    if not output.get("dir"):
        raise ConfigError("output.dir: required (the folder the job writes)")
    if not isinstance(output["dir"], str):
        raise ConfigError(f"output.dir: must be a path or URI string, not a {type(output['dir']).__name__}")
    inputs = [(f"sources[{index}].path", reader.config.root) for index, reader in enumerate(readers)]
    inputs += [
        (f"sources[{index}].images_root", reader.config.images_root)
        for index, reader in enumerate(readers)
        if reader.config.images_root != reader.config.root
    ]
    try:
        shards.check_output_location(_resolve(output["dir"], base), inputs)
    except ValueError as error:
        raise ConfigError(f"output.dir: {error}") from None
    try:
        target = shards.parse_size(output.get("shard_target_bytes", "256MiB"), maximum=shards.MAX_SHARD_BYTES)
    except ValueError as error:
        raise ConfigError(f"output.shard_target_bytes: {error}") from None
    compression = output.get("compression", "zstd")
    if compression not in COMPRESSIONS:
        raise ConfigError(f"output.compression: {compression!r} is not one of {', '.join(COMPRESSIONS)}")

    ray_section = sections["ray"]
    address = ray_section.get("address")
    if address is not None and not isinstance(address, str):
        raise ConfigError(f"ray.address: must be null, 'auto' or an address string, not {address!r}")

    return JobConfig(
        raw=raw,
        base_dir=base,
        shape=tokenizer.shape,
        tokenizer_path=tokenizer_path,
        tokenizer_kind=tokenizer_kind,
        tokenizer_sha256=tokenizer.identity,
        tokenizer_summary={
            "kind": tokenizer.kind,
            "sha256": tokenizer.identity,
            "pieces": tokenizer.piece_count,
        },
        sources=tuple(plans),
        max_seq_len=max_seq_len or shape_limit,
        packing=packing,
        output=OutputPlan(
            dir=_resolve(output["dir"], base), shard_target_bytes=target, compression=compression
        ),
        output_shared=_bool(output, "shared", "output", False),
        decontaminate=parse_decontaminate(raw.get("decontaminate"), "decontaminate", base),
        write_stats=_bool(output, "stats", "output", True),
        ray_address=address,
        ray_num_cpus=_optional_int(ray_section, "num_cpus", "ray", minimum=1),
    )


def _section(raw: Mapping[str, Any], name: str) -> Mapping[str, Any]:
    section = raw.get(name) or {}
    if not isinstance(section, Mapping):
        raise ConfigError(f"{name}: must be a mapping, not {section!r}")
    _no_unknown(section, _SECTIONS[name], f"{name}.")
    return section


def _no_unknown(mapping: Mapping[str, Any], known: tuple[str, ...], prefix: str) -> None:
    for key in mapping:
        if key not in known:
            raise ConfigError(f"{prefix}{key}: unknown key; known: {', '.join(known)}")


def _shape(value: object, base: str) -> model_shapes.ModelShape:
    if not isinstance(value, str):
        raise ConfigError(f"model_shape: must be a variant name or a path, not {value!r}")
    name = value if value in model_shapes.VARIANTS else _resolve(value, base)
    try:
        return model_shapes.load(name)
    except model_shapes.ShapeError as error:
        raise ConfigError(f"model_shape: {error}") from None


def _tokenizer_spec(raw: Mapping[str, Any], base: str) -> tuple[str, str | None]:
    """(a shipped tokenizer's name or a path, kind or None) from the config's `tokenizer` value."""
    value = raw.get("tokenizer", "default")
    if value == "default":
        beside = _tokenizer_beside_shape(raw.get("model_shape"), base)
        return (beside, "hf") if beside else ("default", None)
    if isinstance(value, str):
        if value in tokenizers.NAMES:
            return value, None
        raise ConfigError(
            f"tokenizer: {value!r} is not a shipped tokenizer ({', '.join(tokenizers.NAMES)}); give a file "
            "or folder as {kind: hf or sentencepiece, path: ...}"
        )
    if not isinstance(value, Mapping):
        raise ConfigError(f"tokenizer: must be a name or {{kind, path}}, not {value!r}")
    _no_unknown(value, ("kind", "path"), "tokenizer.")
    kind = value.get("kind")
    if kind not in tokenizers.KINDS:
        raise ConfigError(f"tokenizer.kind: {kind!r} is not one of {', '.join(tokenizers.KINDS)}")
    if not isinstance(value.get("path"), str):
        raise ConfigError("tokenizer.path: required (a tokenizer.json or .model file, or a model folder)")
    path = _resolve(value["path"], base)
    if not Path(path).exists():
        raise ConfigError(f"tokenizer.path: no such file or folder {path}")
    return path, kind


def _tokenizer_beside_shape(model_shape: object, base: str) -> str | None:
    """The model folder of a `model_shape` given as an official config.json that has a tokenizer.json beside
    it (a Hugging Face model folder): its tokenizer is the default."""
    if not isinstance(model_shape, str) or model_shape in model_shapes.VARIANTS:
        return None
    folder = Path(_resolve(model_shape, base)).parent
    return str(folder) if (folder / "tokenizer.json").is_file() else None


def _tokenizer(source: str, kind: str | None, shape: model_shapes.ModelShape) -> tokenizers.Tokenizer:
    """The tokenizer, loaded and checked against the shape; the demo tokenizer is refused for the released
    shapes even when given by path (a model of theirs could not train on its ids)."""
    path = Path(source)
    if shape.name in tokenizers.DEEPSEEK_SHAPES and path.is_file() and path.suffix == ".model":
        if tokenizers.file_sha256(path) == _demo_identity():
            raise ConfigError(
                f"tokenizer: {source} is the demo tokenizer, whose ids are not DeepSeek's: a DeepSeek-VL2 "
                f"{shape.name} model could not train on them (use tokenizer: default)"
            )
    try:
        return tokenizers.load(source, shape, kind=kind)
    except (tokenizers.TokenizerError, OSError) as error:
        raise ConfigError(f"tokenizer: {error} (check model_shape and tokenizer)") from None


@functools.cache
def _demo_identity() -> str:
    return tokenizers.file_sha256(tokenizers.DEMO_MODEL)


def _bool(section: Mapping[str, Any], key: str, name: str, default: bool) -> bool:
    value = section.get(key, default)
    if not isinstance(value, bool):
        raise ConfigError(f"{name}.{key}: must be true or false, not {value!r}")
    return value


def _optional_int(section: Mapping[str, Any], key: str, name: str, minimum: int) -> int | None:
    value = section.get(key)
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise ConfigError(f"{name}.{key}: must be an integer of at least {minimum} (or null), not {value!r}")
    return value


def _resolve(path: str, base: str) -> str:
    if "://" in path or os.path.isabs(path):
        return path
    return os.path.normpath(os.path.join(base, path))
