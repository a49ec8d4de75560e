"""Shard rows of any length and tile grids, made without a tokenizer or image bytes, for the packing and
balancing tests (not a test module). Images are stored by reference, so the rows pack, write and order, but
do not collate."""

from __future__ import annotations

import numpy as np
from shard_support import TOK, TOY

from pipeline import layout
from schemas.sample import sample_id_for

IMAGE_ID = TOY.special_tokens.image


def synthetic_row(
    source: str, key: str, seq_len: int, grids: list[tuple[int, int]] = (), part: int = 0
) -> dict:
    """A row of `seq_len` tokens: bos, the images' `<image>` spans, text ids, eos; labels are the ids."""
    spans = [layout.image_token_count(grid, TOY) for grid in grids]
    if 2 + sum(spans) > seq_len:
        raise ValueError(f"{seq_len} tokens cannot hold images of {sum(spans)} tokens")
    ids = np.full(seq_len, 7, dtype=np.int32)
    ids[0], ids[-1] = TOY.special_tokens.bos, TOY.special_tokens.eos
    offsets, at = [], 1
    for span in spans:
        ids[at : at + span] = IMAGE_ID
        offsets.append(at)
        at += span
    sample_id = sample_id_for(source, key)
    return {
        "sample_id": sample_id if part == 0 else f"{sample_id}-{part}",
        "source": source,
        "key": key,
        "kind": "interleaved",
        "part": part,
        "input_ids": ids,
        "labels": ids.copy(),
        "images": [
            {
                "bytes": None,
                "path": f"{key}-{i}.jpg",
                "format": "JPEG",
                "width_px": 384 * w,
                "height_px": 384 * h,
            }
            for i, (w, h) in enumerate(grids)
        ],
        "images_spatial_crop": [list(grid) for grid in grids],
        "image_token_offsets": offsets,
        "regions": [],
        "num_image_tokens": sum(spans),
        "num_text_tokens": seq_len - sum(spans),
        "num_loss_tokens": seq_len - 1,
        "seq_len": seq_len,
        "truncated": False,
        "special_strings_as_text": 0,
        "tokenizer_sha256": TOK.identity,
        "shape_fingerprint": TOY.fingerprint(),
        "position_ids": None,
        "cu_seqlens": None,
        "documents": None,
    }


def mixed_rows(count: int, seed: int = 0, max_seq_len: int = 4096) -> list[dict]:
    """Captions (one image, short text), grounding (one image, longer text) and interleaved documents (1
    to 6 images, 1×1 beyond two, long text), images gridded like a spread of web thumbnails, COCO photos and
    large photos (1×1, 2×2, 3×3 and some wide grids)."""
    rng = np.random.default_rng(seed)
    grids_by_size = [(1, 1)] * 30 + [(2, 2)] * 40 + [(3, 3)] * 15 + [(2, 1)] * 8 + [(4, 2)] * 4 + [(1, 2)] * 3
    rows = []
    for index in range(count):
        kind = rng.choice(["caption", "grounding", "interleaved"], p=[0.45, 0.25, 0.30])
        images = int(rng.integers(1, 7)) if kind == "interleaved" else 1
        grids = [grids_by_size[int(rng.integers(len(grids_by_size)))] for _ in range(images)]
        if images > 2:
            grids = [(1, 1)] * images
        image_tokens = sum(layout.image_token_count(grid, TOY) for grid in grids)
        text = {"caption": (15, 80), "grounding": (40, 250), "interleaved": (150, 2800)}[str(kind)]
        seq_len = min(max_seq_len, image_tokens + 2 + int(rng.integers(*text)))
        rows.append(synthetic_row("mix", f"{kind}{index}", seq_len, grids))
    return rows
