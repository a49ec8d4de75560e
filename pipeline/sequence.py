"""Sequences: one sample (a `schemas.sample` row) → shard rows (`schemas.shard`) or one reject row.

The template (`pipeline.templates`) decides the stream of text, special tokens and images; here the text is
tokenized (all pieces of a batch of samples in one backend call), every image becomes exactly
`image_token_count(grid)` `<image>` ids with the grid from `pipeline.tiling.best_grid` (cropping off when the
row holds more than 2 images, as the official processor does), labels are set, and the length policy is
applied against `max_seq_len`:

- `drop` (default): a sequence longer than `max_seq_len` becomes a reject row `too_long` with its length.
- `truncate`: text is cut from the end, never inside an image span or a `<|ref|>…<|/ref|><|det|>…<|/det|>`
  group. A chat keeps whole turns and shortens its last kept answer, which keeps its eos; a plain document
  keeps its eos. Images cut away leave the row, and the >2-images rule is applied to the images kept. A sample
  left with no trained text is rejected `no_loss_tokens`.
- `split` (plain documents; a chat sample that is too long is rejected `too_long`): the document is cut into
  consecutive parts at segment or image boundaries (a text segment too long for one part is cut at the
  whitespace nearest its middle, repeatedly), each rendered as a document of its own: part k gets
  `sample_id` "{sample_id}-{k}" and `part` k, and its own images decide its cropping rule.

Rows are dicts with the columns of `schemas.shard`; `input_ids` and `labels` are numpy int32 arrays (Arrow
takes them without a per-token conversion: `shard.to_table(rows)`), the other list columns Python lists.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa

from model_shapes import ModelShape
from pipeline.layout import image_token_count
from pipeline.templates import (
    Block,
    Rendered,
    TemplateConfig,
    TemplateError,
    Token,
    render,
    render_document,
)
from pipeline.tiling import best_grid, cropping_for
from pipeline.tokenizer import SPECIAL_STRINGS, Tokenizer
from schemas import reject, shard

__all__ = ["OVERFLOW_POLICIES", "Built", "SequenceBuilder", "SequenceOptions", "build"]

OVERFLOW_POLICIES = ("drop", "truncate", "split")
IGNORE = shard.IGNORE_INDEX
_SHORT_TEXT = 64  # characters: texts up to this long are cached once encoded
_CACHE_ENTRIES = 1 << 16  # per cache (short texts, image grids); a full cache is dropped whole


@dataclass(frozen=True)
class SequenceOptions:
    """How samples become rows.

    - `max_seq_len`: the length limit; None takes the model shape's (4096).
    - `overflow`: the length policy, one of `OVERFLOW_POLICIES`.
    - `embed_images`: store each image's encoded bytes in the row (default); False stores only its path,
      which the reader must then be able to open.
    - `templates`: the source's template configuration.
    """

    max_seq_len: int | None = None
    overflow: str = "drop"
    embed_images: bool = True
    templates: TemplateConfig = field(default_factory=TemplateConfig)

    def __post_init__(self) -> None:
        if self.max_seq_len is not None and (
            not isinstance(self.max_seq_len, int)
            or isinstance(self.max_seq_len, bool)
            or self.max_seq_len < 3
        ):
            raise ValueError(f"max_seq_len={self.max_seq_len!r} must be an integer of at least 3")
        if self.overflow not in OVERFLOW_POLICIES:
            raise ValueError(f"overflow={self.overflow!r} is not one of {', '.join(OVERFLOW_POLICIES)}")


@dataclass(frozen=True)
class Built:
    """What one sample became: its rows (one, or several parts under `split`), or none and a reject row."""

    rows: list[dict[str, Any]]
    reject: dict[str, Any] | None = None


@dataclass(slots=True)
class _Tokens:
    """A tokenized block: `items` are token runs (lists of ids) and images (sample image indices)."""

    items: list[list[int] | int]
    loss: bool
    eos: bool


def build(
    sample: Mapping[str, Any],
    tokenizer: Tokenizer,
    shape: ModelShape | None = None,
    options: SequenceOptions | None = None,
) -> Built:
    """The rows (or the reject) of one sample; see :class:`SequenceBuilder` to build many."""
    return SequenceBuilder(tokenizer, shape, options).build(sample)


class SequenceBuilder:
    """Builds rows for one source: holds the tokenizer, the shape and the options, checked once.

    `shape` defaults to the tokenizer's; a shape given here must be the one the tokenizer was loaded for
    (its special ids may be left out: the tokenizer's are used).
    """

    def __init__(
        self, tokenizer: Tokenizer, shape: ModelShape | None = None, options: SequenceOptions | None = None
    ) -> None:
        self.tokenizer = tokenizer
        self.shape = _checked_shape(tokenizer, shape)
        self.options = options or SequenceOptions()
        self.max_seq_len = self.options.max_seq_len or self.shape.max_seq_len
        special = self.tokenizer.special_tokens
        self._special_ids = {string: getattr(special, name) for name, string in SPECIAL_STRINGS.items()}
        self._bos, self._eos, self._image = special.bos, special.eos, special.image
        self._ref, self._ref_end = special.ref_start, special.ref_end
        self._det, self._det_end = special.det_start, special.det_end
        self._identity = tokenizer.identity
        self._fingerprint = self.shape.fingerprint()
        self._grids: dict[tuple[int, int, bool], tuple[tuple[int, int], int]] = {}
        self._short_texts: dict[str, list[int]] = {}

    def build(self, sample: Mapping[str, Any]) -> Built:
        """The rows (or the reject) of one sample."""
        return self.build_many([sample])[0]

    def build_many(self, samples: Iterable[Mapping[str, Any]]) -> list[Built]:
        """`build` of each sample, with the text of all of them tokenized in one backend call."""
        samples = list(samples)
        rendered: list[Rendered | Built] = []
        texts: list[str] = []
        literal: list[int] = []  # per sample: special-token strings its text spells (kept as text)
        count = self.tokenizer.count_special_strings
        for sample in samples:
            problem = self._check_images(sample)
            if problem is not None:
                rendered.append(problem)
                continue
            try:
                result = render(sample, self.options.templates)
            except TemplateError as error:
                rendered.append(Built([], self._reject(sample, error.reason, error.detail)))
                continue
            rendered.append(result)
            first = len(texts)
            texts += [part for block in result.blocks for part in block.parts if type(part) is str]
            literal.append(sum(count(text) for text in texts[first:]))
        tokens = self._encode(texts)
        built: list[Built] = []
        found = iter(literal)
        for sample, result in zip(samples, rendered, strict=True):
            if isinstance(result, Built):
                built.append(result)
            else:
                blocks = self._tokenize(result.blocks, tokens)
                built.append(self._finish(sample, result, blocks, next(found)))
        return built

    def build_table(self, samples: pa.Table) -> tuple[pa.Table, pa.Table]:
        """A table of `schemas.sample` rows → (shard rows, reject rows) as tables of their schemas."""
        rows: list[dict[str, Any]] = []
        rejects: list[dict[str, Any]] = []
        for result in self.build_many(samples.to_pylist()):
            rows.extend(result.rows)
            if result.reject is not None:
                rejects.append(result.reject)
        return shard.to_table(rows), reject.to_table(rejects)

    # ------------------------------------------------------------------------------------------------
    # assembly

    def _encode(self, texts: list[str]) -> Iterator[list[int]]:
        """The tokens of each text, in order. Short texts are remembered (the template's own pieces, such as
        ": " and the prompts, recur in every sample): a bounded cache, dropped whole when full."""
        cache = self._short_texts
        if len(cache) > _CACHE_ENTRIES:
            cache.clear()
        known = [cache.get(text) for text in texts]
        fresh = [text for text, ids in zip(texts, known, strict=True) if ids is None]
        encoded = iter(self.tokenizer.encode_batch(fresh) if fresh else [])
        for i, text in enumerate(texts):
            if known[i] is None:
                known[i] = next(encoded)
                if len(text) <= _SHORT_TEXT:
                    cache[text] = known[i]
        return iter(known)

    def _tokenize(self, blocks: Sequence[Block], tokens: Iterator[list[int]]) -> list[_Tokens]:
        """Blocks as items: images stay indices; text and special tokens between two images become one run."""
        special = self._special_ids
        out: list[_Tokens] = []
        for block in blocks:
            items: list[list[int] | int] = []
            run: list[int] | None = None
            for part in block.parts:
                if isinstance(part, int):
                    items.append(part)
                    run = None
                    continue
                if run is None:
                    run = []
                    items.append(run)
                if type(part) is Token:
                    run.append(special[part])
                else:
                    run += next(tokens)
            out.append(_Tokens(items, block.loss, block.eos))
        return out

    def _finish(
        self, sample: Mapping[str, Any], rendered: Rendered, blocks: list[_Tokens], literal: int
    ) -> Built:
        """The row of a tokenized sample, with the length policy applied; `literal` is the number of
        special-token strings its text spells (kept as text)."""
        row = self._row(sample, blocks, literal=literal)
        length = row["seq_len"]
        if length <= self.max_seq_len:
            return Built([row])
        detail = f"{length} tokens > max_seq_len {self.max_seq_len}"
        policy = self.options.overflow
        if policy == "drop":
            return Built([], self._reject(sample, "too_long", detail))
        if policy == "split":
            if rendered.render != "plain":
                return Built(
                    [], self._reject(sample, "too_long", f"{detail}; split cuts plain documents only")
                )
            return self._split(sample, detail)
        kept = (
            self._truncate_chat(sample, blocks)
            if rendered.render == "chat"
            else self._truncate_plain(sample, blocks)
        )
        if kept is None:
            return Built(
                [], self._reject(sample, "no_loss_tokens", f"{detail}; truncation leaves no trained text")
            )
        return Built([self._row(sample, kept, truncated=True, literal=literal)])

    def _grid(self, sample: Mapping[str, Any], index: int, cropping: bool) -> tuple[tuple[int, int], int]:
        """(grid, image token count) of a sample image, cached per size."""
        image = sample["images"][index]
        key = (image["width"], image["height"], cropping)
        found = self._grids.get(key)
        if found is None:
            if len(self._grids) > _CACHE_ENTRIES:
                self._grids.clear()
            grid = best_grid(key[:2], self.shape, cropping)
            found = self._grids[key] = (grid, image_token_count(grid, self.shape))
        return found

    def _row(
        self,
        sample: Mapping[str, Any],
        blocks: Sequence[_Tokens],
        *,
        truncated: bool = False,
        part: int = 0,
        literal: int = 0,
    ) -> dict[str, Any]:
        order: list[int] = []
        total = 1
        for block in blocks:
            total += block.eos
            for item in block.items:
                if isinstance(item, int):
                    order.append(item)
                else:
                    total += len(item)
        cropping = cropping_for(len(order))
        grids = [self._grid(sample, index, cropping) for index in order]  # in order of appearance
        for _, count in grids:
            total += count
        # Filled by slices: one numpy call per text run or image, never one Python step per token. Labels
        # start as a copy (position 0 keeps the bos id, as the official target_ids do) and lose the blocks
        # not trained on and the images inside trained ones.
        ids = np.empty(total, dtype=np.int32)
        ids[0] = self._bos
        ignored: list[tuple[int, int]] = []
        offsets: list[int] = []
        crops: list[list[int]] = []
        next_grid = iter(grids).__next__
        image_id = self._image
        position = 1
        num_image = num_loss = 0
        for block in blocks:
            start = position
            block_image = 0
            for item in block.items:
                if isinstance(item, int):
                    grid, count = next_grid()
                    ids[position : position + count] = image_id
                    offsets.append(position)
                    crops.append(list(grid))
                    if block.loss:
                        ignored.append((position, position + count))
                    position += count
                    block_image += count
                else:
                    end = position + len(item)
                    ids[position:end] = item
                    position = end
            if block.eos:
                ids[position] = self._eos
                position += 1
            num_image += block_image
            if block.loss:
                num_loss += position - start - block_image
            else:
                ignored.append((start, position))
        labels = ids.copy()
        for start, end in ignored:
            labels[start:end] = IGNORE
        regions = sample["regions"]
        position_of = {index: k for k, index in enumerate(order)} if regions else {}
        images = sample["images"]
        embed = self.options.embed_images
        return {
            "sample_id": sample["sample_id"] if part == 0 else f"{sample['sample_id']}-{part}",
            "source": sample["source"],
            "key": sample["key"],
            "kind": sample["kind"],
            "part": part,
            "input_ids": ids,
            "labels": labels,
            "images": [
                {
                    "bytes": images[index]["bytes"] if embed else None,
                    "path": images[index]["path"],
                    "format": images[index]["format"],
                    "width_px": images[index]["width"],
                    "height_px": images[index]["height"],
                }
                for index in order
            ],
            "images_spatial_crop": crops,
            "image_token_offsets": offsets,
            "regions": [
                {"phrase": region["phrase"], "image": position_of[region["image"]], "boxes": region["boxes"]}
                for region in regions
                if region["image"] in position_of
            ],
            "num_image_tokens": num_image,
            "num_text_tokens": total - num_image,
            "num_loss_tokens": num_loss,
            "seq_len": total,
            "truncated": truncated,
            "special_strings_as_text": literal,
            "tokenizer_sha256": self._identity,
            "shape_fingerprint": self._fingerprint,
            "position_ids": None,
            "cu_seqlens": None,
            "documents": None,
        }

    # ------------------------------------------------------------------------------------------------
    # truncate

    def _truncate_chat(self, sample: Mapping[str, Any], blocks: Sequence[_Tokens]) -> list[_Tokens] | None:
        """Whole turns up to the last answer that fits at least in part; that answer cut to fit."""
        for answer_at in reversed([i for i, block in enumerate(blocks) if block.loss]):
            prefix = list(blocks[:answer_at])
            cropping = cropping_for(sum(isinstance(item, int) for block in prefix for item in block.items))
            used = 1 + sum(self._length(sample, block, cropping) for block in prefix)
            answer = [token for item in blocks[answer_at].items for token in item]  # answers hold no image
            room = self.max_seq_len - used - 1
            if room >= len(answer):
                return [*prefix, blocks[answer_at]]
            cut = _cut(room, self._groups(answer))
            if cut >= 1:
                return [*prefix, _Tokens(items=[answer[:cut]], loss=True, eos=True)]
        return None

    def _truncate_plain(self, sample: Mapping[str, Any], blocks: Sequence[_Tokens]) -> list[_Tokens] | None:
        """The longest prefix of the document that fits with its eos, trying each number of kept images
        (it decides the images' sizes) from all of them down."""
        (block,) = blocks
        total_images = sum(isinstance(item, int) for item in block.items)
        for keep in range(total_images, -1, -1):
            cropping = cropping_for(keep)
            tokens: list[int] = []
            spans: list[tuple[int, int]] = []
            for item in block.items:
                if isinstance(item, int):
                    count = self._grid(sample, item, cropping)[1]
                    spans.append((len(tokens), len(tokens) + count))
                    tokens += [self._image] * count
                else:
                    tokens += item
            limit = self.max_seq_len - 2
            if keep < total_images:
                limit = min(limit, spans[keep][0])
            cut = _cut(min(limit, len(tokens)), sorted(spans + self._groups(tokens)))
            kept = spans[:keep]
            if any(end > cut for _, end in kept) or cut - sum(end - start for start, end in kept) < 1:
                continue
            return [_Tokens(items=_prefix_items(block.items, cut, spans), loss=True, eos=True)]
        return None

    def _length(self, sample: Mapping[str, Any], block: _Tokens, cropping: bool) -> int:
        length = int(block.eos)
        for item in block.items:
            length += self._grid(sample, item, cropping)[1] if isinstance(item, int) else len(item)
        return length

    def _groups(self, tokens: Sequence[int]) -> list[tuple[int, int]]:
        """[start, end) of each `<|ref|>…<|/ref|>` (with the `<|det|>…<|/det|>` right after it) and each lone
        `<|det|>…<|/det|>`; a group left open runs to the end."""
        groups: list[tuple[int, int]] = []
        n = len(tokens)
        i = 0
        while i < n:
            token = tokens[i]
            if token == self._ref or token == self._det:
                end = _after(tokens, self._ref_end if token == self._ref else self._det_end, i)
                if token == self._ref and end < n and tokens[end] == self._det:
                    end = _after(tokens, self._det_end, end)
                groups.append((i, end))
                i = end
            else:
                i += 1
        return groups

    # ------------------------------------------------------------------------------------------------
    # split

    def _split(self, sample: Mapping[str, Any], detail: str) -> Built:
        budget = self.max_seq_len - 2
        content = sample["content"]
        text_at = [i for i, segment in enumerate(content) if segment["type"] == "text"]
        lengths = [len(t) for t in self.tokenizer.encode_batch([content[i]["text"] for i in text_at])]
        estimated = dict(zip(text_at, lengths, strict=True))
        units: list[tuple[int, str | None, int]] = []  # (segment index, text or None for an image, tokens)
        for i, segment in enumerate(content):
            if segment["type"] == "image":
                units.append((i, None, 0))
            else:
                units += [(i, text, n) for text, n in self._fit(segment["text"], estimated[i], budget)]
        uncropped = image_token_count((1, 1), self.shape)
        rows: list[dict[str, Any]] = []
        start = 0
        while start < len(units):
            end = start
            text_tokens = cropped_sum = images = 0
            while end < len(units):
                index, text, n = units[end]
                if text is None:
                    count = self._grid(sample, content[index]["image"], True)[1]
                    cost = text_tokens + (
                        cropped_sum + count if cropping_for(images + 1) else (images + 1) * uncropped
                    )
                else:
                    cost = text_tokens + n + 1 + (cropped_sum if cropping_for(images) else images * uncropped)
                if cost > budget and end > start:
                    break
                if text is None:
                    cropped_sum, images = cropped_sum + count, images + 1
                else:
                    text_tokens += n + 1
                end += 1
            while True:
                row = self._part(sample, units[start:end], len(rows) + 1)
                if row is None or row["seq_len"] <= self.max_seq_len:
                    break
                if end - start == 1:
                    return Built(
                        [], self._reject(sample, "too_long", f"{detail}; a single image does not fit")
                    )
                end -= 1
            if row is not None:
                rows.append(row)
            start = end
        return Built(rows)

    def _fit(self, text: str, n_tokens: int, budget: int) -> list[tuple[str, int]]:
        """A text as pieces of at most `budget` tokens each, cut at the whitespace nearest the middle."""
        if n_tokens <= budget or len(text) < 2:
            return [(text, n_tokens)]
        middle = len(text) // 2
        left_space, right_space = text.rfind(" ", 0, middle), text.find(" ", middle)
        candidates = [i for i in (left_space, right_space) if i > 0]
        cut = min(candidates, key=lambda i: abs(i - middle)) if candidates else middle
        halves = [text[:cut], text[cut:]]
        counts = [len(t) for t in self.tokenizer.encode_batch(halves)]
        return [piece for half, n in zip(halves, counts, strict=True) for piece in self._fit(half, n, budget)]

    def _part(
        self, sample: Mapping[str, Any], units: Sequence[tuple[int, str | None, int]], part: int
    ) -> dict | None:
        """The row of one part of a split document, or None when the part holds only whitespace."""
        content = sample["content"]
        segments: list[dict[str, Any]] = []
        previous = None
        for index, text, _ in units:
            if text is None:
                segments.append(dict(content[index]))
            elif previous == index and segments[-1]["type"] == "text":
                segments[-1]["text"] += text
            else:
                segments.append({**content[index], "text": text})
            previous = index
        try:
            block = render_document(segments)
        except TemplateError:
            return None
        texts = [p for p in block.parts if type(p) is str]
        literal = sum(self.tokenizer.count_special_strings(text) for text in texts)
        return self._row(sample, self._tokenize([block], self._encode(texts)), part=part, literal=literal)

    # ------------------------------------------------------------------------------------------------

    def _check_images(self, sample: Mapping[str, Any]) -> Built | None:
        for index, image in enumerate(sample["images"]):
            if image["width"] < 1 or image["height"] < 1:
                return Built(
                    [],
                    self._reject(
                        sample, "zero_size_image", f"image {index} is {image['width']}×{image['height']}"
                    ),
                )
            if self.options.embed_images and image["bytes"] is None:
                return Built(
                    [], self._reject(sample, "missing_image", f"image {index} has no bytes to embed")
                )
            if not self.options.embed_images and not image["path"]:
                return Built(
                    [], self._reject(sample, "missing_image", f"image {index} has no path to refer to")
                )
        return None

    def _reject(self, sample: Mapping[str, Any], reason: str, detail: str) -> dict[str, Any]:
        return reject.reject(
            sample["source"], sample["key"], "sequence", reason, detail, sample_id=sample["sample_id"]
        )


def _checked_shape(tokenizer: Tokenizer, shape: ModelShape | None) -> ModelShape:
    if shape is None:
        return tokenizer.shape
    if shape.special_tokens is None:
        shape = shape.with_special_tokens(tokenizer.special_tokens)
    if shape != tokenizer.shape:
        raise ValueError(
            f"model_shape {shape.name!r} is not the shape tokenizer {str(tokenizer.path)!r} was loaded for "
            f"({tokenizer.shape.name!r}): load the tokenizer with this shape"
        )
    return shape


def _after(tokens: Sequence[int], closing: int, start: int) -> int:
    """The index just past the first `closing` token after `start`, or len(tokens)."""
    try:
        return tokens.index(closing, start + 1) + 1
    except ValueError:
        return len(tokens)


def _cut(limit: int, forbidden: Sequence[tuple[int, int]]) -> int:
    """The largest cut ≤ `limit` (keep tokens[:cut]) that is strictly inside none of the `forbidden` [start,
    end) intervals."""
    cut = limit
    moved = True
    while moved:
        moved = False
        for start, end in forbidden:
            if start < cut < end:
                cut, moved = start, True
    return cut


def _prefix_items(items: Sequence[list[int] | int], cut: int, spans: Sequence[tuple[int, int]]) -> list:
    """The items that make up the first `cut` tokens (image sizes as in `spans`)."""
    kept: list[list[int] | int] = []
    position = 0
    image = 0
    for item in items:
        if position >= cut:
            break
        if isinstance(item, int):
            kept.append(item)
            position = spans[image][1]
            image += 1
        else:
            kept.append(item[: cut - position])
            position += len(item)
    return kept
