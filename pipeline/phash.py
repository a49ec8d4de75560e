"""Perceptual image hashes: a 64-bit DCT pHash per image, and Hamming distances between hashes.

Near-duplicate dedup (`pipeline.dedup`, `image_near`) and evaluation decontamination (`pipeline.decontam`)
compare images by these hashes: the same photo re-encoded, resized or lightly recoloured keeps almost every
bit, two different photos differ in about half of them.

The variant is the classic DCT pHash (Zauner 2010, pHash.org; `imagehash.phash` computes the same
construction): the image is converted to 8-bit greyscale (Pillow's `convert("L")`, ITU-R 601 luma; alpha is
ignored, as the tiler ignores it), resized to 32×32 with Pillow's Lanczos filter after an integer box
reduction (`reducing_gap=2`: both low-pass, so the result hardly depends on the input size), transformed by an
orthonormal 2-D DCT-II, and the 8×8 block of lowest frequencies is kept. Bit `8·u + v` (u the vertical, v the
horizontal frequency) is 1 when that coefficient is above the median of the 63 coefficients other than the DC
term. The DC term is left out of the median, as imagededup does and unlike `imagehash` (which takes the median
of all 64): it is the mean brightness, so the threshold does not move when an image is brightened or darkened.
Bit 0 (the DC term itself) is 1 for any image with a positive mean. So a hash has 32 bits set (31 AC terms
above the median and the DC term) unless coefficients tie, and distances between hashes are then even: a
threshold D acts like D rounded down to even.

Why this one: a low-frequency DCT sign pattern survives JPEG re-encoding (which quantizes high frequencies),
resizing (which the 32×32 resize undoes) and brightness or contrast changes (which scale the AC terms but keep
their order around the median) far better than an average hash (aHash) or a gradient hash (dHash) at the same
64 bits, and it needs nothing beyond numpy and Pillow. It is weaker on crops, which shift every frequency
(`bench/dedup.py` measures each variant kind). Hashes are Python ints in [0, 2^64), bit `8·u + v` counted from
the most significant bit, so the hex string reads row by row like the 8×8 block.

The hash is deterministic for given pixels: it uses float64 numpy arithmetic on the decoded pixels, never a
reduced-size JPEG decode, and rounds the coefficients to 6 decimals, so that a flat image (no contrast) hashes
to 0 (black) or to the DC bit alone rather than to float noise: all flat images are near each other.
"""

from __future__ import annotations

import io
from functools import cache

import numpy as np
from PIL import Image

__all__ = ["BITS", "hamming", "hamming_many", "phash", "phash_bytes", "to_hex"]

BITS = 64
"""Bits of a hash."""

_SIDE = 32
_BLOCK = 8
_REDUCING_GAP = (
    2.0  # box-reduce by an integer factor first: 14x faster on a 2048 px photo, same low frequencies
)


@cache
def _dct_matrix() -> np.ndarray:
    """The orthonormal DCT-II matrix of size 32, rows = frequencies (only the first 8 are used)."""
    n = np.arange(_SIDE)
    matrix = np.cos(np.pi * (2 * n[None, :] + 1) * n[:, None] / (2 * _SIDE)) * np.sqrt(2 / _SIDE)
    matrix[0] /= np.sqrt(2)
    return matrix[:_BLOCK].copy()


def phash(image: Image.Image) -> int:
    """The 64-bit DCT pHash of a decoded image (see the module docstring), as an int in [0, 2^64)."""
    grey = image if image.mode == "L" else image.convert("L")
    small = grey.resize((_SIDE, _SIDE), Image.Resampling.LANCZOS, reducing_gap=_REDUCING_GAP)
    pixels = np.asarray(small, dtype=np.float64)
    basis = _dct_matrix()
    # Rounded so that float noise (~1e-13) is no signal: a flat image has AC terms of exactly 0.
    block = np.round(basis @ pixels @ basis.T, 6).ravel()
    median = np.median(block[1:])
    bits = block > median
    return int.from_bytes(np.packbits(bits).tobytes(), "big")


def phash_bytes(data: bytes) -> int | None:
    """The pHash of an encoded image file, or None when the bytes do not decode."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            return phash(image)
    except (OSError, ValueError, Image.DecompressionBombError):
        return None


def hamming(first: int, second: int) -> int:
    """Bits that differ between two hashes."""
    return (first ^ second).bit_count()


def hamming_many(first: np.ndarray, second: np.ndarray) -> np.ndarray:
    """Element-wise Hamming distances (int64) of two broadcastable uint64 arrays."""
    return np.bitwise_count(np.bitwise_xor(first, second)).astype(np.int64)


def to_hex(value: int) -> str:
    """A hash as 16 lowercase hex digits."""
    return f"{value:016x}"
