"""One shard row for a person: its provenance, images, grounding boxes and decoded sequence.

The sequence is decoded with the output's tokenizer, each image span collapsed to `<image ×1023 grid 2×2>`,
runs of pad to `<pad ×N>`, special tokens by name (`<bos>`, `<eos>`, `<|User|>`, ...), and the text the model
is trained on (label not -100, the first bos left out: it is no target) between `«` and `»`. Each grounding
box is shown as the text writes it, `[[x1, y1, x2, y2]]` in 0–999 units, then as pixels on the original image
(the official inverse, `pipeline.templates.box_pixels`).

A damaged row is shown, not refused: an id the tokenizer does not know (negative, or past its pieces) appears
as `<id N?>`, labels of another length than the ids are said in a line of their own (positions without a
label shown as not trained on), a grid that is not a tile grid and a region whose image index is not one of
the row's images are said as such. A shard file that cannot be read (truncated, not Parquet, missing) is an
`UnreadableShard` naming the file.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import pyarrow as pa

from model_shapes import ModelShape
from pipeline import layout
from pipeline import tokenizer as tokenizers
from pipeline.shards import MANIFEST, OutputDir
from pipeline.templates import box_pixels, quantize_box
from pipeline.verify import iter_rows
from schemas.shard import IGNORE_INDEX

__all__ = ["TRAINED_CLOSE", "TRAINED_OPEN", "UnreadableShard", "find_row", "render_row", "tokenizer_for"]

TRAINED_OPEN, TRAINED_CLOSE = "«", "»"


class UnreadableShard(Exception):
    """A shard file of the output that cannot be read; the message names it and says why."""


def tokenizer_for(
    manifest: Mapping[str, Any], shape: ModelShape, path: str | None = None
) -> tokenizers.Tokenizer:
    """The output's tokenizer: `path` when given, else the one its config names (a shipped tokenizer's name
    or an absolute path), else the shipped one with the manifest's sha256. Raises TokenizerError when none is
    the file the manifest records."""
    return tokenizers.load_recorded(
        manifest["config"].get("tokenizer", "default"), shape, manifest["tokenizer"]["sha256"], path
    )


def find_row(
    location: str, row: int | None = None, sample_id: str | None = None
) -> tuple[str, int, dict[str, Any]]:
    """(file, row number over all shards in manifest order, the row) of row `row` or of `sample_id`; streams
    the files. Raises LookupError when there is no such row, UnreadableShard when a file it reads cannot be
    read."""
    out = OutputDir(location)
    manifest = out.read_json(MANIFEST)
    seen = 0
    for entry in manifest["shards"]:
        if row is not None and seen + entry["rows"] <= row:
            seen += entry["rows"]
            continue
        try:
            for number, found in enumerate(iter_rows(out, entry["path"]), start=seen):
                if number == row or (sample_id is not None and found["sample_id"] == sample_id):
                    return entry["path"], number, found
        except (OSError, pa.ArrowException) as error:
            raise UnreadableShard(f"{out.path(entry['path'])}: cannot be read: {error}") from None
        seen += entry["rows"]
    wanted = f"row {row}" if row is not None else f"sample_id {sample_id}"
    raise LookupError(f"{location}: no {wanted} among its {seen} rows")


def render_row(row: Mapping[str, Any], shape: ModelShape, tokenizer: tokenizers.Tokenizer) -> str:
    """The row as text (see the module docstring)."""
    ids = np.asarray(row["input_ids"] if row["input_ids"] is not None else [], dtype=np.int64)
    labels = np.asarray(row["labels"] if row["labels"] is not None else [], dtype=np.int64)
    lines = [
        f"sample_id {row['sample_id']}",
        f"source {row['source']} · key {row['key']} · kind {row['kind']} · part {row['part']}",
        f"{len(ids)} tokens: {row['num_image_tokens']} image, {row['num_text_tokens']} text, "
        f"{row['num_loss_tokens']} trained; truncated {'yes' if row['truncated'] else 'no'}"
        + (
            f"; {row['special_strings_as_text']} special-token strings in its text kept as text"
            if row.get("special_strings_as_text")
            else ""
        ),
    ]
    if len(labels) != len(ids):
        lines.append(
            f"damaged: {len(labels)} labels for {len(ids)} input ids (positions without a label are shown as "
            "not trained on)"
        )
    specials = list(shape.special_tokens.as_dict().values())
    unknown = int((((ids < 0) | (ids >= tokenizer.piece_count)) & ~np.isin(ids, specials)).sum())
    if unknown:
        lines.append(f"damaged: {unknown} ids the tokenizer does not know, shown as <id N?>")
    for index, (image, grid, offset) in enumerate(
        zip(row["images"], row["images_spatial_crop"], row["image_token_offsets"], strict=True)
    ):
        lines.append(
            f"image {index}: {image['path']} {image['format']} {image['width_px']}×{image['height_px']}, "
            f"grid {grid[0]}×{grid[1]}, {_image_tokens(grid, shape)} at {offset}"
        )
    for index, region in enumerate(row["regions"]):
        if not 0 <= region["image"] < len(row["images"]):
            lines.append(
                f"region {index} {region['phrase']!r} on image {region['image']}: the row has no such image"
            )
            continue
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
    lines.append(f"sequence ({TRAINED_OPEN}…{TRAINED_CLOSE}: trained on; the rest is no target):")
    trained = np.zeros(len(ids), bool)
    labelled = min(len(ids), len(labels))
    trained[:labelled] = labels[:labelled] != IGNORE_INDEX
    trained[:1] = False  # the bos keeps its id as a label, as officially, but no logit is scored against it
    lines.append(_sequence(row, ids, trained, shape, tokenizer))
    return "\n".join(lines)


def _image_tokens(grid: list[int], shape: ModelShape) -> str:
    try:
        return f"{layout.image_token_count(tuple(grid), shape)} tokens"
    except ValueError:
        return "not a tile grid"


def _names(shape: ModelShape) -> dict[int, str]:
    """The special ids and how a sequence shows them."""
    special = shape.special_tokens
    assert special is not None
    names = {getattr(special, field): text for field, text in tokenizers.SPECIAL_STRINGS.items()}
    return names | {special.bos: "<bos>", special.eos: "<eos>"}


def _decode(tokenizer: tokenizers.Tokenizer, ids: np.ndarray) -> str:
    """The text of ordinary ids; each id the tokenizer does not know (negative, or past its pieces) as
    `<id N?>`, so that a damaged row is shown rather than refused."""
    known = (ids >= 0) & (ids < tokenizer.piece_count)
    pieces, start = [], 0
    while start < len(ids):
        end = start + 1
        while end < len(ids) and known[end] == known[start]:
            end += 1
        run = ids[start:end].tolist()
        pieces.append(tokenizer.decode(run) if known[start] else "".join(f"<id {i}?>" for i in run))
        start = end
    return "".join(pieces)


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
    names = _names(shape)
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
            text = _decode(tokenizer, ids[position:end])
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
