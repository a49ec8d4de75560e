"""pipeline.decontam: the config block, the index of evaluation images and n-grams, rejects naming the set
and item, counts per set, and what is left alone."""

from __future__ import annotations

import io
import json
import pickle
from pathlib import Path

import pytest
from PIL import Image, ImageEnhance
from shard_support import sample_of

from pipeline import decontam
from pipeline.errors import ConfigError
from schemas import reject as reject_schema
from schemas.sample import to_table

PHOTOS = Path(__file__).resolve().parents[1] / "golden" / "images"
QUESTION = "What colour is the flag held by the astronaut standing next to the lunar module in this photo?"


def jpeg(picture: Image.Image, quality: int = 85) -> bytes:
    buffer = io.BytesIO()
    picture.save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


def caption(key: str, words: str, data: bytes | None) -> dict:
    content = [{"turn": 0, "role": None, "type": "text", "text": words, "image": None}]
    images = []
    if data is not None:
        content.insert(0, {"turn": 0, "role": None, "type": "image", "text": None, "image": 0})
        images.append({"bytes": data, "path": f"{key}.jpg", "width": 1, "height": 1, "format": "JPEG"})
    return sample_of("web", key, "caption" if images else "text", content, images)


@pytest.fixture
def eval_dir(tmp_path: Path) -> Path:
    photos = {p.stem: Image.open(p).convert("RGB") for p in sorted(PHOTOS.glob("skimage_*.png"))}
    (tmp_path / "evalimg" / "sub").mkdir(parents=True)
    (tmp_path / "evalimg" / "sub" / "astro.jpg").write_bytes(jpeg(photos["skimage_astronaut"]))
    (tmp_path / "evalimg" / "broken.jpg").write_bytes(b"not a jpeg")
    (tmp_path / "vqa.jsonl").write_text(
        json.dumps({"question_id": 7, "question": QUESTION, "answer": "red"})
        + "\n\n"
        + '{"question": "Short?"}\n'
    )
    (tmp_path / "refs.txt").write_text(
        "the man on the left\n" + " ".join(f"word{i}" for i in range(20)) + "\n"
    )
    return tmp_path


def options(folder: Path, **extra) -> decontam.DecontamOptions:
    block = {
        "sets": [
            {"name": "coco-val", "images": "evalimg"},
            {"name": "vqa", "texts": ["vqa.jsonl", "*.txt"]},
        ],
        **extra,
    }
    parsed = decontam.parse_decontaminate(block, "decontaminate", folder)
    assert parsed is not None
    return parsed


def test_overlapping_samples_are_rejected_naming_the_set_and_the_item(eval_dir):
    index = decontam.build_eval_index(options(eval_dir))
    index = pickle.loads(pickle.dumps(index))  # shipped to workers
    assert index.unreadable_images == ["coco-val: broken.jpg"] and index.short_items == 2
    photos = {p.stem: Image.open(p).convert("RGB") for p in sorted(PHOTOS.glob("skimage_*.png"))}
    astronaut, camera = photos["skimage_astronaut"], photos["skimage_camera"]
    rows = [
        caption("clean", "a camera man in a field", jpeg(camera)),
        caption(
            "leaked-image",
            "unrelated words",
            jpeg(ImageEnhance.Brightness(astronaut.resize((300, 300))).enhance(1.1), 60),
        ),
        caption(
            "leaked-text",
            "Q: WHAT colour is the flag, held by the astronaut standing next to the lunar module?",
            None,
        ),
        caption(
            "leaked-words",
            "and then word3 word4 word5 word6 word7 word8 word9 word10 word11 word12 word13 word14 word15 x",
            None,
        ),
        caption("short-phrase", "the man on the left", None),
    ]
    kept, rejects = index.check(to_table(rows))
    assert kept["key"].to_pylist() == ["clean", "short-phrase"]
    assert rejects.schema == reject_schema.SCHEMA
    found = rejects.to_pylist()
    assert [r["key"] for r in found] == ["leaked-image", "leaked-text", "leaked-words"]
    assert {r["stage"] for r in found} == {"decontaminate"}
    assert [r["reason"] for r in found] == ["eval_image_overlap", "eval_text_overlap", "eval_text_overlap"]
    assert found[0]["detail"].startswith("eval set 'coco-val', item 'sub/astro.jpg': image 0 is ")
    assert 0 <= found[0]["value"] <= index.image_distance
    assert found[1]["detail"] == (
        "eval set 'vqa', item 'vqa.jsonl:1 (7)': shares the 13-gram "
        "'what colour is the flag held by the astronaut standing next to the'"
    )
    assert found[1]["value"] is None
    assert found[2]["detail"].startswith("eval set 'vqa', item 'refs.txt:2': shares the 13-gram 'word3 word4")
    assert decontam.overlap_counts(rejects) == index.counts(rejects) == {"coco-val": 1, "vqa": 2}


def test_distance_and_ngram_settings_are_used(eval_dir):
    strict = decontam.build_eval_index(options(eval_dir, image_distance=0, ngram=5))
    rows = [
        caption("five", "The man on the LEFT!", None),
        caption(
            "jpeg",
            "x",
            jpeg(Image.open(PHOTOS / "skimage_astronaut.png").convert("RGB").crop((30, 30, 512, 512))),
        ),
    ]
    kept, rejects = strict.check(to_table(rows))
    assert rejects["key"].to_pylist() == ["five"] and kept["key"].to_pylist() == ["jpeg"]
    assert strict.check(to_table([]))[1].num_rows == 0


def test_counts_ignore_other_rejects():
    other = reject_schema.to_table([reject_schema.reject("s", "k", "dedup", "duplicate_text", "same text")])
    assert decontam.overlap_counts(other) == {}
    assert decontam.overlap_counts(reject_schema.to_table([])) == {}


def test_normalized_ngrams():
    assert decontam.normalize_words("Ｈello,world—it's  ＯK") == ["hello", "world", "it", "s", "ok"]
    assert len(decontam.ngram_hashes(["a", "b", "c"], 2)) == 2
    assert len(decontam.ngram_hashes(["a"], 2)) == 0


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ([], "decontaminate: must be a mapping"),
        ({"sets": []}, "decontaminate.sets: required"),
        ({"sets": [{"name": "a b", "texts": "vqa.jsonl"}]}, "decontaminate.sets[0].name: required"),
        ({"sets": [{"name": "a"}]}, "decontaminate.sets[0]: needs images, texts or both"),
        (
            {"sets": [{"name": "a", "texts": "missing/*.jsonl"}]},
            "decontaminate.sets[0].texts: 'missing/*.jsonl' matches",
        ),
        ({"sets": [{"name": "a", "texts": 3}]}, "decontaminate.sets[0].texts: must be a path"),
        (
            {"sets": [{"name": "a", "texts": "vqa.jsonl", "url": "x"}]},
            "decontaminate.sets[0].url: unknown option",
        ),
        (
            {"sets": [{"name": "a", "texts": "vqa.jsonl"}, {"name": "a", "images": "evalimg"}]},
            "decontaminate.sets[1].name: 'a' is used",
        ),
        (
            {"sets": [{"name": "a", "texts": "vqa.jsonl"}], "image_distance": 40},
            "decontaminate.image_distance: must",
        ),
        (
            {"sets": [{"name": "a", "texts": "vqa.jsonl"}], "ngram": 0},
            "decontaminate.ngram: must be an integer",
        ),
        ({"sets": [{"name": "a", "texts": "vqa.jsonl"}], "n": 3}, "decontaminate.n: unknown option"),
    ],
)
def test_config_errors_name_the_key(eval_dir, value, message):
    with pytest.raises(ConfigError) as raised:
        decontam.parse_decontaminate(value, "decontaminate", eval_dir)
    assert str(raised.value).startswith(message)
    assert decontam.parse_decontaminate(None, "decontaminate", eval_dir) is None
