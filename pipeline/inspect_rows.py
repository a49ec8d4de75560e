"""One shard row for a person: its provenance, images, grounding boxes and decoded sequence.

The sequence is decoded with the output's tokenizer, each image span collapsed to `<image ×1023 grid 2×2>`,
runs of pad to `<pad ×N>`, special tokens by name (`<bos>`, `<eos>`, `<|User|>`, ...), and the text the model
is trained on (label not -100) between `«` and `»`. Each grounding box is shown as the text writes it,
`[[x1, y1, x2, y2]]` in 0–999 units, then as pixels on the original image (the official inverse,
`pipeline.templates.box_pixels`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from model_shapes import ModelShape
from pipeline import layout
from pipeline import tokenizer as tokenizers
from pipeline.shards import MANIFEST, OutputDir
from pipeline.templates import box_pixels, quantize_box
from pipeline.verify import iter_rows
from schemas.shard import IGNORE_INDEX

__all__ = ["TRAINED_CLOSE", "TRAINED_OPEN", "find_row", "render_row", "tokenizer_for"]

TRAINED_OPEN, TRAINED_CLOSE = "«", "»"


def tokenizer_for(
    manifest: Mapping[str, Any], shape: ModelShape, path: str | None = None
) -> tokenizers.Tokenizer:
    """The output's tokenizer: `path` when given, else the one its config names ("default" or an absolute
    path). Raises TokenizerError when it cannot be found or is not the file the manifest records."""
    spec = manifest["config"].get("tokenizer", "default")
    if path is not None:
        loaded = tokenizers.load(path, shape)
    elif spec == "default":
        loaded = tokenizers.load("default", shape)
    elif isinstance(spec, Mapping) and str(spec.get("path", "")).startswith("/"):
        loaded = tokenizers.load(spec["path"], shape, kind=spec.get("kind"))
    else:
        raise tokenizers.TokenizerError(
            f"the output's tokenizer {spec!r} is relative to its config; give its path"
        )
    if loaded.identity != manifest["tokenizer"]["sha256"]:
        raise tokenizers.TokenizerError(
            f"tokenizer {loaded.path} (sha256 {loaded.identity}) is not the one the output was made with"
        )
    return loaded


def find_row(
    location: str, row: int | None = None, sample_id: str | None = None
) -> tuple[str, int, dict[str, Any]]:
    """(file, row number over all shards in manifest order, the row) of row `row` or of `sample_id`; streams
    the files. Raises LookupError when there is no such row."""
    out = OutputDir(location)
    manifest = out.read_json(MANIFEST)
    seen = 0
    for entry in manifest["shards"]:
        if row is not None and seen + entry["rows"] <= row:
            seen += entry["rows"]
            continue
        for number, found in enumerate(iter_rows(out, entry["path"]), start=seen):
            if number == row or (sample_id is not None and found["sample_id"] == sample_id):
                return entry["path"], number, found
        seen += entry["rows"]
    wanted = f"row {row}" if row is not None else f"sample_id {sample_id}"
    raise LookupError(f"{location}: no {wanted} among its {seen} rows")


def render_row(row: Mapping[str, Any], shape: ModelShape, tokenizer: tokenizers.Tokenizer) -> str:
    """The row as text (see the module docstring)."""
    ids = np.asarray(row["input_ids"])
    labels = np.asarray(row["labels"])
    lines = [
        f"sample_id {row['sample_id']}",
        f"source {row['source']} · key {row['key']} · kind {row['kind']} · part {row['part']}",
        f"{len(ids)} tokens: {row['num_image_tokens']} image, {row['num_text_tokens']} text, "
        f"{row['num_loss_tokens']} trained; truncated {'yes' if row['truncated'] else 'no'}",
    ]
    for index, (image, grid, offset) in enumerate(
        zip(row["images"], row["images_spatial_crop"], row["image_token_offsets"], strict=True)
    ):
        lines.append(
            f"image {index}: {image['path']} {image['format']} {image['width_px']}×{image['height_px']}, "
            f"grid {grid[0]}×{grid[1]}, {layout.image_token_count(tuple(grid), shape)} tokens at {offset}"
        )
    for index, region in enumerate(row["regions"]):
        image = row["images"][region["image"]]
        width, height = image["width_px"], image["height_px"]
        written = [quantize_box(box, width, height) for box in region["boxes"]]
        pixels = [box_pixels(box, width, height) for box in written]
        lines.append(
            f"region {index} {region['phrase']!r} on image {region['image']} ({width}×{height}): "
            f"{_boxes(written)} → pixels {_boxes(pixels)}"
        )
    for document in row.get("documents") or []:
        lines.append(
            f"document {document['sample_id']}: {document['source']} {document['kind']} "
            f"part {document['part']}, {document['seq_len']} tokens"
        )
    lines.append(f"sequence ({TRAINED_OPEN}…{TRAINED_CLOSE}: trained on; the rest has label {IGNORE_INDEX}):")
    lines.append(_sequence(row, ids, labels != IGNORE_INDEX, shape, tokenizer))
    return "\n".join(lines)


def _boxes(boxes: list[list[int]]) -> str:
    return "[" + ", ".join("[{}, {}, {}, {}]".format(*box) for box in boxes) + "]"


def _sequence(
    row: Mapping[str, Any],
    ids: np.ndarray,
    trained: np.ndarray,
    shape: ModelShape,
    tokenizer: tokenizers.Tokenizer,
) -> str:
    special = shape.special_tokens
    assert special is not None
    names = {getattr(special, field): text for field, text in tokenizers.SPECIAL_STRINGS.items()}
    names |= {special.bos: "<bos>", special.eos: "<eos>"}
    grids = {
        int(offset): tuple(grid)
        for offset, grid in zip(row["image_token_offsets"], row["images_spatial_crop"], strict=True)
    }
    breaks = {int(c) for c in row.get("cu_seqlens") if c} if row.get("cu_seqlens") is not None else set()
    pieces: list[tuple[bool, str]] = []
    position = 0
    while position < len(ids):
        token = int(ids[position])
        end = position + 1
        if token in (special.image, special.pad) or token not in names:
            while (
                end < len(ids)
                and end not in breaks
                and (
                    ids[end] == token if token in (special.image, special.pad) else int(ids[end]) not in names
                )
                and trained[end] == trained[position]
                and end not in grids
            ):
                end += 1
        if token == special.image:
            grid = grids.get(position)
            suffix = f" grid {grid[0]}×{grid[1]}" if grid is not None else " outside any image span"
            text = f"<image ×{end - position}{suffix}>"
        elif token == special.pad:
            text = f"<pad ×{end - position}>"
        elif token in names:
            text = names[token]
        else:
            text = tokenizer.decode([int(t) for t in ids[position:end]])
        if position in breaks:
            pieces.append((False, "\n── next document ──\n"))
        pieces.append((bool(trained[position]), text))
        position = end
    merged: list[str] = []
    previous = False
    for is_trained, text in pieces:
        if is_trained != previous:
            merged.append(TRAINED_OPEN if is_trained else TRAINED_CLOSE)
            previous = is_trained
        merged.append(text)
    if previous:
        merged.append(TRAINED_CLOSE)
    return "".join(merged)
