"""pipeline.ingest.refcoco: REFER refs (restricted pickle or JSON) with COCO instances."""

from __future__ import annotations

import json
import os
import pickle
import re
import struct
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from ingest_support import CORRUPTIONS, corrupt, image_bytes, read_source, reader, reasons, write

from pipeline.ingest import ConfigError, refcoco
from pipeline.ingest.checks import FileUnreadable
from pipeline.ingest.refcoco import load_plain_pickle
from pipeline.templates import render

INSTANCES = {
    "images": [
        {"id": 1, "file_name": "COCO_1.jpg", "width": 40, "height": 20},
        {"id": 2, "file_name": "COCO_2.png"},
    ],
    "annotations": [
        {"id": 10, "image_id": 1, "bbox": [2, 3, 10, 5]},
        {"id": 11, "image_id": 1, "bbox": [30, 10, 20, 20]},
        {"id": 12, "image_id": 2, "bbox": [0, 0, 0, 4]},
        {"id": 13, "image_id": 2, "bbox": [40, 0, 4, 4]},
    ],
}


def ref(index: int, image_id: object, ann_id: object, *sentences: str, split: str = "train") -> dict:
    return {
        "ref_id": index,
        "image_id": image_id,
        "ann_id": ann_id,
        "split": split,
        "file_name": "ignored.jpg",
        "sentences": [{"raw": s, "sent": s.lower(), "sent_id": i} for i, s in enumerate(sentences)],
    }


REFS = [
    ref(0, 1, 10, "The man", "man on left", "The man"),
    ref(1, 1, [10, 11], "both people", split="val"),
    ref(2, 2, 12, "flat"),
    ref(3, 2, 13, "outside"),
    ref(4, 3, 10, "no image"),
    ref(5, 1, 12, "wrong image"),
    ref(6, 1, 10),
    ref(7, 1, [], "nothing"),
]


@pytest.fixture
def dataset(tmp_path: Path) -> Path:
    folder = tmp_path / "refcoco"
    write(folder / "instances.json", json.dumps(INSTANCES))
    write(folder / "refs(unc).p", pickle.dumps(REFS, protocol=2))
    write(tmp_path / "images" / "COCO_1.jpg", image_bytes("JPEG", (40, 20)))
    write(tmp_path / "images" / "COCO_2.png", image_bytes("PNG", (30, 10)))
    return tmp_path


def test_one_grounding_sample_per_ref(dataset: Path):
    samples, rejects, counts = read_source(
        reader(dataset, format="refcoco", path="refcoco", images_root="images")
    )
    first, second = samples
    assert first["kind"] == "grounding" and [s["type"] for s in first["content"]] == ["image"]
    assert [(r["phrase"], r["boxes"], r["segment"]) for r in first["regions"]] == [
        ("The man", [[2, 3, 12, 8]], None),
        ("man on left", [[2, 3, 12, 8]], None),
    ]
    assert second["regions"][0]["boxes"] == [[2, 3, 12, 8], [30, 10, 40, 20]]
    assert first["images"][0]["path"] == "COCO_1.jpg"
    meta = json.loads(first["meta"])
    assert meta["ref_id"] == 0 and meta["ann_id"] == 10 and "file_name" not in meta
    assert reasons(rejects) == {
        "refs(unc).p#2": "degenerate_box",
        "refs(unc).p#3": "box_outside_image",
        "refs(unc).p#4": "bad_field",
        "refs(unc).p#5": "bad_field",
        "refs(unc).p#6": "empty_text",
        "refs(unc).p#7": "missing_field",
    }
    assert counts.read == len(REFS)
    turns = render(first).blocks
    assert len(turns) == 4  # one user/assistant pair per distinct sentence


def test_split_and_json_refs(dataset: Path):
    write(dataset / "refcoco" / "refs(google).json", json.dumps(REFS))
    with pytest.raises(
        ConfigError, match=r"source\.split_by: required .* found refs\(google\)\.json, refs\(unc\)\.p"
    ):
        reader(dataset, format="refcoco", path="refcoco")
    with pytest.raises(ConfigError, match=r"source\.split_by: expected one refs\(umd\)"):
        reader(dataset, format="refcoco", path="refcoco", split_by="umd")
    source = reader(
        dataset, format="refcoco", path="refcoco", images_root="images", split_by="google", split="val"
    )
    assert source.files() == ["refs(google).json"]
    (sample,), rejects, _ = read_source(source)
    assert rejects == [] and sample["key"] == "refs(google).json#1"


class Exploit:
    def __reduce__(self):
        return (os.system, ("touch pwned",))


def test_pickle_that_would_run_code_is_refused_and_nothing_runs(dataset: Path, tmp_path: Path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    data = pickle.dumps([{"ref_id": 0, "payload": Exploit()}])
    with pytest.raises(FileUnreadable, match=r"refers to (posix|os)\.system.*nothing was executed"):
        load_plain_pickle(data)
    write(dataset / "refcoco" / "refs(unc).p", data)
    samples, (reject,), _ = read_source(
        reader(dataset, format="refcoco", path="refcoco", images_root="images")
    )
    assert samples == [] and reject["reason"] == "unreadable_file" and "system" in reject["detail"]
    assert not (tmp_path / "pwned").exists()
    with pytest.raises(FileUnreadable, match="plain"):
        load_plain_pickle(pickle.dumps(b"bytes", protocol=3))


def test_missing_instances_is_one_file_reject(dataset: Path):
    (dataset / "refcoco" / "instances.json").unlink()
    _, (reject,), _ = read_source(reader(dataset, format="refcoco", path="refcoco/refs(unc).p"))
    assert (reject["key"], reject["reason"]) == ("refs(unc).p", "unreadable_file")


@given(edits=CORRUPTIONS)
def test_fuzzed_pickle_never_escapes(tmp_path_factory, edits):
    tmp_path = tmp_path_factory.mktemp("fuzz")
    write(tmp_path / "instances.json", json.dumps(INSTANCES))
    write(tmp_path / "COCO_1.jpg", image_bytes("JPEG", (40, 20)))
    write(tmp_path / "refs(unc).p", corrupt(pickle.dumps(REFS, protocol=2), edits))
    read_source(reader(tmp_path, format="refcoco", path="."))


# The restricted loader bounds what it builds (pipeline.ingest.refcoco: MAX_DEPTH, MAX_VALUES,
# MAX_TEXT_BYTES, MAX_NUMBER_BYTES) by scanning the opcodes before the unpickler runs.


def cpickle2(value: object) -> bytes:
    """`value` (lists, dicts, str, int, float, bool, None) as Python 2's cPickle writes it with protocol
    2, the way REFER's refs files were made: str as SHORT_BINSTRING / BINSTRING (UTF-8 bytes), every
    list, dict and str memoized with indices counted from 1, items in batches of 1000 (APPEND or SETITEM
    for a batch of one), a value met again written as a memo get."""
    out = bytearray(b"\x80\x02")
    memo: dict[int, int] = {}

    def put(obj: object) -> None:
        memo[id(obj)] = index = len(memo) + 1
        out.extend(b"q" + bytes([index]) if index < 256 else b"r" + struct.pack("<I", index))

    def batches(items: list, one: bytes, many: bytes) -> None:
        for start in range(0, len(items), 1000):
            batch = items[start : start + 1000]
            if len(batch) > 1:
                out.extend(b"(")
            for item in batch:
                for part in item if one == b"s" else (item,):
                    save(part)
            out.extend(one if len(batch) == 1 else many)

    def save(obj: object) -> None:
        if id(obj) in memo:
            index = memo[id(obj)]
            out.extend(b"h" + bytes([index]) if index < 256 else b"j" + struct.pack("<I", index))
        elif obj is None or isinstance(obj, bool):
            out.extend({None: b"N", True: b"\x88", False: b"\x89"}[obj])
        elif isinstance(obj, int):
            out.extend(b"J" + struct.pack("<i", obj))
        elif isinstance(obj, float):
            out.extend(b"G" + struct.pack(">d", obj))
        elif isinstance(obj, str):
            raw = obj.encode()
            size = bytes([len(raw)]) if len(raw) < 256 else struct.pack("<I", len(raw))
            out.extend((b"U" if len(raw) < 256 else b"T") + size + raw)
            put(obj)
        elif isinstance(obj, list):
            out.extend(b"]")
            put(obj)
            batches(obj, b"a", b"e")
        else:
            out.extend(b"}")
            put(obj)
            batches(list(obj.items()), b"s", b"u")

    save(value)
    return bytes(out + b".")


@pytest.mark.timeout(60)
@pytest.mark.parametrize("protocol", [0, 1, 2, 3, 4, 5, "cPickle"])
def test_legitimate_refs_pickles_load_exactly_as_pickle_does(dataset: Path, protocol: object):
    def dumps(value: object) -> bytes:
        return cpickle2(value) if protocol == "cPickle" else pickle.dumps(value, protocol=protocol)

    refs = [ref(i, 1 + i % 2, 10 + i % 3, f"the thing {i}", "é漢🙂 on the left") for i in range(2500)]
    refs[7]["flags"] = [True, False, None, 1.5, -(2**31), ""]
    if protocol != "cPickle":
        refs[8]["box"] = (1.5, -(2**63), 2**40)  # a tuple, 64-bit ints
    data = dumps(refs)
    assert load_plain_pickle(data) == pickle.loads(data, encoding="utf-8") == refs
    if protocol == "cPickle":
        assert data.startswith(b"\x80\x02]q\x01(}q\x02(U\x06ref_idq\x03")  # memo from 1, Python 2 str
    # and the reader reads such a file as it reads the protocol 2 one
    expected = read_source(reader(dataset, format="refcoco", path="refcoco", images_root="images"))
    write(dataset / "refcoco" / "refs(unc).p", dumps(REFS))
    assert read_source(reader(dataset, format="refcoco", path="refcoco", images_root="images")) == expected


def test_limits_are_exact(monkeypatch):
    def nested(depth: int) -> list:
        value: list = []
        for _ in range(depth - 1):
            value = [value]
        return value

    assert load_plain_pickle(pickle.dumps(nested(refcoco.MAX_DEPTH))) == nested(refcoco.MAX_DEPTH)
    with pytest.raises(FileUnreadable, match=f"nests deeper than {refcoco.MAX_DEPTH} levels"):
        load_plain_pickle(pickle.dumps(nested(refcoco.MAX_DEPTH + 1)))
    # a shared value counts at each place it is used: [s, s, s] holds 4 values and 3 × 6 bytes of text
    shared = "x" * 5
    monkeypatch.setattr(refcoco, "MAX_VALUES", 4)
    assert load_plain_pickle(pickle.dumps([shared] * 3)) == [shared] * 3
    with pytest.raises(FileUnreadable, match="more than 4 values, a shared value counted at each place"):
        load_plain_pickle(pickle.dumps([shared] * 4))
    monkeypatch.setattr(refcoco, "MAX_VALUES", 50)
    monkeypatch.setattr(refcoco, "MAX_TEXT_BYTES", 18)  # 5 bytes, and one per string
    assert load_plain_pickle(pickle.dumps([shared] * 3)) == [shared] * 3
    with pytest.raises(FileUnreadable, match="more than 18 bytes of text"):
        load_plain_pickle(pickle.dumps([[shared] * 3, "y"]))
    with pytest.raises(FileUnreadable, match="builds more than 50 values"):  # built, then thrown away
        load_plain_pickle(b"\x80\x02" + b"N0" * 50 + b"N.")
    big = 2 ** (8 * refcoco.MAX_NUMBER_BYTES - 1) - 1
    assert load_plain_pickle(pickle.dumps([big, -big])) == [big, -big]
    with pytest.raises(FileUnreadable, match="a number of 33 bytes"):
        load_plain_pickle(pickle.dumps([big + 1]))


@pytest.mark.parametrize(
    ("data", "detail"),
    [
        (b"", "ends before its STOP"),
        (pickle.dumps(["abc"], protocol=2)[:-3], "ends before its STOP"),
        (pickle.dumps({1: "a"}, protocol=2), "a number, bool or None as a dict key; only strings"),
        (pickle.dumps({(1,): "a"}, protocol=2), "a tuple as a dict key"),
        (pickle.dumps(frozenset([1.5]), protocol=4), "a number, bool or None as a frozenset member"),
        (pickle.dumps([bytearray(b"x")], protocol=5), "holds a bytearray"),
        (b"\x80\x02]N\x85R.", "uses opcode REDUCE .* nothing was executed"),
        (b"\x80\x02]\xff.", "unknown opcode 0xff"),
        (b"\x80\x02K\x01]a.", "adds items to a number, bool or None, not to a list"),
        (b"\x80\x02]e.", "no MARK to close"),
        (b"\x80\x02(]e.", "stack underflow"),
        (b"\x80\x02h\x00.", "memo entry 0 was never stored"),
        (b"(ipickle\nUnpickler\n.", r"refers to pickle\.Unpickler"),  # protocol 0 INST
    ],
)
@pytest.mark.timeout(30)
def test_what_the_scan_refuses(data: bytes, detail: str):
    with pytest.raises(FileUnreadable, match=detail):
        load_plain_pickle(data)


def plain_tree(value: object, on_path: frozenset = frozenset()) -> tuple[int, int]:
    """(values, depth) of a plain value, a shared value counted at each place; AssertionError for anything
    but plain values or for a cycle."""
    assert type(value) in (dict, list, tuple, set, frozenset, str, int, float, bool, type(None)), type(value)
    if not isinstance(value, dict | list | tuple | set | frozenset):
        return 1, 0
    assert id(value) not in on_path, "a cycle"
    if isinstance(value, dict):
        assert all(type(key) is str for key in value)
    items = [part for item in value.items() for part in item] if isinstance(value, dict) else list(value)
    trees = [plain_tree(item, on_path | {id(value)}) for item in items]
    return 1 + sum(values for values, _ in trees), 1 + max((depth for _, depth in trees), default=0)


@given(edits=CORRUPTIONS, protocol=st.sampled_from([0, 2, 4, "cPickle"]))
@pytest.mark.timeout(120)
def test_whatever_is_admitted_is_plain_acyclic_and_within_the_limits(edits, protocol):
    refs = [*REFS, {"t": (1, "a", (2.5, None)), "n": [[True, -3]]}]
    data = cpickle2(REFS) if protocol == "cPickle" else pickle.dumps(refs, protocol=protocol)
    try:
        value = load_plain_pickle(corrupt(data, edits))
    except FileUnreadable:
        return
    values, depth = plain_tree(value)
    assert values <= refcoco.MAX_VALUES and depth <= refcoco.MAX_DEPTH


def hostile_pickles() -> dict[str, tuple[bytes, str]]:
    """name: (a refs file, what its reject's detail says). Each would hang, swell or crash an
    unbounded loader; each must cost next to nothing."""
    loop: list = []
    loop.append(loop)
    mirror: dict = {}
    mirror["a"] = mirror["b"] = mirror
    dag: list = []
    for _ in range(40):  # 2**40 paths through 41 lists
        dag = [dag, dag]
    deep = 200_000
    collide = (1 << 61) - 1  # hash(k * collide) == 0: every key in the same slot
    return {
        "self_list": (pickle.dumps(loop, protocol=2), "holds a cycle: a list is referred to"),
        "self_dict": (pickle.dumps([{"ref_id": 0}, mirror], protocol=2), "holds a cycle: a dict"),
        "dag": (pickle.dumps([{"ref_id": 0, "x": dag}], protocol=2), "more than 20000000 values"),
        "deep_append": (b"\x80\x02" + b"]" * deep + b"a" * (deep - 1) + b".", "nests deeper than 64"),
        "deep_marks": (b"\x80\x02" + b"(" * deep + b"l" * deep + b".", "nests deeper than 64"),
        "huge_string": (b"\x80\x02]X\xff\xff\xff\xff" + b"a" * 64 + b"a.", "a string of 4294967295 bytes"),
        "huge_string8": (
            b"\x80\x04]\x8d" + struct.pack("<Q", 1 << 62) + b"a.",
            r"a string of 4611686018427387904",
        ),
        "huge_bytes": (b"\x80\x04]\x8e" + struct.pack("<Q", 1 << 31) + b"a.", "holds a bytes"),
        "far_memo": (b"\x80\x02]r\xff\xff\xff\x7f.", "stores memo entry 2147483647 where 0 are stored"),
        "colliding_keys": (
            b"\x80\x02]}("
            + b"".join(pickle.dumps(k * collide, 2)[2:-1] + b"N" for k in range(30_000))
            + b"ua.",
            "as a dict key",
        ),
        "huge_int": (
            b"\x80\x02]\x8b" + struct.pack("<i", 5000) + b"\x01" * 5000 + b"a.",
            "a number of 5000 bytes",
        ),
        "straddled_frame": (
            b"\x80\x04\x95\x02\x00\x00\x00\x00\x00\x00\x00]K\x05a.",
            "runs past the end of its frame",
        ),
    }


_READ_SOURCES = """
import json, re, resource, sys
import pyarrow as pa
from pipeline import ingest

pa.allocate_buffer(1 << 20)  # pyarrow reserves its allocator's address space at first use
size = int(re.search(r"VmSize:\\s+(\\d+) kB", open("/proc/self/status").read()).group(1)) * 1024
resource.setrlimit(resource.RLIMIT_AS, (size + (1 << 30), size + (1 << 30)))
for source in json.loads(sys.argv[1]):
    reader = ingest.make_reader(source)
    rows = [row for file in reader.files() for row in reader.read_file(file)]
    rows = [(row["key"], row.get("reason"), row.get("detail")) for row in rows]
    print(json.dumps([source["name"], rows]), flush=True)
"""


@pytest.mark.timeout(120)
def test_hostile_pickles_are_one_reject_each_in_bounded_memory_and_the_rest_is_read(dataset: Path):
    """Every hostile file is read, in one fresh interpreter whose address space is capped at its size
    after imports plus 1 GiB, as one unreadable_file reject saying what was wrong; a good source after
    them is read in full."""
    hostile = hostile_pickles()
    sources = []
    for name, (data, _) in hostile.items():
        write(dataset / name / "refs(unc).p", data)
        write(dataset / name / "instances.json", json.dumps(INSTANCES))
        sources.append({"name": name, "format": "refcoco", "path": str(dataset / name)})
    good = {"name": "good", "format": "refcoco", "path": str(dataset / "refcoco")}
    good["images_root"] = str(dataset / "images")
    samples, rejects, _ = read_source(reader(dataset, **good))
    command = [sys.executable, "-c", _READ_SOURCES, json.dumps([*sources, good])]
    done = subprocess.run(command, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    results = dict(json.loads(line) for line in done.stdout.splitlines())
    for name, (_, detail) in hostile.items():
        ((key, reason, message),) = results[name]
        assert (key, reason) == ("refs(unc).p", "unreadable_file"), name
        assert re.search(detail, message), (name, message)
    assert sorted(row[0] for row in results["good"]) == sorted(row["key"] for row in samples + rejects)
    assert len(samples) == 2
