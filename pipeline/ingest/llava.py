"""Reader for LLaVA / ShareGPT4V conversations (`format: llava`): a JSON array of records or JSON Lines.

A record is `{"id": ..., "image": "a.jpg" | ["a.jpg", ...], "conversations": [{"from": "human",
"value": "<image>\\nWhat is this?"}, {"from": "gpt", "value": "A cat."}, ...]}`; the image field is
optional (absent, null or `[]`: a text-only conversation, still kind `conversation`), and paths are
relative to `images_root`.

- Roles: `human` (or `user`) → user, `gpt` (or `assistant`) → assistant, `system` → system; anything
  else is `bad_field`.
- Placeholders: the i-th `<image>` stands for the i-th image. With images but no placeholder at all,
  `<image>\\n` per image goes at the start of the first user turn (the LLaVA convention); otherwise the
  placeholder count must equal the image count (`placeholder_mismatch`), and placeholders may only
  be in user turns (`placeholder_mismatch` too).
- Content: each turn's text is split around its placeholders into text and image segments, in order,
  with the turn number and role; text is kept exactly (the newline after `<image>` included), empty
  pieces are dropped. A blank turn is kept, as the official processor keeps it: a blank user turn becomes
  `<|User|>:<|Assistant|>:`, a blank answer trains only its eos (drop such samples with a filter, e.g.
  `min_text_chars`, if they are unwanted).
- Key: `<file relative to the source root>#<record index>` (0-based; blank JSON Lines lines are not
  records). Meta: every other field of the record (`id` included).
"""

from __future__ import annotations

from collections.abc import Generator
from dataclasses import dataclass
from functools import partial

from pipeline.ingest.base import Format, ImageOptions, Row, SourceConfig, option
from pipeline.ingest.checks import (
    Rejected,
    image_path,
    image_segment,
    load_image,
    record_rows,
    sample_row,
    text_field,
    text_segment,
)
from pipeline.ingest.streams import json_records

__all__ = ["FORMAT", "LlavaOptions", "read_file"]

ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "system": "system"}


@dataclass(frozen=True)
class LlavaOptions(ImageOptions):
    """Options of `format: llava`."""

    image_field: str = option(
        "image", "record field with the image path or list of paths (absent, null or [] for text-only)"
    )
    conversations_field: str = option("conversations", "record field with the list of turns")
    placeholder: str = option("<image>", "the image placeholder in turn text")


def read_file(config: SourceConfig, file: str) -> Generator[Row, None, None]:
    """One sample or reject row per record of `file`, in file order."""
    records = json_records(config.root, file, config.options.max_record_bytes)
    yield from record_rows(config, file, records, partial(_sample, config))


def _sample(config: SourceConfig, key: str, record: object) -> Row:
    options = config.options
    assert isinstance(options, LlavaOptions)
    if not isinstance(record, dict):
        raise Rejected("read", "malformed_record", f"a record must be a JSON object, not {record!r:.80}")
    paths = _image_paths(record.get(options.image_field), options.image_field)
    turns = _turns(record.get(options.conversations_field), options.conversations_field)
    placeholder = options.placeholder
    placeholders = sum(text.count(placeholder) for _, text in turns)
    if paths and not placeholders:
        first_user = next((t for t, (role, _) in enumerate(turns) if role == "user"), None)
        if first_user is None:
            raise Rejected(
                "sample", "placeholder_mismatch", f"{len(paths)} image(s), no placeholder and no user turn"
            )
        role, text = turns[first_user]
        turns[first_user] = (role, f"{placeholder}\n" * len(paths) + text)
    elif placeholders != len(paths):
        raise Rejected(
            "sample",
            "placeholder_mismatch",
            f"{placeholders} {placeholder} placeholder(s) for {len(paths)} image(s)",
        )

    content = []
    image_index = 0
    for turn, (role, text) in enumerate(turns):
        pieces = text.split(placeholder)
        if len(pieces) > 1 and role != "user":
            raise Rejected(
                "sample",
                "placeholder_mismatch",
                f"turn {turn} ({role}) has a placeholder; images go in user turns",
            )
        for number, piece in enumerate(pieces):
            if number:
                content.append(image_segment(image_index, turn=turn, role=role))
                image_index += 1
            if piece or text == "":  # an empty turn keeps one empty segment: the turn itself counts
                content.append(text_segment(piece, turn=turn, role=role))
    images = [load_image(config, path) for path in paths]
    meta = {
        name: value
        for name, value in record.items()
        if name not in (options.image_field, options.conversations_field)
    }
    return sample_row(config, key, "conversation", content, images, meta=meta)


def _image_paths(value: object, field: str) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [image_path(value, field)]
    if isinstance(value, list):
        return [image_path(item, f"{field}[{number}]") for number, item in enumerate(value)]
    raise Rejected("read", "bad_field", f"{field} must be a path or a list of paths, not {value!r:.80}")


def _turns(value: object, field: str) -> list[tuple[str, str]]:
    """(role, text) per turn, with roles mapped and text checked (blank text is allowed)."""
    if value is None:
        raise Rejected("read", "missing_field", f"{field} is missing")
    if not isinstance(value, list):
        raise Rejected("read", "bad_field", f"{field} must be a list of turns, not {value!r:.80}")
    if not value:
        raise Rejected("sample", "no_content", f"{field} is empty")
    turns = []
    for number, turn in enumerate(value):
        what = f"{field}[{number}]"
        if not isinstance(turn, dict):
            raise Rejected(
                "read", "bad_field", f"{what} must be an object with from and value, not {turn!r:.80}"
            )
        speaker = turn.get("from")
        if speaker is None:
            raise Rejected("read", "missing_field", f"{what}.from is missing")
        role = ROLES.get(speaker) if isinstance(speaker, str) else None
        if role is None:
            raise Rejected(
                "read", "bad_field", f"{what}.from is {speaker!r:.40}; expected one of {', '.join(ROLES)}"
            )
        turns.append((role, text_field(turn.get("value"), f"{what}.value")))
    return turns


FORMAT = Format(
    name="llava",
    options=LlavaOptions,
    suffixes=(".json", ".jsonl"),
    uses_images_root=True,
    read_file=read_file,
)
