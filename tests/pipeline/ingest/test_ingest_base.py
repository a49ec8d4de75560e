"""pipeline.ingest: source configs (errors name the key), file listing, the registry, and the shared
image, text and box checks."""

from __future__ import annotations

import dataclasses
import json
import pickle
from pathlib import Path

import pytest
from ingest_support import BAD_IMAGES, animated_gif, image_bytes, png_header_only, read_source, reader, write

from pipeline import ingest
from pipeline.ingest import ConfigError, make_reader, make_readers
from pipeline.ingest.base import ImageOptions
from pipeline.ingest.checks import Rejected, check_image, check_text, clip_box, declared_size

LLAVA_LINE = json.dumps({"conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Yo"}]})


@pytest.fixture
def corpus(tmp_path: Path) -> Path:
    write(tmp_path / "chat.jsonl", LLAVA_LINE + "\n")
    write(tmp_path / "shards" / "a.tar", b"")
    (tmp_path / "images").mkdir()
    return tmp_path


BASE = {"name": "a", "format": "llava", "path": "chat.jsonl"}
DROP = object()

BAD_SOURCES = [
    # (changes to BASE (DROP removes a key), the error it must give)
    ({"format": DROP}, r"\.format: required"),
    ({"name": DROP}, r"\.name: required"),
    ({"path": DROP}, r"\.path: required"),
    ({"path": 3}, r"\.path: must be a non-empty string"),
    ({"name": "a/b"}, r"\.name: 'a/b' is not a valid source name"),
    ({"format": "lava"}, r"\.format: unknown format 'lava'; known: coco_captions, grit, llava"),
    ({"path": "nope.jsonl"}, r"\.path: .*nope\.jsonl does not exist"),
    ({"path": "*.json"}, r"\.path: .* holds no input: expected a file matching"),
    ({"path": "shards"}, r"\.path: .* holds no input: expected a file ending in \.json or \.jsonl"),
    (
        {"text_column": "t"},
        r"\.text_column: unknown option for format 'llava'; known: name, format, path, images_root",
    ),
    (
        {"format": "webdataset", "path": "shards", "images_root": "images"},
        r"\.images_root: .*reads no image files",
    ),
    ({"images_root": "chat.jsonl"}, r"\.images_root: .* is not a folder"),
    ({"images_root": "none"}, r"\.images_root: .* is not a folder"),
    ({"max_records_per_file": 0}, r"\.max_records_per_file: must be at least 1"),
    ({"max_records_per_file": True}, r"\.max_records_per_file: must be an integer"),
    ({"max_image_pixels": 1e6}, r"\.max_image_pixels: must be an integer"),
    ({"max_image_pixels": 10**9}, r"\.max_image_pixels: at most 178956970"),
    ({"image_check": "fast"}, r"\.image_check: 'fast' is not one of full, header"),
    ({"image_formats": ["JPEG", "EPSS"]}, r"\.image_formats: 'EPSS' is not one of"),
    ({"image_formats": "JPEG"}, r"\.image_formats: must be a non-empty list"),
    ({"placeholder": ""}, r"\.placeholder: must be a non-empty string"),
]


@pytest.mark.parametrize(("changes", "message"), BAD_SOURCES, ids=[m for _, m in BAD_SOURCES])
def test_bad_configuration_names_the_key(corpus: Path, changes: dict, message: str):
    source = {key: value for key, value in {**BASE, **changes}.items() if value is not DROP}
    with pytest.raises(ConfigError, match=r"^sources\[0\]" + message):
        make_reader(source, where="sources[0]", base_dir=corpus)
    with pytest.raises(ConfigError, match=r"^sources\[0\]: must be a mapping"):
        make_reader(["not", "a", "mapping"], where="sources[0]", base_dir=corpus)


def test_config_defaults_resolution_and_reserved_keys(corpus: Path):
    source = make_reader(
        {"name": "chat", "format": "llava", "path": "chat.jsonl", "render": "plain"},
        base_dir=corpus,
        reserved={"render"},
    )
    config = source.config
    assert (config.path, config.root, config.images_root) == (
        str(corpus / "chat.jsonl"),
        str(corpus),
        str(corpus),
    )
    assert config.options == ingest.llava.LlavaOptions()
    assert config.options.image_check == "full" and config.options.max_image_pixels == 89_478_485
    assert source.files() == ["chat.jsonl"]
    assert pickle.loads(pickle.dumps(source)) == source


def test_make_readers_checks_the_list_and_unique_names(corpus: Path):
    one = {"name": "a", "format": "llava", "path": "chat.jsonl"}
    with pytest.raises(ConfigError, match=r"^sources\[1\]\.name: 'a' is already the name of sources\[0\]"):
        make_readers([one, dict(one)], base_dir=corpus)
    with pytest.raises(ConfigError, match=r"^sources: must be a non-empty list"):
        make_readers([], base_dir=corpus)
    assert [r.config.name for r in make_readers([one, {**one, "name": "b"}], base_dir=corpus)] == ["a", "b"]


def test_globs_folders_and_file_uris(tmp_path: Path):
    for name in ("x/1.jsonl", "x/y/2.jsonl", "x/y/z/3.jsonl", "x/y/_skip.jsonl", "x/.h/4.jsonl", "x/5.txt"):
        write(tmp_path / name, LLAVA_LINE + "\n")
    files = {
        "x": ["1.jsonl", "5.txt", "y/2.jsonl", "y/z/3.jsonl"],  # 5.txt: listed, to be rejected
        "x/*.jsonl": ["1.jsonl"],
        "x/*/*.jsonl": ["y/2.jsonl", "y/_skip.jsonl"],
        "x/**/*.jsonl": ["1.jsonl", "y/2.jsonl", "y/_skip.jsonl", "y/z/3.jsonl"],
        "x/.h/*": ["4.jsonl"],
        "x/y/[2-3].jsonl": ["2.jsonl"],
        f"file://{tmp_path}/x/y": ["2.jsonl", "z/3.jsonl"],
        f"file://{tmp_path}/x/*.jsonl": ["1.jsonl"],
    }
    for path, expected in files.items():
        assert reader(tmp_path, format="llava", path=path).files() == expected, path
    source = reader(tmp_path, format="llava", path=f"file://{tmp_path}/x/y")
    assert source.config.root == f"file://{tmp_path}/x/y"
    samples, _, _ = read_source(source)
    assert [s["key"] for s in samples] == ["2.jsonl#0", "z/3.jsonl#0"]
    samples, rejects, _ = read_source(reader(tmp_path, format="llava", path="x"))
    assert [s["key"] for s in samples] == ["1.jsonl#0", "y/2.jsonl#0", "y/z/3.jsonl#0"]
    assert [(r["key"], r["reason"], r["sample_id"]) for r in rejects] == [("5.txt", "unsupported_file", None)]
    assert "format llava reads files ending in .json, .jsonl" in rejects[0]["detail"]
    assert "format text reads this file" in rejects[0]["detail"]


def test_options_table_documents_every_option():
    table = ingest.options_table()
    for name, reader_format in ingest.READERS.items():
        assert reader_format.name == name
        options = [f.name for f in dataclasses.fields(reader_format.options)]
        assert [row[1] for row in table if row[0] == name] == options
    assert all(meaning for *_, meaning in table)
    assert (
        "parquet",
        "image_column",
        "image",
        "column with the image: binary, {bytes, path} struct, or a path",
    ) in table


OPTIONS = ImageOptions()


@pytest.mark.parametrize("name", sorted(BAD_IMAGES))
def test_check_image_rejections(name: str):
    data, reason = BAD_IMAGES[name]
    with pytest.raises(Rejected) as caught:
        check_image(data, "x.img", OPTIONS)
    assert caught.value.reason == reason and caught.value.stage == "image"


def test_check_image_limits_formats_and_frames():
    # Between Pillow's warning and error limits: our own limit decides, from the header only.
    with pytest.raises(Rejected, match="image_too_large"):
        check_image(png_header_only(10_000, 10_000), None, OPTIONS)
    accepted = check_image(
        png_header_only(10_000, 10_000),
        None,
        dataclasses.replace(OPTIONS, max_image_pixels=10**8, image_check="header"),
    )
    assert (accepted.row["width"], accepted.row["height"]) == (10_000, 10_000)
    with pytest.raises(Rejected, match="unreadable_image"):
        check_image(image_bytes("PNG"), None, dataclasses.replace(OPTIONS, image_formats=("JPEG",)))
    gif = check_image(animated_gif(4), "a.gif", OPTIONS)
    assert gif.n_frames == 4 and gif.row["format"] == "GIF" and gif.row["path"] == "a.gif"
    assert check_image(image_bytes("BMP"), None, OPTIONS).row["format"] == "BMP"


def test_declared_size_reads_headers_pillow_refuses():
    for image_format in ("PNG", "GIF", "BMP", "JPEG"):
        assert declared_size(image_bytes(image_format, (16, 12))) == (16, 12), image_format
    jpeg = bytearray(image_bytes("JPEG", (16, 12)))
    sof = jpeg.index(b"\xff\xc0")
    jpeg[sof + 5 : sof + 7] = b"\x00\x00"
    assert declared_size(bytes(jpeg)) == (16, 0)
    with pytest.raises(Rejected, match="zero_size_image"):
        check_image(bytes(jpeg), None, OPTIONS)
    assert declared_size(b"RIFF....WEBP") is None


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (None, "missing_field"),
        (3, "bad_field"),
        ("", "empty_text"),
        (" \n", "empty_text"),
        ("a\x00", "bad_text"),
        ("\udcff", "bad_text"),
        (b"\xff", "bad_text"),
    ],
)
def test_check_text(value: object, reason: str):
    with pytest.raises(Rejected) as caught:
        check_text(value, "caption")
    assert caught.value.reason == reason
    assert check_text(b"caf\xc3\xa9", "caption") == "café"


def test_clip_box():
    assert clip_box([-5, 2, 10, 30], 20, 20) == [0.0, 2.0, 10.0, 20.0]
    assert clip_box((1, 1, 2, 2), 20, 20) == [1.0, 1.0, 2.0, 2.0]
    for box, reason in [
        ([5, 5, 5, 9], "degenerate_box"),
        ([5, 9, 8, 2], "degenerate_box"),
        ([20, 0, 30, 5], "box_outside_image"),
        ([-9, -9, -1, -1], "box_outside_image"),
        ([1, 2, 3], "bad_field"),
        ([1, 2, 3, float("nan")], "bad_field"),
        ([True, 0, 1, 1], "bad_field"),
    ]:
        with pytest.raises(Rejected) as caught:
            clip_box(box, 20, 20)
        assert caught.value.reason == reason, box


def test_readme_documents_every_option():
    readme = (Path(__file__).resolve().parents[3] / "README.md").read_text(encoding="utf-8")
    for _format, name, default, _meaning in ingest.options_table():
        assert f"| `{name}` |" in readme and f"| `{default}` |" in readme, name
