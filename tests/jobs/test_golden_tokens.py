"""Whole conversations through `vl2prep pretokenize` (LLaVA records, the default tokenizer of tiny) equal the
official DeepSeek-VL2 processor's `input_ids` and `target_ids`, id by id and label by label, and the training
reader's batches equal the official `batchify` of those outputs (`tests/golden/tokens/`)."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

import model_shapes
from jobs import cli
from pipeline import loader, verify

GOLDEN = Path(__file__).resolve().parents[1] / "golden" / "tokens"
SETS = (("cases.json", "expected.json"), ("extended_cases.json", "extended_expected.json"))
TINY = model_shapes.load("tiny")
IGNORE, PAD = -100, TINY.special_tokens.pad


def golden_cases() -> list[tuple[dict, dict, str]]:
    """(case, official output, the source `system:` text it needs) for every golden case."""
    found = []
    for cases_file, expected_file in SETS:
        expected = json.loads((GOLDEN / expected_file).read_text(encoding="utf-8"))
        sysarg = expected["meta"].get("sysarg_prompt")
        for case in json.loads((GOLDEN / cases_file).read_text(encoding="utf-8"))["cases"]:
            system = case.get("source_system") or (sysarg if case["category"] == "source_system" else "")
            found.append((case, expected["cases"][case["name"]], system or ""))
    return found


CASES = golden_cases()


@pytest.fixture(scope="module")
def output(ray_session, tmp_path_factory) -> tuple[Path, dict[str, tuple[dict, dict]]]:
    """The job's output for every golden case: one LLaVA JSON Lines source per source `system:` text.
    Returns the output folder and the cases by the key of their record."""
    folder = tmp_path_factory.mktemp("golden")
    for case, _, _ in CASES:
        for image in case["images"]:
            path = folder / "images" / image["file"]
            path.parent.mkdir(exist_ok=True)
            Image.new("RGB", (image["width"], image["height"]), tuple(image["color"])).save(path)
    systems = sorted({system for _, _, system in CASES})
    sources, by_key = [], {}
    for index, system in enumerate(systems):
        chosen = [(case, expected) for case, expected, wanted in CASES if wanted == system]
        lines = [json.dumps(case["llava"], ensure_ascii=False) for case, _ in chosen]
        (folder / "data").mkdir(exist_ok=True)
        (folder / "data" / f"s{index}.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
        sources.append(
            {"name": f"s{index}", "format": "llava", "path": f"data/s{index}.jsonl", "images_root": "images"}
            | ({"system": system} if system else {})
        )
        by_key.update({f"s{index}.jsonl#{n}": pair for n, pair in enumerate(chosen)})
    config = {"model_shape": "tiny", "sources": sources, "output": {"dir": "out", "stats": False}}
    (folder / "job.yaml").write_text(json.dumps(config), encoding="utf-8")  # JSON is YAML
    assert cli.main(["pretokenize", str(folder / "job.yaml")]) == 0
    return folder / "out", by_key


def rows_of(out: Path) -> list[dict]:
    manifest = json.loads((out / "manifest.json").read_text())
    return pa.concat_tables(pq.read_table(out / e["path"]) for e in manifest["shards"]).to_pylist()


def test_every_id_and_label_equals_the_official_processor(output):
    out, by_key = output
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["tokenizer"]["sha256"] == (
        "6ae3d2a608d82e48196939a2ccfea2a545808c681fceae60afa02117a2c6fccb"
    )  # the default tokenizer of tiny is DeepSeek-VL2's own
    assert not manifest["rejects"] or all(
        pq.read_table(out / e["path"]).num_rows == 0 for e in manifest["rejects"]
    )
    rows = rows_of(out)
    assert sorted(row["key"] for row in rows) == sorted(by_key)
    for row in rows:
        case, expected = by_key[row["key"]]
        name = case["name"]
        assert row["input_ids"] == expected["input_ids"], name
        assert row["labels"] == expected["target_ids"], name
        assert [x == TINY.special_tokens.image for x in row["input_ids"]] == [
            bool(x) for x in expected["images_seq_mask"]
        ], name
        assert row["images_spatial_crop"] == expected["images_spatial_crop"], name
        assert row["num_image_tokens"] == sum(expected["num_image_tokens"]), name
    report = verify.verify(str(out))
    assert report.ok, [str(problem) for problem in report.problems]


def official_batchify(outputs: list[dict]) -> dict[str, torch.Tensor]:
    """The official `batchify` (left padding) of processor outputs, for the token tensors: ids padded with the
    pad id, attention mask, labels padded with the pad id and then pad → -100, the image mask padded False."""
    length = max(len(o["input_ids"]) for o in outputs)
    batch = {
        "input_ids": torch.full((len(outputs), length), PAD),
        "attention_mask": torch.zeros((len(outputs), length), dtype=torch.long),
        "labels": torch.full((len(outputs), length), PAD),
        "images_seq_mask": torch.zeros((len(outputs), length), dtype=torch.bool),
    }
    for b, o in enumerate(outputs):
        start = length - len(o["input_ids"])
        batch["input_ids"][b, start:] = torch.tensor(o["input_ids"])
        batch["attention_mask"][b, start:] = 1
        batch["labels"][b, start:] = torch.tensor(o["target_ids"])
        batch["images_seq_mask"][b, start:] = torch.tensor(o["images_seq_mask"], dtype=torch.bool)
    batch["labels"][batch["labels"] == PAD] = IGNORE
    return batch


def test_the_reader_batches_equal_the_official_batchify(output):
    out, by_key = output
    rows = {row["key"]: row for row in rows_of(out)}
    names = ["single_basic", "three_images_one_turn", "textonly_single", "sysmsg_single_image"]
    keys = sorted(key for key, (case, _) in by_key.items() if case["name"] in names)
    assert len(keys) == len(names)
    batch = loader.collate([rows[key] for key in keys], TINY)
    expected = official_batchify([by_key[key][1] for key in keys])
    for name, tensor in expected.items():
        assert torch.equal(batch[name].to(tensor.dtype), tensor), name
    # In a left-padded batch the last pad position predicts the bos, as in the official batches.
    padded = next(b for b in range(len(keys)) if batch["attention_mask"][b, 0] == 0)
    first = int(batch["attention_mask"][padded].argmax())
    assert batch["labels"][padded, first] == TINY.special_tokens.bos
