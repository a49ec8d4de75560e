"""Rebuild the bundled example corpus in `jobs/examples/corpus/` from the example photographs.

Every file is made reproducibly (fixed JPEG settings, sorted tar members with fixed metadata), so a
rerun gives the same bytes. The corpus holds a few records of every supported input format, plus a
few deliberately bad records (a missing image, an empty caption, a placeholder mismatch, a corrupt
image) so that the demo shows rejects too.

Run: `.venv/bin/python jobs/examples/make_corpus.py`
"""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

HERE = Path(__file__).resolve().parent
PHOTOS = HERE / "images"
CORPUS = HERE / "corpus"

# (name, source photograph, size): small versions of the example photographs, kept under ~30 KB.
IMAGES = [
    ("astronaut", "astronaut.jpg", (320, 320)),
    ("camera", "camera_gray.jpg", (256, 256)),
    ("horse", "horse_rgba.png", (300, 246)),
    ("hopper", "grace_hopper_tall.jpg", (96, 720)),
    ("chelsea", "chelsea_palette.png", (451, 300)),
    ("panorama", "astronaut_panorama.jpg", (1024, 192)),
]


def jpeg_bytes(name: str, photo: str, size: tuple[int, int]) -> bytes:
    with Image.open(PHOTOS / photo) as source:
        image = source.convert("RGB").resize(size, resample=Image.Resampling.BICUBIC)
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=80, optimize=True)
    return buffer.getvalue()


def write_images() -> dict[str, bytes]:
    folder = CORPUS / "images"
    folder.mkdir(parents=True, exist_ok=True)
    encoded = {}
    for name, photo, size in IMAGES:
        encoded[name] = jpeg_bytes(name, photo, size)
        (folder / f"{name}.jpg").write_bytes(encoded[name])
    (folder / "corrupt.jpg").write_bytes(encoded["astronaut"][: len(encoded["astronaut"]) // 3])
    return encoded


def write_llava() -> None:
    records = [
        {
            "id": "llava-0",
            "image": "images/astronaut.jpg",
            "conversations": [
                {"from": "human", "value": "<image>\nWho is in this photograph?"},
                {"from": "gpt", "value": "An astronaut in a white suit, with the American flag behind."},
                {"from": "human", "value": "What is she holding?"},
                {"from": "gpt", "value": "A helmet, under her left arm."},
            ],
        },
        {
            "id": "llava-1",
            "image": ["images/chelsea.jpg", "images/horse.jpg"],
            "conversations": [
                {"from": "human", "value": "Compare <image> and <image>."},
                {
                    "from": "gpt",
                    "value": "The first shows a tabby cat; the second, the silhouette of a horse.",
                },
            ],
        },
        {
            "id": "llava-2",
            "image": "images/camera.jpg",
            "conversations": [
                {"from": "human", "value": "Describe the image."},
                {"from": "gpt", "value": "A man with a camera on a tripod, in black and white."},
            ],
        },
        {
            "id": "llava-3",
            "conversations": [
                {"from": "system", "value": "Answer briefly."},
                {"from": "human", "value": "What is the capital of France?"},
                {"from": "gpt", "value": "Paris."},
            ],
        },
        {
            "id": "llava-bad-missing",
            "image": "images/absent.jpg",
            "conversations": [
                {"from": "human", "value": "<image>\nWhat is this?"},
                {"from": "gpt", "value": "Nothing."},
            ],
        },
        {
            "id": "llava-bad-placeholders",
            "image": "images/hopper.jpg",
            "conversations": [
                {"from": "human", "value": "<image> and <image>?"},
                {"from": "gpt", "value": "One image only."},
            ],
        },
    ]
    (CORPUS / "llava.json").write_text(json.dumps(records, indent=1) + "\n")


def write_coco(encoded: dict[str, bytes]) -> None:
    sizes = {name: size for name, _, size in IMAGES}
    images = [
        {"id": index + 1, "file_name": f"{name}.jpg", "width": sizes[name][0], "height": sizes[name][1]}
        for index, name in enumerate(["astronaut", "hopper", "panorama"])
    ]
    images.append({"id": 9, "file_name": "corrupt.jpg", "width": 320, "height": 320})
    captions = [
        (1, "An astronaut poses in front of the flag."),
        (1, "A woman in a space suit smiling at the camera."),
        (2, "A tall, narrow portrait of a naval officer."),
        (3, "A wide strip cut from a portrait."),
        (3, ""),
        (9, "This image file is cut short."),
    ]
    annotations = [
        {"id": 100 + index, "image_id": image_id, "caption": caption}
        for index, (image_id, caption) in enumerate(captions)
    ]
    document = {"info": {"description": "vl2prep example"}, "images": images, "annotations": annotations}
    (CORPUS / "coco_captions.json").write_text(json.dumps(document, indent=1) + "\n")


def write_webdataset(encoded: dict[str, bytes]) -> None:
    folder = CORPUS / "webdataset"
    folder.mkdir(parents=True, exist_ok=True)
    members = [
        ("000000000.jpg", encoded["chelsea"]),
        ("000000000.txt", b"A cat lying on a blanket, looking up."),
        ("000000001.jpg", encoded["panorama"]),
        ("000000001.json", json.dumps({"caption": "A long, thin panorama.", "url": "x"}).encode()),
        ("000000002.jpg", encoded["horse"]),
        ("000000002.txt", b"The black silhouette of a horse."),
    ]
    with tarfile.open(folder / "shard-000000.tar", "w", format=tarfile.USTAR_FORMAT) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size, info.mtime, info.mode, info.uname, info.gname = len(data), 0, 0o644, "", ""
            tar.addfile(info, io.BytesIO(data))


def write_parquet(encoded: dict[str, bytes]) -> None:
    table = pa.table(
        {
            "image": [
                {"bytes": encoded["camera"], "path": "camera.jpg"},
                {"bytes": encoded["astronaut"], "path": "astronaut.jpg"},
                {"bytes": b"not an image", "path": "broken.jpg"},
                {"bytes": encoded["astronaut"], "path": "astronaut-copy.jpg"},  # an image duplicate
                {"bytes": encoded["hopper"], "path": "hopper.jpg"},
            ],
            "text": [
                "A photographer with a camera.",
                "A portrait of an astronaut.",
                "Broken bytes.",
                "The same astronaut, captioned again.",
                "Hopper.",  # under the config's min_text_chars
            ],
        }
    )
    pq.write_table(table, CORPUS / "captions.parquet", compression="zstd")


def write_text() -> None:
    lines = [
        {"text": "Vision-language models read images as tokens between the words of a sequence."},
        {"text": "Each image is cut into tiles of 384 pixels, and every tile becomes 196 tokens."},
        {"text": ""},
        {"text": "A mixture of experts sends every token to six of its experts."},
    ]
    (CORPUS / "text.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines) + "{not json\n")


def write_obelics(encoded: dict[str, bytes]) -> None:
    documents = [
        {
            "url": "https://example.org/space",
            "texts": ["Astronauts train for years.", None, "Their suits weigh over a hundred kilograms."],
            "images": [None, {"bytes": encoded["astronaut"], "path": "astronaut.jpg"}, None],
        },
        {
            "url": "https://example.org/pets",
            "texts": [None, "Cats sleep most of the day.", None, "Horses sleep standing up."],
            "images": [
                {"bytes": encoded["chelsea"], "path": "chelsea.jpg"},
                None,
                {"bytes": encoded["horse"], "path": "horse.jpg"},
                None,
            ],
        },
    ]
    pq.write_table(pa.Table.from_pylist(documents), CORPUS / "obelics.parquet", compression="zstd")


def write_mmc4() -> None:
    documents = [
        {
            "url": "https://example.org/photography",
            "text_list": ["Old cameras used film.", "This one stands on a tripod.", "Film was developed."],
            "image_info": [
                {"image_name": "camera.jpg", "raw_url": "https://example.org/c.jpg", "matched_text_index": 1,
                 "matched_sim": 0.31},
            ],
        },
        {
            "url": "https://example.org/history",
            "text_list": ["A pioneer of computing.", "She led the development of COBOL."],
            "image_info": [
                {"image_name": "hopper.jpg", "raw_url": "https://example.org/h.jpg", "matched_text_index": 0,
                 "matched_sim": 0.28},
                {"image_name": "absent.jpg", "raw_url": "https://example.org/x.jpg", "matched_text_index": 1,
                 "matched_sim": 0.22},
            ],
        },
    ]  # fmt: skip
    (CORPUS / "mmc4.jsonl").write_text("".join(json.dumps(d) + "\n" for d in documents))


def write_ocr_jsonl() -> None:
    records = [
        {
            "image": "images/panorama.jpg",
            "text": "A WIDE STRIP\nCUT FROM A PORTRAIT",
            "lines": [
                {"text": "A WIDE STRIP", "bbox": [40, 20, 520, 90]},
                {"text": "CUT FROM A PORTRAIT", "bbox": [40, 100, 900, 170]},
            ],
        },
        {"image": "images/camera.jpg", "text": "No text is visible in this photograph."},
        {
            "image": "images/hopper.jpg",
            "text": "OUTSIDE",
            "lines": [{"text": "OUTSIDE", "bbox": [500, 900, 600, 950]}],
        },
    ]  # fmt: skip
    (CORPUS / "ocr.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))


def write_textocr() -> None:
    document = {
        "imgs": {
            "img1": {"id": "img1", "file_name": "chelsea.jpg", "width": 451, "height": 300, "set": "train"}
        },
        "anns": {
            "a1": {"image_id": "img1", "bbox": [20, 30, 120, 40], "utf8_string": "TABBY"},
            "a2": {"image_id": "img1", "bbox": [160, 30, 100, 40], "utf8_string": "."},
            "a3": {"image_id": "img1", "bbox": [300, 240, 140, 50], "utf8_string": "CAT"},
        },
        "imgToAnns": {"img1": ["a1", "a2", "a3"]},
    }  # fmt: skip
    (CORPUS / "textocr.json").write_text(json.dumps(document, indent=1) + "\n")


def write_refcoco() -> None:
    folder = CORPUS / "refcoco"
    folder.mkdir(parents=True, exist_ok=True)
    instances = {
        "images": [
            {"id": 1, "file_name": "astronaut.jpg", "width": 320, "height": 320},
            {"id": 2, "file_name": "horse.jpg", "width": 300, "height": 246},
        ],
        "annotations": [
            {"id": 10, "image_id": 1, "bbox": [60, 40, 200, 280], "category_id": 1},
            {"id": 11, "image_id": 1, "bbox": [0, 0, 90, 150], "category_id": 2},
            {"id": 20, "image_id": 2, "bbox": [30, 20, 250, 210], "category_id": 3},
        ],
    }
    refs = [
        {"ref_id": 0, "image_id": 1, "ann_id": 10, "split": "train", "category_id": 1,
         "sentences": [{"raw": "the woman in the white suit", "sent": "the woman in the white suit"},
                       {"raw": "astronaut smiling", "sent": "astronaut smiling"}]},
        {"ref_id": 1, "image_id": 1, "ann_id": 11, "split": "train", "category_id": 2,
         "sentences": [{"raw": "flag at the top left", "sent": "flag at the top left"}]},
        {"ref_id": 2, "image_id": 2, "ann_id": 20, "split": "val", "category_id": 3,
         "sentences": [{"raw": "the black horse", "sent": "the black horse"}]},
    ]  # fmt: skip
    (folder / "instances.json").write_text(json.dumps(instances, indent=1) + "\n")
    (folder / "refs(unc).json").write_text(json.dumps(refs, indent=1) + "\n")


def write_grit(encoded: dict[str, bytes]) -> None:
    rows = [
        {
            "key": "000000001",
            "caption": "An astronaut holding a helmet in front of a flag",
            "width": 320,
            "height": 320,
            "noun_chunks": [[0, 12, 0.18, 0.12, 0.82, 0.98, 0.9], [23, 29, 0.5, 0.55, 0.8, 0.85, 0.7]],
            "image": {"bytes": encoded["astronaut"], "path": "astronaut.jpg"},
        },
        {
            "key": "000000002",
            "caption": "A cat resting on a blanket",
            "width": 451,
            "height": 300,
            "noun_chunks": [[0, 5, 0.1, 0.1, 0.7, 0.9, 0.8]],
            "image": {"bytes": encoded["chelsea"], "path": "chelsea.jpg"},
        },
    ]
    pq.write_table(pa.Table.from_pylist(rows), CORPUS / "grit.parquet", compression="zstd")


def main() -> None:
    encoded = write_images()
    write_llava()
    write_coco(encoded)
    write_webdataset(encoded)
    write_parquet(encoded)
    write_text()
    write_obelics(encoded)
    write_mmc4()
    write_ocr_jsonl()
    write_textocr()
    write_refcoco()
    write_grit(encoded)
    total = sum(path.stat().st_size for path in CORPUS.rglob("*") if path.is_file())
    print(f"wrote {CORPUS} ({total / 1024:.0f} KiB)")


if __name__ == "__main__":
    main()
