"""jobs.config: the example config loads; every mistake fails before Ray starts, naming its key."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from jobs.config import REFERENCE, ConfigError, load_config, parse_config
from pipeline import ingest

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "jobs" / "examples" / "pretokenize.yaml"
CORPUS = REPO / "jobs" / "examples" / "corpus"


def minimal() -> dict:
    return {
        "sources": [{"name": "text", "format": "text", "path": str(CORPUS / "text.jsonl")}],
        "output": {"dir": "out"},
    }


def test_example_config_loads_with_defaults(tmp_path):
    config = load_config(EXAMPLE)
    names = [
        "llava",
        "coco",
        "laion-style",
        "hf-captions",
        "text",
        "obelics",
        "mmc4",
        "ocr",
        "textocr",
        "refcoco",
    ]
    assert [reader.config.name for reader in config.readers] == [*names, "grit"]
    # Every input format has a source in the example.
    assert {reader.config.format for reader in config.readers} == set(ingest.READERS)
    assert config.shape.name == "tiny" and config.compression == "zstd"
    assert config.shard_target_bytes == 64 * 2**20
    assert config.output_dir == str((REPO / "out" / "example").resolve())
    assert config.sequence_options[1].templates.render == "plain"
    captions = [reader.config.name for reader in config.readers].index("hf-captions")
    assert config.filters[captions].thresholds["min_text_chars"] == 12
    assert config.dedup[captions].by == ("sample", "image", "text")
    assert sum(map(bool, config.filters)) == 1 and sum(d is not None for d in config.dedup) == 1

    defaults = parse_config(minimal(), base_dir=tmp_path)
    assert defaults.shard_target_bytes == 256 * 2**20 and not defaults.packing
    assert defaults.sequence_options[0].overflow == "drop" and defaults.ray_address is None
    assert defaults.output_dir == str(tmp_path / "out")
    assert (
        len(defaults.identity()) == 64 and defaults.identity() == parse_config(minimal(), tmp_path).identity()
    )


def edit(path: str, value):
    """A minimal config with one key set (a dotted path; a list index as a number)."""
    config = minimal()
    *parents, last = path.split(".")
    node = config
    for part in parents:
        node = node[int(part)] if part.isdigit() else node.setdefault(part, {})
    if value is KeyError:
        del node[last]
    else:
        node[int(last) if last.isdigit() else last] = value
    return config


@pytest.mark.parametrize(
    ("path", "value", "message"),
    [
        ("colour", "blue", "colour: unknown key"),
        ("model_shape", "huge", "model_shape:"),
        ("tokenizer", {"kind": "bpe", "path": "x"}, "tokenizer.kind"),
        ("tokenizer", {"kind": "hf", "path": "missing.json"}, "tokenizer.path"),
        ("sources", KeyError, "sources: required"),
        ("sources", [], "sources"),
        ("sources.0.format", "pdf", "sources[0].format: unknown format"),
        ("sources.0.path", "absent.jsonl", "sources[0].path"),
        ("sources.0.name", None, "sources[0].name: required"),
        ("sources.0.text_colum", "x", "sources[0].text_colum"),
        ("sources.0.render", "poem", "sources[0]: render"),
        ("sources.0.filters", {"min_side": 3}, "sources[0].filters.min_side"),
        ("sources.0.filters", {"min_image_side": -3}, "sources[0].filters.min_image_side"),
        ("sources.0.filters", {"max_padding_share": 1.5}, "sources[0].filters.max_padding_share"),
        ("sources.0.filters", {"min_text_chars": 9, "max_text_chars": 3}, "sources[0].filters"),
        ("sources.0.dedup", ["pictures"], "sources[0].dedup"),
        ("sources.0.dedup", {"by": ["text"], "image_hash": "md5"}, "sources[0].dedup.image_hash"),
        ("sequence.overflow", "wrap", "sequence.overflow"),
        ("sequence.max_seq_len", 1, "sequence.max_seq_len"),
        ("sequence.max_seq_len", 8192, "sequence.max_seq_len: 8192 exceeds"),
        ("sequence.packing", "yes", "sequence.packing"),
        ("sequence.window", 3, "sequence.window: unknown key"),
        ("output", KeyError, "output.dir: required"),
        ("output.shard_target_bytes", "lots", "output.shard_target_bytes"),
        ("output.compression", "rar", "output.compression"),
        ("output.stats", "sometimes", "output.stats"),
        ("ray.address", 5, "ray.address"),
        ("ray.num_cpus", 0, "ray.num_cpus"),
    ],
)
def test_each_mistake_names_its_key(tmp_path, path, value, message):
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
        parse_config(edit(path, value), base_dir=tmp_path)


def test_duplicate_source_names(tmp_path):
    config = minimal()
    config["sources"].append(dict(config["sources"][0]))
    with pytest.raises(ConfigError, match=r"sources\[1\].name"):
        parse_config(config, base_dir=tmp_path)


def test_unreadable_files(tmp_path):
    with pytest.raises(ConfigError, match="cannot read the config file"):
        load_config(tmp_path / "none.yaml")
    broken = tmp_path / "broken.yaml"
    broken.write_text("sources: [\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(broken)
    listed = tmp_path / "list.yaml"
    listed.write_text(yaml.safe_dump([1, 2]))
    with pytest.raises(ConfigError, match="must be a mapping"):
        load_config(listed)


def test_readme_documents_every_key():
    readme = (REPO / "README.md").read_text()
    for key, _default, _meaning in REFERENCE:
        assert f"`{key}`" in readme, key
