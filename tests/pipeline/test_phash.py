"""pipeline.phash: the DCT pHash against an independent computation, its invariances and its edge cases."""

from __future__ import annotations

import io
import itertools
from pathlib import Path

import numpy as np
from PIL import Image

from pipeline import phash

PHOTOS = sorted((Path(__file__).resolve().parents[1] / "golden" / "images").glob("skimage_*.png"))


def reference(image: Image.Image) -> int:
    """The pHash by the textbook formula: an explicit double sum per coefficient (no matrices)."""
    pixels = np.asarray(
        image.convert("L").resize((32, 32), Image.Resampling.LANCZOS, reducing_gap=2.0), dtype=np.float64
    )
    x = np.arange(32)
    block = np.zeros((8, 8))
    for u, v in itertools.product(range(8), range(8)):
        cu = np.sqrt(1 / 32) if u == 0 else np.sqrt(2 / 32)
        cv = np.sqrt(1 / 32) if v == 0 else np.sqrt(2 / 32)
        basis = np.outer(np.cos(np.pi * (2 * x + 1) * u / 64), np.cos(np.pi * (2 * x + 1) * v / 64))
        block[u, v] = cu * cv * (pixels * basis).sum()
    flat = np.round(block, 6).ravel()
    bits = flat > np.median(flat[1:])
    return sum(1 << (63 - i) for i in range(64) if bits[i])


def test_matches_the_textbook_formula_and_is_stable_across_modes():
    for path in PHOTOS:
        image = Image.open(path)
        value = phash.phash(image)
        assert value == reference(image)
        assert 0 <= value < 2**64 and value >> 63 == 1  # bit 0: the DC term, above the median
        assert phash.phash(image.convert("RGBA")) == phash.phash(image.convert("RGB"))


def test_variants_are_close_and_distinct_photos_are_far():
    hashes = []
    for path in PHOTOS:
        image = Image.open(path).convert("RGB")
        value = phash.phash(image)
        hashes.append(value)
        buffer = io.BytesIO()
        image.resize((image.width * 6 // 10, image.height * 6 // 10)).save(buffer, format="JPEG", quality=30)
        assert phash.hamming(value, phash.phash_bytes(buffer.getvalue())) <= 6
    for first, second in itertools.combinations(hashes, 2):
        assert phash.hamming(first, second) >= 20
    many = phash.hamming_many(np.array(hashes, np.uint64), np.uint64(hashes[0]))
    assert many.tolist() == [phash.hamming(h, hashes[0]) for h in hashes] and many.dtype == np.int64


def test_edge_cases():
    assert phash.phash_bytes(b"not an image") is None
    assert phash.phash_bytes(b"") is None
    flat = [
        phash.phash(Image.new("RGB", (w, h), colour))
        for w, h, colour in ((10, 10, (0, 0, 0)), (1, 300, (9, 200, 1)))
    ]
    assert flat == [0, 1 << 63]  # no contrast: only the DC bit, and not even that for black
    assert phash.to_hex(0xAB) == "00000000000000ab"
