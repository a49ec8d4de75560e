"""Confinement: a file that a record names, a folder lists or a map points to is read only when its real
path (symlinks resolved) lies inside its root, and only when it is a regular file (a FIFO never blocks)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from ingest_support import image_bytes, read_source, reader, reasons, write

from pipeline.errors import ConfigError
from pipeline.ingest.base import list_files

SECRET = image_bytes("JPEG", (24, 16), color=77)  # the outside image: must never reach a row
INSIDE = image_bytes("PNG", (8, 10))


@pytest.fixture
def corpus(tmp_path: Path) -> Path:
    """images_root `imgs/` with symlinks leading out of it (to a file, to a folder, relative) and one
    leading to a file inside it; the outside image sits in `outside/`, next to `imgs/`."""
    write(tmp_path / "outside" / "secret.jpg", SECRET)
    write(tmp_path / "imgs" / "real" / "ok.png", INSIDE)
    images = tmp_path / "imgs"
    os.symlink(tmp_path / "outside" / "secret.jpg", images / "to_file.jpg")
    os.symlink(tmp_path / "outside", images / "to_folder")
    os.symlink("../outside/secret.jpg", images / "relative.jpg")
    os.symlink("real/ok.png", images / "inside.png")
    return tmp_path


ESCAPES = ["to_file.jpg", "to_folder/secret.jpg", "relative.jpg"]


def one_record_source(tmp_path: Path, fmt: str, image: str) -> dict:
    """A source of `fmt` whose single record names the image file `image` (under `imgs/`)."""
    name = f"{fmt}-{image.replace('/', '_')}"
    if fmt == "llava":
        turns = [{"from": "human", "value": "<image>\nWhat is it?"}, {"from": "gpt", "value": "A cat."}]
        write(tmp_path / f"{name}.jsonl", json.dumps({"image": image, "conversations": turns}) + "\n")
    elif fmt == "ocr_jsonl":
        write(tmp_path / f"{name}.jsonl", json.dumps({"image": image, "text": "hello"}) + "\n")
    elif fmt == "mmc4":
        info = [{"image_name": image, "matched_text_index": 0}]
        write(tmp_path / f"{name}.jsonl", json.dumps({"text_list": ["A cat."], "image_info": info}) + "\n")
    elif fmt == "grit":
        row = {"key": "k", "caption": "a cat", "image": image, "noun_chunks": [[2, 5, 0, 0, 0.5, 0.5, 0.9]]}
        write(tmp_path / f"{name}.jsonl", json.dumps(row) + "\n")
    elif fmt == "coco_captions":
        document = {
            "images": [{"id": 1, "file_name": image}],
            "annotations": [{"id": 1, "image_id": 1, "caption": "a cat"}],
        }
        write(tmp_path / f"{name}.json", json.dumps(document))
    elif fmt == "textocr":
        document = {
            "imgs": {"1": {"file_name": image}},
            "anns": {"1": {"image_id": 1, "bbox": [0, 0, 2, 2], "utf8_string": "hi"}},
            "imgToAnns": {"1": ["1"]},
        }
        write(tmp_path / f"{name}.json", json.dumps(document))
    elif fmt == "parquet":
        pq.write_table(pa.table({"image": [image], "text": ["a cat"]}), tmp_path / f"{name}.parquet")
    suffix = {"coco_captions": ".json", "textocr": ".json", "parquet": ".parquet"}.get(fmt, ".jsonl")
    return {"name": name, "format": fmt, "path": f"{name}{suffix}", "images_root": "imgs"}


FORMATS = ["llava", "ocr_jsonl", "mmc4", "grit", "coco_captions", "textocr", "parquet"]


@pytest.mark.timeout(60)
@pytest.mark.parametrize("fmt", FORMATS)
def test_symlinks_out_of_images_root_are_rejected(corpus: Path, fmt: str):
    for image in ESCAPES:
        samples, rejects, _ = read_source(reader(corpus, **one_record_source(corpus, fmt, image)))
        assert samples == [], (fmt, image)
        (reject,) = rejects
        assert reject["reason"] == "outside_root", (fmt, image, reject["detail"])
        assert str(corpus / "outside" / "secret.jpg") in reject["detail"]
        assert str(corpus / "imgs") in reject["detail"] and "images_root" in reject["detail"]
    # A symlink that stays inside images_root is an ordinary image.
    (sample,), _, _ = read_source(reader(corpus, **one_record_source(corpus, fmt, "inside.png")))
    assert sample["images"][0]["bytes"] == INSIDE


@pytest.mark.timeout(60)
def test_obelics_url_file_names_and_url_maps_are_confined(corpus: Path):
    images = corpus / "imgs"
    documents = [
        {"texts": ["T", None], "images": [None, "https://x.org/a/to_file.jpg"]},
        {"texts": ["T", None], "images": [None, "https://x.org/relative.jpg?w=2"]},
        {"texts": ["T", None], "images": [None, "https://x.org/inside.png"]},
    ]
    write(corpus / "docs.jsonl", "".join(json.dumps(d) + "\n" for d in documents))
    samples, rejects, _ = read_source(
        reader(corpus, format="obelics", path="docs.jsonl", images_root="imgs", missing_images="reject")
    )
    assert reasons(rejects) == {"docs.jsonl#0": "outside_root", "docs.jsonl#1": "outside_root"}
    assert [s["images"][0]["bytes"] for s in samples] == [INSIDE]

    # url_map rows: a path leaving images_root, an absolute path, a key with a folder in it, a key whose
    # file is a symlink leading out, and one good key.
    write(images / "shard" / "good.jpg", INSIDE)
    os.symlink(corpus / "outside" / "secret.jpg", images / "shard" / "linked.jpg")
    urls = [f"http://m/{n}" for n in range(5)]
    pq.write_table(
        pa.table(
            {
                "url": urls,
                "path": ["../outside/secret.jpg", str(corpus / "outside" / "secret.jpg"), None, None, None],
                "key": [None, None, "../../outside/secret", "linked", "good"],
            }
        ),
        images / "shard.parquet",
    )
    documents = [{"texts": ["T", None], "images": [None, url]} for url in urls]
    write(corpus / "m.jsonl", "".join(json.dumps(d) + "\n" for d in documents))
    source = reader(
        corpus,
        format="obelics",
        path="m.jsonl",
        images_root="imgs",
        url_map="shard.parquet",
        missing_images="reject",
        name="mapped",
    )
    samples, rejects, _ = read_source(source)
    assert reasons(rejects) == {
        "m.jsonl#0": "bad_field",
        "m.jsonl#1": "bad_field",
        "m.jsonl#2": "bad_field",
        "m.jsonl#3": "outside_root",
    }
    assert [s["images"][0]["path"] for s in samples] == ["shard/good.jpg"]
    assert all(SECRET not in (s["images"][0]["bytes"] or b"") for s in samples)


@pytest.mark.timeout(60)
def test_url_map_tables_are_confined(corpus: Path):
    images = corpus / "imgs"
    write(images / "shard" / "good.jpg", INSIDE)
    pq.write_table(pa.table({"url": ["http://m/0"], "key": ["good"]}), corpus / "outside" / "theirs.parquet")
    (images / "maps").mkdir()
    os.symlink(corpus / "outside" / "theirs.parquet", images / "maps" / "linked.parquet")
    os.symlink(corpus / "outside" / "theirs.parquet", images / "linked.parquet")
    write(corpus / "m.jsonl", json.dumps({"texts": ["T", None], "images": [None, "http://m/0"]}) + "\n")
    source = {"format": "obelics", "path": "m.jsonl", "images_root": "imgs"}
    # A table file in the url_map folder that leads out of it: the map cannot be read, every file says so.
    _, rejects, _ = read_source(reader(corpus, **source, url_map="maps"))
    (reject,) = rejects
    assert reject["key"] == "m.jsonl" and reject["reason"] == "unreadable_file"
    assert "outside the source root" in reject["detail"] and "linked.parquet" in reject["detail"]
    # A url_map that itself leads out of images_root fails at once.
    message = r"source\.url_map: linked\.parquet resolves to .*outside images_root"
    with pytest.raises(ConfigError, match=message):
        reader(corpus, **source, url_map="linked.parquet")


def make_tree(tmp_path: Path) -> Path:
    """data/ with a.jsonl, sub/b.jsonl, and symlinks: up -> .. (a loop out of the root), self -> . (a
    loop inside it), again -> sub (a second path to a folder), _hidden/c.jsonl reached by alias ->
    _hidden, away -> ../elsewhere (out of the root), leak.jsonl -> ../elsewhere/d.jsonl (a file out)."""
    line = json.dumps({"conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Yo"}]})
    data = tmp_path / "data"
    for name in ("a.jsonl", "sub/b.jsonl", "_hidden/c.jsonl"):
        write(data / name, line + "\n")
    write(tmp_path / "elsewhere" / "d.jsonl", line + "\n")
    os.symlink("..", data / "up")
    os.symlink(".", data / "self")
    os.symlink("sub", data / "again")
    os.symlink("_hidden", data / "alias")
    os.symlink("../elsewhere", data / "away")
    os.symlink("../elsewhere/d.jsonl", data / "leak.jsonl")
    os.symlink("missing.jsonl", data / "dangling.jsonl")
    return data


@pytest.mark.timeout(60)
def test_folder_listing_does_not_follow_symlinked_folders(tmp_path: Path):
    data = make_tree(tmp_path)
    # Before: up -> .. listed data/ again and again, read a.jsonl dozens of times.
    assert list_files(str(data), (".jsonl",)) == ["a.jsonl", "leak.jsonl", "sub/b.jsonl"]
    globbed = ["_hidden/c.jsonl", "a.jsonl", "leak.jsonl", "sub/b.jsonl"]  # globs skip only dot names
    assert list_files(str(data / "**" / "*.jsonl"), ()) == globbed
    assert list_files(str(data / "*" / "*.jsonl"), ()) == ["_hidden/c.jsonl", "sub/b.jsonl"]
    # follow_symlinks: each folder inside the root once, by its path through no symlink when it has one
    # (sub is not listed again as again/); alias lists the hidden folder, which the folder rule skips;
    # up, self and away are not followed.
    followed = ["a.jsonl", "alias/c.jsonl", "leak.jsonl", "sub/b.jsonl"]
    assert list_files(str(data), (".jsonl",), follow_symlinks=True) == followed
    assert list_files(str(data / "**" / "*.jsonl"), (), follow_symlinks=True) == globbed
    assert list_files(str(data / "*" / "*.jsonl"), (), follow_symlinks=True) == globbed[::3]


@pytest.mark.timeout(60)
def test_listed_files_leading_out_are_rejected_once_each(tmp_path: Path):
    make_tree(tmp_path)
    source = reader(tmp_path, format="llava", path="data")
    samples, rejects, counts = read_source(source)
    assert sorted(s["key"] for s in samples) == ["a.jsonl#0", "sub/b.jsonl#0"]
    (reject,) = rejects
    assert (reject["key"], reject["reason"]) == ("leak.jsonl", "unreadable_file")
    assert str(tmp_path / "elsewhere" / "d.jsonl") in reject["detail"]
    assert "outside the source root" in reject["detail"] and str(tmp_path / "data") in reject["detail"]
    assert counts.read == 3

    followed = reader(tmp_path, format="llava", path="data", follow_symlinks=True, name="f")
    samples, _, _ = read_source(followed)
    assert sorted(s["key"] for s in samples) == ["a.jsonl#0", "alias/c.jsonl#0", "sub/b.jsonl#0"]
    with pytest.raises(ConfigError, match=r"source\.follow_symlinks: must be true or false, not 'yes'"):
        reader(tmp_path, format="llava", path="data", follow_symlinks="yes")


def test_a_named_file_leading_out_of_its_folder_is_a_config_error(tmp_path: Path):
    make_tree(tmp_path)
    message = r"source\.path: leak\.jsonl resolves to .*d\.jsonl, outside its folder"
    with pytest.raises(ConfigError, match=message):
        reader(tmp_path, format="llava", path="data/leak.jsonl")
    os.symlink("a.jsonl", tmp_path / "data" / "same.jsonl")  # a link inside the folder is fine
    assert reader(tmp_path, format="llava", path="data/same.jsonl").files() == ["same.jsonl"]


@pytest.mark.timeout(30)
def test_a_fifo_as_input_file_is_one_reject_not_a_hang(tmp_path: Path):
    write(tmp_path / "data" / "a.jsonl", json.dumps({"conversations": []}) + "\n")
    os.mkfifo(tmp_path / "data" / "pipe.jsonl")  # nobody ever writes to it: opening it would block
    source = reader(tmp_path, format="llava", path="data")
    assert source.files() == ["a.jsonl", "pipe.jsonl"]
    _, rejects, _ = read_source(source)
    assert reasons(rejects)["pipe.jsonl"] == "unreadable_file"
    assert "pipe.jsonl is a FIFO, not a regular file" in rejects[-1]["detail"]
    # The same through the other readers' file access: Parquet (random access) and a tar stream.
    os.mkfifo(tmp_path / "data" / "t.parquet")
    os.mkfifo(tmp_path / "data" / "s.tar")
    for fmt, file in (("parquet", "t.parquet"), ("webdataset", "s.tar")):
        (reject,) = read_source(reader(tmp_path, format=fmt, path=f"data/{file}"))[1]
        assert (reject["key"], reject["reason"]) == (file, "unreadable_file"), fmt
        assert "is a FIFO" in reject["detail"]


@pytest.mark.timeout(30)
@pytest.mark.parametrize("fmt", ["llava", "coco_captions", "parquet"])
def test_a_fifo_as_image_is_a_reject_not_a_hang(tmp_path: Path, fmt: str):
    tmp_path.joinpath("imgs").mkdir()
    os.mkfifo(tmp_path / "imgs" / "pipe.jpg")  # no writer: opening it for reading would block forever
    os.symlink("/dev/zero", tmp_path / "imgs" / "zero.jpg")  # a device, through a link: outside anyway
    samples, rejects, _ = read_source(reader(tmp_path, **one_record_source(tmp_path, fmt, "pipe.jpg")))
    assert samples == [] and [r["reason"] for r in rejects] == ["missing_image"]
    assert "pipe.jpg is a FIFO, not a regular file" in rejects[0]["detail"]
    _, rejects, _ = read_source(reader(tmp_path, **one_record_source(tmp_path, fmt, "zero.jpg")))
    assert [r["reason"] for r in rejects] == ["outside_root"]
