"""Templates: how a sample of each kind becomes the official DeepSeek-VL2 ("deepseek" format) stream of text,
special tokens and images, before tokenization.

Two renderings exist (the README's "Templates and labels" section shows them with their ids):

- **chat**, as the official processor's `process_one` (training path) builds it: bos; a system text, if any,
  stripped and on its own (not trained on, no separator after it); per user turn the text
  `<|User|>: {content}\\n\\n<|Assistant|>:` (`<|User|>:<|Assistant|>:` when the turn is empty); per assistant
  turn `{content}` followed by eos (just the eos when it is empty). Every turn's content is stripped at both
  ends; an answer is tokenized on its own, with no leading space. Only answers and their eos are trained on.
  A source's configured `system` text is rendered exactly as a system message for samples that carry none
  (the official `system_prompt=` argument never reaches the ids; a system message does).
- **plain** (pretraining documents): bos, the segments in order, eos. Consecutive text segments are joined by
  one `\\n`; an image sits in place with no whitespace added; the whole document is stripped at both ends.
  Text and eos are trained on.

Per kind (a sample whose segments carry roles is always rendered as the conversation it is):

- caption: chat (default) `<image>\\n{caption prompt}` → the caption; or plain `<image>{caption}`.
- conversation: chat, as given.
- interleaved, text: plain.
- ocr: chat (default) `<image>\\n{ocr prompt}` → the transcription; with regions (lines or words with boxes)
  `<image>\\n{ocr_grounded prompt}` → one `<|ref|>{text}<|/ref|><|det|>[[x1, y1, x2, y2]]<|/det|>` per region,
  one per line; or plain `<image>{transcription}`.
- grounding: chat. When every region has a position in the text, a grounded caption:
  `<image>\\n{grounded_caption prompt}` (it opens with `<|grounding|>`) → the text with each phrase replaced
  by its ref/det span; otherwise one turn per referring expression: `<image>\\nLocate <|ref|>{query}<|/ref|>
  in the given image.` → `<|ref|>{query}<|/ref|><|det|>[[...]]<|/det|>`. A grounded conversation (roles
  given) gets the spans at the regions' positions and `<|grounding|>` at the start of its first user text.

Which rendering a kind gets, and the prompt lists, are configurable per source (:class:`TemplateConfig`);
prompts come from lists shipped in `pipeline/data/prompts.json` and are chosen deterministically from the
`sample_id`. Grounding boxes are written as `<|det|>[[x1, y1, x2, y2], ...]<|/det|>` (several boxes of one
phrase in one list) in integers 0..999 relative to the original image (:func:`quantize`).

Special-token strings in data text: the grounding markup (`<|ref|>`, `<|/ref|>`, `<|det|>`, `<|/det|>`,
`<|grounding|>`) becomes those tokens, as in the official processor; an `<image>` string inside text is an
error (images are segments of the sample); every other special-token string (`<|User|>`, `<|Assistant|>`,
`<｜end▁of▁sentence｜>`, ...) stays ordinary text, so data cannot inject role or control tokens (see
`pipeline.tokenizer`). The output, :class:`Rendered`, is a list of :class:`Block`; each holds parts that are
ordinary text (`str`), special tokens (:class:`Token`, a `str` subclass holding a value of `SPECIAL_STRINGS`)
or images (`int`, an index into the sample's `images`).
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, NamedTuple

from pipeline.tokenizer import GROUNDING_STRINGS, SPECIAL_STRINGS

__all__ = [
    "KIND_RENDERS",
    "PROMPTS_FILE",
    "PROMPT_LISTS",
    "RENDERS",
    "Block",
    "Part",
    "Rendered",
    "TemplateConfig",
    "TemplateError",
    "Token",
    "box_pixels",
    "choose_prompt",
    "format_boxes",
    "load_prompts",
    "quantize",
    "quantize_box",
    "render",
    "render_document",
]

RENDERS = ("chat", "plain")
KIND_RENDERS: dict[str, tuple[str, ...]] = {
    "caption": ("chat", "plain"),
    "conversation": ("chat",),
    "interleaved": ("plain",),
    "ocr": ("chat", "plain"),
    "grounding": ("chat",),
    "text": ("plain",),
}
"""The renderings each kind allows; the first is its default."""

PROMPTS_FILE = Path(__file__).resolve().parent / "data" / "prompts.json"
PROMPT_LISTS = ("caption", "ocr", "ocr_grounded", "grounded_caption", "referring")
"""caption: asks for a caption (chat captions). ocr: asks for the text in the image. ocr_grounded: the same,
with positions (OCR samples with line or word boxes). grounded_caption: asks for a description with boxes
(grounding samples whose phrases have positions in a caption). referring: one turn per referring expression;
`{query}` stands for the expression."""

Part = str | int
"""Ordinary text (`str`), a special token (`Token`), or an image (index into the sample's `images`)."""

_IN_TEXT = [SPECIAL_STRINGS["image"], *GROUNDING_STRINGS.values()]
_SPECIAL_SPLIT = re.compile("(" + "|".join(re.escape(s) for s in _IN_TEXT) + ")")
_IMAGE = SPECIAL_STRINGS["image"]
_REF, _REF_END = SPECIAL_STRINGS["ref_start"], SPECIAL_STRINGS["ref_end"]
_DET, _DET_END = SPECIAL_STRINGS["det_start"], SPECIAL_STRINGS["det_end"]
_GROUNDING = SPECIAL_STRINGS["grounding"]


class Token(str):
    """A special token in a block's parts, spelled by its string (a value of `SPECIAL_STRINGS`). Its type,
    not its spelling, makes it special: text that merely spells one is a plain `str`."""


_USER_TOKEN, _ASSISTANT_TOKEN = Token(SPECIAL_STRINGS["user"]), Token(SPECIAL_STRINGS["assistant"])


class TemplateError(ValueError):
    """A sample that cannot be rendered; `reason` is a reject code of `schemas.reject`."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


class Block(NamedTuple):
    """A run of the token stream: a user turn (`loss` False), an answer or a whole plain document (`loss`
    True). `eos`: an eos follows the block (answers and documents)."""

    parts: tuple[Part, ...]
    loss: bool
    eos: bool


class Rendered(NamedTuple):
    """A rendered sample: bos, then `blocks` in order. `render` is "chat" or "plain"; `images` lists the
    sample's image indices in order of appearance."""

    blocks: tuple[Block, ...]
    render: str
    images: tuple[int, ...]


@dataclass(frozen=True)
class TemplateConfig:
    """How one source's samples are rendered.

    - `render`: "chat" or "plain" for the kinds that allow both (caption, ocr); None keeps each kind's default
      (the first of `KIND_RENDERS[kind]`). Kinds with one rendering ignore it.
    - `prompts`: prompt lists replacing the shipped ones, by name (`PROMPT_LISTS`).
    - `system`: system text for chat renderings of samples that carry none.
    """

    render: str | None = None
    prompts: Mapping[str, Sequence[str]] | None = None
    system: str = ""
    _lists: dict[str, tuple[str, ...]] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.render is not None and self.render not in RENDERS:
            raise ValueError(f"render={self.render!r} is not one of {', '.join(RENDERS)}")
        if not isinstance(self.system, str):
            raise ValueError(f"system must be a string, got {self.system!r}")
        lists = dict(load_prompts())
        for name, prompts in (self.prompts or {}).items():
            lists[name] = _checked_prompts(name, prompts, "prompts")
        object.__setattr__(self, "_lists", lists)

    def render_for(self, kind: str) -> str:
        """The rendering of samples of `kind` under this config."""
        choices = KIND_RENDERS[kind]
        return self.render if self.render in choices else choices[0]

    def prompt_list(self, name: str) -> tuple[str, ...]:
        """The prompts of list `name` (the shipped ones unless replaced)."""
        return self._lists[name]


@lru_cache(maxsize=8)
def load_prompts(path: str | Path = PROMPTS_FILE) -> dict[str, tuple[str, ...]]:
    """Prompt lists from a JSON object {name: [prompt, ...]} holding every name of `PROMPT_LISTS`."""
    data = json.loads(Path(path).read_text(encoding="utf-8"))
    if not isinstance(data, dict):
        raise ValueError(f"{path}: prompt lists must be a JSON object")
    missing = [name for name in PROMPT_LISTS if name not in data]
    if missing:
        raise ValueError(f"{path}: prompt list {missing[0]!r} is missing")
    return {name: _checked_prompts(name, prompts, str(path)) for name, prompts in data.items()}


def _checked_prompts(name: str, prompts: Any, where: str) -> tuple[str, ...]:
    if name not in PROMPT_LISTS:
        raise ValueError(f"{where}: unknown prompt list {name!r}; known: {', '.join(PROMPT_LISTS)}")
    if isinstance(prompts, str) or not isinstance(prompts, Sequence) or not prompts:
        raise ValueError(f"{where}.{name} must be a non-empty list of prompts")
    for prompt in prompts:
        if not isinstance(prompt, str) or not prompt.strip():
            raise ValueError(f"{where}.{name}: every prompt must be non-empty text, got {prompt!r}")
        if _IMAGE in prompt:
            raise ValueError(
                f"{where}.{name}: a prompt may not hold {_IMAGE} (images are placed by the template)"
            )
        if name == "referring" and prompt.count("{query}") != 1:
            raise ValueError(f"{where}.{name}: every prompt must hold {{query}} exactly once, got {prompt!r}")
    return tuple(prompts)


def choose_prompt(prompts: Sequence[str], sample_id: str, name: str) -> str:
    """The prompt of list `name` for a sample: chosen by sha256(name NUL sample_id), so the same sample gets
    the same prompt on every run and machine, and different lists choose independently."""
    digest = hashlib.sha256(f"{name}\0{sample_id}".encode()).digest()
    return prompts[int.from_bytes(digest[:8], "big") % len(prompts)]


# ----------------------------------------------------------------------------------------------------
# grounding boxes


def quantize(value: float, size: int) -> int:
    """A pixel coordinate as an integer 0..999 relative to `size`: clamp(round(999 · value / size), 0, 999),
    in float64 with Python's round (half to even)."""
    return min(max(round(999.0 * float(value) / size), 0), 999)


def quantize_box(box: Sequence[float], width: int, height: int) -> list[int]:
    """[x1, y1, x2, y2] in pixels of a `width` × `height` image → integers 0..999; x by width, y by height."""
    x1, y1, x2, y2 = box
    return [quantize(x1, width), quantize(y1, height), quantize(x2, width), quantize(y2, height)]


def box_pixels(box: Sequence[int], width: int, height: int) -> list[int]:
    """The official inverse used for inspection: int(v / 999 · size) for each 0..999 coordinate."""
    x1, y1, x2, y2 = box
    return [int(x1 / 999 * width), int(y1 / 999 * height), int(x2 / 999 * width), int(y2 / 999 * height)]


def format_boxes(boxes: Sequence[Sequence[float]], width: int, height: int) -> str:
    """Pixel boxes as written in a det span: `[[x1, y1, x2, y2], [x1, y1, x2, y2]]` in 0..999 units."""
    return "[" + ", ".join("[{}, {}, {}, {}]".format(*quantize_box(b, width, height)) for b in boxes) + "]"


def _det_span(phrase: str, boxes: Sequence[Sequence[float]], width: int, height: int) -> str:
    return f"{_REF}{phrase}{_REF_END}{_DET}{format_boxes(boxes, width, height)}{_DET_END}"


# ----------------------------------------------------------------------------------------------------
# rendering


def render(sample: Mapping[str, Any], config: TemplateConfig | None = None) -> Rendered:
    """Render one `schemas.sample` row (as a dict) by its kind; raises :class:`TemplateError` (with a reject
    reason code) for a sample that cannot be rendered."""
    config = config or _DEFAULT_CONFIG
    kind = sample["kind"]
    if kind not in KIND_RENDERS:
        raise TemplateError("bad_field", f"unknown kind {kind!r}; known: {', '.join(KIND_RENDERS)}")
    content = sample["content"]
    images = _check_images(content, len(sample["images"]))
    how = config.render_for(kind)
    if how == "plain":
        blocks: tuple[Block, ...] = (render_document(content),)
    elif any(segment["role"] is not None for segment in content):
        if kind == "grounding":
            content = _ground_conversation(sample)
        blocks = _chat(_turns(content), config.system)
    elif kind == "conversation":
        raise TemplateError("bad_field", "a conversation whose segments carry no role")
    else:
        blocks = _chat(_generated_turns(sample, config), config.system)
    return Rendered(blocks=blocks, render=how, images=images)


def render_document(content: Sequence[Mapping[str, Any]]) -> Block:
    """The plain rendering of content segments (roles ignored) as one trained block followed by eos."""
    chunks: list[Part] = []
    previous_text = False
    for segment in content:
        if segment["type"] == "text":
            if previous_text:
                chunks.append("\n")
            chunks.append(segment["text"])
            previous_text = True
        else:
            chunks.append(segment["image"])
            previous_text = False
    parts = _finish(_strip(chunks))
    if not parts:
        raise TemplateError("empty_text", "the document is empty")
    return Block(parts=parts, loss=True, eos=True)


_DEFAULT_CONFIG = TemplateConfig()


def _check_images(content: Sequence[Mapping[str, Any]], count: int) -> tuple[int, ...]:
    order = tuple(segment["image"] for segment in content if segment["type"] == "image")
    if sorted(order) != list(range(count)):
        raise TemplateError(
            "placeholder_mismatch",
            f"image segments {list(order)} do not use each of the {count} images exactly once",
        )
    return order


def _turns(content: Sequence[Mapping[str, Any]]) -> list[tuple[str, list[Part]]]:
    """Consecutive segments of one turn number, as (role, parts)."""
    turns: list[tuple[str, list[Part]]] = []
    current: int | None = None
    for segment in content:
        role = segment["role"]
        if role not in ("user", "assistant", "system"):
            raise TemplateError("bad_field", f"turn {segment['turn']} has role {role!r}")
        if segment["turn"] != current:
            turns.append((role, []))
            current = segment["turn"]
        elif turns[-1][0] != role:
            raise TemplateError("bad_field", f"turn {current} mixes roles {turns[-1][0]!r} and {role!r}")
        turns[-1][1].append(segment["text"] if segment["type"] == "text" else segment["image"])
    return turns


def _chat(turns: Sequence[tuple[str, Sequence[Part]]], default_system: str) -> tuple[Block, ...]:
    """The official processor's training stream of a conversation (see the module docstring)."""
    system = default_system.strip()
    if turns and turns[0][0] == "system":
        if _images(turns[0][1]):
            raise TemplateError("bad_field", "a system turn holds an image")
        system = "".join(p for p in _strip(turns[0][1]) if isinstance(p, str))
        turns = turns[1:]
    blocks: list[Block] = []
    if system:
        blocks.append(Block(parts=_finish([system]), loss=False, eos=False))
    answered = False
    for role, raw in turns:
        content = _strip(raw)
        if role == "user":
            chunks: list[Part] = (
                [_USER_TOKEN, ": ", *content, "\n\n", _ASSISTANT_TOKEN, ":"]
                if content
                else [_USER_TOKEN, ":", _ASSISTANT_TOKEN, ":"]
            )
            blocks.append(Block(parts=_finish(chunks), loss=False, eos=False))
        elif role == "assistant":
            if _images(content):
                raise TemplateError("bad_field", "an assistant turn holds an image")
            blocks.append(Block(parts=_finish(content), loss=True, eos=True))
            answered = True
        else:
            raise TemplateError("bad_field", "a system turn after the first turn")
    if not answered:
        raise TemplateError("no_loss_tokens", "the conversation has no assistant turn")
    return tuple(blocks)


def _generated_turns(sample: Mapping[str, Any], config: TemplateConfig) -> list[tuple[str, list[Part]]]:
    """User/assistant turns made from a document-style sample (caption, ocr, grounding) with prompts."""
    kind, sample_id, content = sample["kind"], sample["sample_id"], sample["content"]
    images = [segment["image"] for segment in content if segment["type"] == "image"]
    texts = [segment["text"] for segment in content if segment["type"] == "text"]
    regions = sample["regions"]
    lead: list[Part] = [part for index in images for part in (index, "\n")]

    def prompt(name: str) -> str:
        return choose_prompt(config.prompt_list(name), sample_id, name)

    if kind == "caption":
        return [("user", [*lead, prompt("caption")]), ("assistant", ["\n".join(texts)])]
    if kind == "ocr":
        if not regions:
            return [("user", [*lead, prompt("ocr")]), ("assistant", ["\n".join(texts)])]
        lines = [_det_span(r["phrase"], r["boxes"], *_image_size(sample, r["image"])) for r in regions]
        return [("user", [*lead, prompt("ocr_grounded")]), ("assistant", ["\n".join(lines)])]
    # grounding
    if not regions:
        raise TemplateError("missing_field", "a grounding sample without regions")
    if texts and all(r["segment"] is not None for r in regions):
        answer = "\n".join(s["text"] for s in _insert_spans(sample) if s["type"] == "text")
        return [("user", [*lead, prompt("grounded_caption")]), ("assistant", [answer])]
    template = prompt("referring")
    turns: list[tuple[str, list[Part]]] = []
    for phrase, image, boxes in _merged_by_phrase(regions):
        first = lead if not turns else []
        turns.append(("user", [*first, template.replace("{query}", phrase)]))
        turns.append(("assistant", [_det_span(phrase, boxes, *_image_size(sample, image))]))
    return turns


def _merged_by_phrase(regions: Sequence[Mapping[str, Any]]) -> list[tuple[str, int, list]]:
    """Regions in order, those with the same phrase on the same image joined into one list of boxes."""
    merged: dict[tuple[str, int], list] = {}
    for region in regions:
        merged.setdefault((region["phrase"], region["image"]), []).extend(region["boxes"])
    return [(phrase, image, boxes) for (phrase, image), boxes in merged.items()]


def _ground_conversation(sample: Mapping[str, Any]) -> list[dict[str, Any]]:
    """A grounded conversation: ref/det spans at the regions' positions, `<|grounding|>` opening the first
    user text. Regions without a position are not written into the text (with none positioned, the
    conversation is left as it is)."""
    content = _insert_spans(sample)
    if all(region["segment"] is None for region in sample["regions"]):
        return content
    for segment in content:
        if segment["role"] == "user" and segment["type"] == "text":
            text = segment["text"]
            lead = len(text) - len(text.lstrip())
            segment["text"] = text[:lead] + _GROUNDING + text[lead:]
            break
    return content


def _insert_spans(sample: Mapping[str, Any]) -> list[dict[str, Any]]:
    """A copy of the content with `<|ref|>phrase<|/ref|><|det|>[[...]]<|/det|>` at every positioned region.

    Regions with the same span (segment, start, end) share one det list. Where spans overlap, the one that
    starts first (the longer on a tie) is kept and the others are left out, so the text stays well formed.
    """
    content = [dict(segment) for segment in sample["content"]]
    spans: dict[tuple[int, int, int], dict[str, Any]] = {}
    for region in sample["regions"]:
        index, start, end = region["segment"], region["start"], region["end"]
        if index is None:
            continue
        if not 0 <= index < len(content) or content[index]["type"] != "text":
            raise TemplateError(
                "bad_field", f"region {region['phrase']!r} points at segment {index}, not a text"
            )
        text = content[index]["text"]
        if start is None or end is None or not 0 <= start < end <= len(text):
            raise TemplateError(
                "bad_field", f"region {region['phrase']!r} has span {start}..{end} outside its text"
            )
        entry = spans.setdefault((index, start, end), {"image": region["image"], "boxes": []})
        if entry["image"] != region["image"]:
            raise TemplateError("bad_field", f"regions on one span {start}..{end} point at different images")
        entry["boxes"].extend(region["boxes"])
    kept: dict[int, list[tuple[int, int, dict[str, Any]]]] = {}
    for (index, start, end), entry in sorted(
        spans.items(), key=lambda item: (item[0][0], item[0][1], -item[0][2])
    ):
        chosen = kept.setdefault(index, [])
        if chosen and start < chosen[-1][1]:
            continue
        chosen.append((start, end, entry))
    for index, chosen in kept.items():
        text = content[index]["text"]
        pieces: list[str] = []
        cursor = 0
        for start, end, entry in chosen:
            width, height = _image_size(sample, entry["image"])
            pieces += [text[cursor:start], _det_span(text[start:end], entry["boxes"], width, height)]
            cursor = end
        pieces.append(text[cursor:])
        content[index]["text"] = "".join(pieces)
    return content


def _image_size(sample: Mapping[str, Any], index: int) -> tuple[int, int]:
    images = sample["images"]
    if not 0 <= index < len(images):
        raise TemplateError("bad_field", f"a region points at image {index}; the sample has {len(images)}")
    width, height = images[index]["width"], images[index]["height"]
    if width < 1 or height < 1:
        raise TemplateError("zero_size_image", f"image {index} is {width}×{height}")
    return width, height


def _images(parts: Sequence[Part]) -> list[int]:
    return [part for part in parts if isinstance(part, int)]


def _strip(parts: Sequence[Part]) -> list[Part]:
    """`str.strip()` of the text the parts spell, images counting as non-space."""
    out = list(parts)
    while out and isinstance(out[0], str):
        text = out[0].lstrip()
        if text:
            out[0] = text
            break
        out.pop(0)
    while out and isinstance(out[-1], str):
        text = out[-1].rstrip()
        if text:
            out[-1] = text
            break
        out.pop()
    return out


def _finish(chunks: Sequence[Part]) -> tuple[Part, ...]:
    """Join adjacent text, then cut it at special-token strings: text parts are maximal, as in the official
    processor, which tokenizes the whole string between two special tokens or images at once."""
    parts: list[Part] = []
    pending: list[str] = []
    for chunk in chunks:
        if isinstance(chunk, str) and type(chunk) is not Token:
            pending.append(chunk)
            continue
        if pending:
            _cut_text("".join(pending), parts)
            pending = []
        parts.append(chunk)
    if pending:
        _cut_text("".join(pending), parts)
    return tuple(parts)


def _cut_text(text: str, parts: list[Part]) -> None:
    """Append `text` to `parts` cut at special-token strings, leaving out empty pieces."""
    if "<" not in text:  # no grounding or image string in it: no need for the regular expression
        if text:
            parts.append(text)
        return
    for index, piece in enumerate(_SPECIAL_SPLIT.split(text)):
        if index % 2:  # the separators the split kept
            if piece == _IMAGE:
                raise TemplateError("placeholder_mismatch", f"text holds an {_IMAGE} string")
            parts.append(Token(piece))
        elif piece:
            parts.append(piece)
