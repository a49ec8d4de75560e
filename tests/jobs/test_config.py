"""jobs.config: the example config loads; every mistake fails before Ray starts, naming its key."""

from __future__ import annotations

import os
import subprocess
import sys
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
    assert [source.name for source in config.sources] == [*names, "grit"]
    assert [source.index for source in config.sources] == list(range(len(names) + 1))
    # Every input format has a source in the example.
    assert {source.reader.config.format for source in config.sources} == set(ingest.READERS)
    assert config.shape.name == "tiny" and config.output.compression == "zstd"
    assert config.output.shard_target_bytes == 64 * 2**20 and config.max_seq_len == 4096
    assert config.output_dir == str((REPO / "out" / "example").resolve())
    assert config.sources[1].sequence.templates.render == "plain"
    captions = next(source for source in config.sources if source.name == "hf-captions")
    assert captions.filters.thresholds["min_text_chars"] == 12
    assert captions.dedup.by == ("sample", "image", "text")
    assert sum(bool(s.filters) for s in config.sources) == 1
    assert sum(s.dedup is not None for s in config.sources) == 1

    defaults = parse_config(minimal(), base_dir=tmp_path)
    assert defaults.output.shard_target_bytes == 256 * 2**20 and defaults.packing is None
    assert not defaults.output_shared and defaults.decontaminate is None
    assert defaults.sources[0].sequence.overflow == "drop" and defaults.ray_address is None
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


@pytest.mark.parametrize(
    "value", ["1e400", "-1e400", float("inf"), float("nan"), -1, 10**30, "1e30", "65GiB"]
)
def test_shard_target_bytes_must_be_a_sane_size(tmp_path, value):
    with pytest.raises(ConfigError, match=r"^output\.shard_target_bytes: "):
        parse_config(edit("output.shard_target_bytes", value), base_dir=tmp_path)


def test_output_dir_must_not_overlap_an_input(tmp_path):
    """The README's layout `path: "shards/*.tar"` with `output: {dir: .}` would make the corpus part of
    the output folder; so would an output inside an images_root."""
    (tmp_path / "shards").mkdir()
    (tmp_path / "shards" / "a.tar").write_bytes((CORPUS / "webdataset" / "shard-000000.tar").read_bytes())
    config = {
        "sources": [{"name": "w", "format": "webdataset", "path": "shards/*.tar"}],
        "output": {"dir": "."},
    }
    with pytest.raises(ConfigError, match=r"^output\.dir: .* holds the input folder .*sources\[0\]\.path"):
        parse_config(config, base_dir=tmp_path)
    config["output"]["dir"] = "shards/out"
    with pytest.raises(ConfigError, match=r"^output\.dir: .* lies inside the input folder"):
        parse_config(config, base_dir=tmp_path)
    images = edit("sources.0.images_root", str(tmp_path))
    images["sources"][0].update(format="llava", path=str(CORPUS / "llava.json"))
    with pytest.raises(ConfigError, match=r"^output\.dir: .*sources\[0\]\.images_root"):
        parse_config(images, base_dir=tmp_path)


@pytest.mark.parametrize(("location", "reason"), [("/", "root folder"), ("~", "home folder")])
def test_output_dir_must_not_be_a_root_or_a_home(tmp_path, location, reason):
    with pytest.raises(ConfigError, match=f"^output.dir: .*{reason}"):
        parse_config(edit("output.dir", os.path.expanduser(location)), base_dir=tmp_path)


@pytest.mark.timeout(30)
def test_only_a_regular_file_is_read(tmp_path):
    fifo = tmp_path / "fifo.yaml"
    os.mkfifo(fifo)  # reading it would wait for a writer forever
    for path, kind in ((fifo, "a FIFO"), (tmp_path, "a folder"), (Path("/dev/zero"), "a device")):
        with pytest.raises(ConfigError, match=f"it is {kind}, not a regular file"):
            load_config(path)
    big = tmp_path / "big.yaml"
    with big.open("wb") as handle:
        handle.truncate(16 * 2**20 + 1)
    with pytest.raises(ConfigError, match="larger than 16 MiB"):
        load_config(big)
    latin = tmp_path / "latin.yaml"
    latin.write_bytes("output: {dir: caf\xe9}\n".encode("latin-1"))
    with pytest.raises(ConfigError, match=r"not UTF-8 text \(byte 17\)"):
        load_config(latin)


def billion_laughs() -> str:
    """A valid job whose output.dir is ten nested levels of nine aliases each: 9¹⁰ strings once expanded."""
    levels = ['    - &a ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]\n']
    levels += [
        f"    - &{name} [{', '.join([f'*{previous}'] * 9)}]\n"
        for previous, name in zip("abcdefghi", "bcdefghij", strict=True)
    ]
    source = f"  - {{name: t, format: text, path: {CORPUS / 'text.jsonl'}}}\n"
    return "sources:\n" + source + "output:\n  dir:\n" + "".join(levels)


@pytest.mark.timeout(60)
def test_a_billion_laughs_is_refused_without_expanding_it(tmp_path):
    """Without a bound the aliases load as shared references, and the first message quoting output.dir
    (or the config's identity) expands them: gigabytes from a file of less than 1 KiB."""
    config = tmp_path / "laughs.yaml"
    config.write_text(billion_laughs())
    assert config.stat().st_size < 1024
    script = (
        "import resource, sys\n"
        "resource.setrlimit(resource.RLIMIT_AS, (3 * 2**30, 3 * 2**30))\n"
        "from jobs.config import ConfigError, load_config\n"
        "try:\n"
        f"    load_config({str(config)!r})\n"
        "except ConfigError as error:\n"
        "    print(error)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=50
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "YAML aliases expand the config by more than" in result.stdout
    assert len(result.stdout) < 500 and "lol" not in result.stdout


def test_yaml_aliases_within_bounds_and_merge_keys_still_work(tmp_path):
    config = tmp_path / "job.yaml"
    config.write_text(
        f"defaults: &source {{format: text, path: {CORPUS / 'text.jsonl'}}}\n"
        "sources:\n  - {<<: *source, name: one}\n  - {<<: *source, name: two}\n"
        "output: {dir: out}\n"
    )
    with pytest.raises(ConfigError, match="defaults: unknown key"):
        load_config(config)  # the aliases load; the unknown top-level key is the only mistake
    config.write_text(config.read_text().replace("defaults: &source", "sequence: {}\nx-defaults: &source"))
    with pytest.raises(ConfigError, match="x-defaults: unknown key"):
        load_config(config)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("a: &a [1, *a]\n", "line 1: a YAML alias refers to a node that contains it"),
        ("[" * 5000 + "]" * 5000, "nested too deeply"),
        ("a: " + "[" * 200 + "]" * 200 + "\n", "line 1: the YAML nests more than 100 levels deep"),
        ("sources: [1\n", r"not valid YAML: line 2, column 1: expected ',' or '\]'"),
        ("a: *missing\n", "not valid YAML: line 1, column 4: found undefined alias"),
    ],
)
def test_yaml_problems_are_one_line(tmp_path, text, message):
    config = tmp_path / "job.yaml"
    config.write_text(text)
    with pytest.raises(ConfigError, match=message) as error:
        load_config(config)
    assert "\n" not in str(error.value) and str(config) in str(error.value)
