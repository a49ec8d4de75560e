"""Reader for conversations (`format: llava`): the LLaVA / ShareGPT layout and the messages layout
(LLaMA-Factory, ms-swift, OpenAI), detected per record, from a JSON array, JSON Lines or Parquet.

- LLaVA / ShareGPT: `{"id": ..., "image": "a.jpg" | ["a.jpg", ...], "conversations": [{"from": "human",
  "value": "<image>\\nWhat is this?"}, {"from": "gpt", "value": "A cat."}, ...]}`.
- Messages: `{"messages": [{"role": "user", "content": "<image>What is this?"}, {"role": "assistant",
  "content": "A cat."}], "images": ["a.jpg"]}`; `content` is a string, or a list of parts
  `{"type": "text", "text": ...}` and `{"type": "image"}` (each image part a placeholder, in order; an
  image part may carry its own `image` when the record has no image list).
- Detection: the turns are `conversations_field`, else `conversations`, else `messages`; a turn's
  speaker is `role_field`, else `from`, else `role`; its text `content_field`, else `value`, else
  `content`; the images `image_field`, else `image` or `images` (both given: `bad_field`). Each image
  is a path (relative to `images_root`, or absolute and then read only when its real path lies inside
  `images_root`) or, as Hugging Face stores images in Parquet, `{bytes, path}` (the bytes used when
  present). The image field is optional (absent, null or `[]`: a text-only conversation, still kind
  `conversation`). Parquet files (`.parquet`) are read in record batches, each row a record.
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
  records). Meta: every other field of the record (`id` included). JSON files may be compressed or in
  a `.zip` (see `pipeline.ingest.containers`).
"""

from __future__ import annotations

from collections.abc import Generator
from dataclasses import dataclass
from functools import partial

from pipeline.ingest.base import Format, ImageOptions, Row, SourceConfig, option
from pipeline.ingest.checks import (
    CheckedImage,
    Rejected,
    check_image,
    image_path,
    image_segment,
    load_image,
    record_rows,
    sample_row,
    text_field,
    text_segment,
)
from pipeline.ingest.streams import table_records

__all__ = ["FORMAT", "LlavaOptions", "read_file"]

ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "system": "system"}
TURNS_FIELDS = ("conversations", "messages")
"""Fields tried in order for the turns when `conversations_field` is not set."""
IMAGE_FIELDS = ("image", "images")
"""Fields tried for the images when `image_field` is not set."""


@dataclass(frozen=True)
class LlavaOptions(ImageOptions):
    """Options of `format: llava`."""

    image_field: str | None = option(
        None,
        "record field with the image path, {bytes, path} or a list of them (absent, null or [] for "
        "text-only); null: image or images, whichever the record has",
    )
    conversations_field: str | None = option(
        None,
        "record field with the list of turns; null: conversations, else messages, whichever the record has",
    )
    role_field: str | None = option(
        None, "turn field with the speaker; null: from, else role, whichever the turn has"
    )
    content_field: str | None = option(
        None,
        "turn field with the text (a string, or a list of {type: text|image} parts); null: value, else "
        "content, whichever the turn has",
    )
    placeholder: str = option("<image>", "the image placeholder in turn text")


def read_file(config: SourceConfig, file: str) -> Generator[Row, None, None]:
    """One sample or reject row per record of `file`, in file order."""
    records = table_records(config.root, file, [], config.options.max_record_bytes)
    yield from record_rows(config, file, records, partial(_sample, config))


def _sample(config: SourceConfig, key: str, record: object) -> Row:
    options = config.options
    assert isinstance(options, LlavaOptions)
    if not isinstance(record, dict):
        raise Rejected("read", "malformed_record", f"a record must be a JSON object, not {record!r:.80}")
    turns_field = _turns_field(record, options)
    image_field = _image_field(record, options)
    inline: list[str | tuple[bytes, str | None]] = []  # images that content parts carry themselves
    turns = _turns(record.get(turns_field), turns_field, options, inline)
    sources = _image_sources(record.get(image_field), image_field)
    if inline and sources:
        raise Rejected(
            "read", "bad_field", f"images both in {image_field} and in content parts; give them in one place"
        )
    sources = sources or inline
    placeholder = options.placeholder
    placeholders = sum(text.count(placeholder) for _, text in turns)
    if sources and not placeholders:
        first_user = next((t for t, (role, _) in enumerate(turns) if role == "user"), None)
        if first_user is None:
            raise Rejected(
                "sample", "placeholder_mismatch", f"{len(sources)} image(s), no placeholder and no user turn"
            )
        role, text = turns[first_user]
        turns[first_user] = (role, f"{placeholder}\n" * len(sources) + text)
    elif placeholders != len(sources):
        raise Rejected(
            "sample",
            "placeholder_mismatch",
            f"{placeholders} {placeholder} placeholder(s) for {len(sources)} image(s)",
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
    images = [_load(config, source) for source in sources]
    meta = {name: value for name, value in record.items() if name not in (image_field, turns_field)}
    return sample_row(config, key, "conversation", content, images, meta=meta)


def _turns_field(record: dict, options: LlavaOptions) -> str:
    """The field holding the record's turns: `conversations_field`, else the first of
    `conversations`, `messages` that the record has (`missing_field` when it has neither)."""
    if options.conversations_field is not None:
        return options.conversations_field
    found = next((name for name in TURNS_FIELDS if record.get(name) is not None), None)
    if found is None:
        raise Rejected("read", "missing_field", f"{' or '.join(TURNS_FIELDS)} is missing")
    return found


def _image_field(record: dict, options: LlavaOptions) -> str:
    """The field holding the record's images: `image_field`, else whichever of `image`, `images` the
    record has (`image` when it has neither; `bad_field` when it has both)."""
    if options.image_field is not None:
        return options.image_field
    present = [name for name in IMAGE_FIELDS if record.get(name) not in (None, [])]
    if len(present) > 1:
        raise Rejected("read", "bad_field", f"both {' and '.join(present)} are given; set image_field")
    return present[0] if present else IMAGE_FIELDS[0]


def _image_sources(value: object, field: str) -> list[str | tuple[bytes, str | None]]:
    """The images a record names, in order: a path, a list of them, or (as Hugging Face stores images)
    `{bytes, path}` objects; a path for `load_image`, or (bytes, the path to record or None)."""
    if value is None:
        return []
    if isinstance(value, list):
        return [_image_source(item, f"{field}[{number}]") for number, item in enumerate(value)]
    return [_image_source(value, field)]


def _image_source(value: object, what: str) -> str | tuple[bytes, str | None]:
    if isinstance(value, dict):
        data, path = value.get("bytes"), value.get("path")
        if data is not None:
            if not isinstance(data, bytes):
                raise Rejected("read", "bad_field", f"{what}.bytes is {type(data).__name__}, not bytes")
            try:
                stored = image_path(path, f"{what}.path") if path is not None else None
            except Rejected:
                stored = None  # an absolute cache path or the like: not worth keeping
            return data, stored
        if path is None:
            raise Rejected("read", "missing_field", f"{what} has neither bytes nor path")
        return image_path(path, f"{what}.path", absolute=True)
    if not isinstance(value, str):
        raise Rejected(
            "read",
            "bad_field",
            f"{what} must be a path, {{bytes, path}} or a list of them, not {value!r:.80}",
        )
    return image_path(value, what, absolute=True)


def _load(config: SourceConfig, source: str | tuple[bytes, str | None]) -> CheckedImage:
    if isinstance(source, str):
        return load_image(config, source)
    assert isinstance(config.options, LlavaOptions)
    return check_image(source[0], source[1], config.options)


def _turns(
    value: object, field: str, options: LlavaOptions, inline: list[str | tuple[bytes, str | None]]
) -> list[tuple[str, str]]:
    """(role, text) per turn, with roles mapped and text checked (blank text is allowed); content given
    as parts becomes text with a placeholder per image part, and images that parts carry go to `inline`."""
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
                "read",
                "bad_field",
                f"{what} must be an object with from and value (or role and content), not {turn!r:.80}",
            )
        usual = "role" if field == "messages" else "from"  # the key named when a turn has neither
        role_key = options.role_field or next((key for key in ("from", "role") if key in turn), usual)
        speaker = turn.get(role_key)
        if speaker is None:
            raise Rejected("read", "missing_field", f"{what}.{role_key} is missing")
        role = ROLES.get(speaker) if isinstance(speaker, str) else None
        if role is None:
            raise Rejected(
                "read",
                "bad_field",
                f"{what}.{role_key} is {speaker!r:.40}; expected one of {', '.join(ROLES)}",
            )
        paired = "value" if role_key == "from" else "content"
        content_key = options.content_field or next((k for k in ("value", "content") if k in turn), paired)
        text = turn.get(content_key)
        if isinstance(text, list):
            text = _parts_text(text, f"{what}.{content_key}", options.placeholder, inline)
        turns.append((role, text_field(text, f"{what}.{content_key}")))
    return turns


def _parts_text(
    parts: list, what: str, placeholder: str, inline: list[str | tuple[bytes, str | None]]
) -> str:
    """The text of content given as parts (`{type: text, text}` and `{type: image}`), a placeholder in
    place of each image part; an image part's own `image` (a path or `{bytes, path}`) goes to `inline`."""
    pieces = []
    for number, part in enumerate(parts):
        where = f"{what}[{number}]"
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text":
            pieces.append(text_field(part.get("text"), f"{where}.text"))
        elif kind == "image":
            pieces.append(placeholder)
            if part.get("image") is not None:
                inline.append(_image_source(part["image"], f"{where}.image"))
        else:
            raise Rejected(
                "read",
                "bad_field",
                f"{where} must be a {{type: text}} or {{type: image}} part, not {part!r:.80}",
            )
    return "".join(pieces)


FORMAT = Format(
    name="llava",
    options=LlavaOptions,
    suffixes=(".json", ".jsonl", ".parquet"),
    uses_images_root=True,
    read_file=read_file,
    streamed=(".json", ".jsonl"),
)
