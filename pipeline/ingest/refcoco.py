"""Reader for RefCOCO / RefCOCO+ / RefCOCOg in the REFER layout (`format: refcoco`): one `grounding`
sample per referring object.

`path` is the dataset folder (or its refs file): `instances.json` (COCO instances: `images` [{id,
file_name, width, height}], `annotations` [{id, image_id, bbox [x, y, w, h]}]) and the refs file
`refs(<split_by>).p`, or the same list as `refs(<split_by>).json`. With `split_by` unset the folder
must hold exactly one refs file. `instances.json` is read from the refs file's folder; image files
are its `file_name` under `images_root` (never the ref's own `file_name`).

The `.p` file is a pickle. It is loaded by a restricted unpickler that admits only what plain values
need (dict, list, tuple, set, str, int, float, bool, None) and refuses every reference to a class or
function (the only way a pickle can run code), so nothing in the file is ever executed: such a file,
like any unreadable one, is one reject row (`unreadable_file`) whose detail names what it referred
to.

A ref is `{ref_id, image_id, ann_id, split, sentences: [{raw, sent, ...}], category_id, ...}`; every
ref of the chosen `split` (all refs when unset) is one record; refs of other splits are not records
of this source. The sample: the image, then one region per distinct sentence (`raw`, else `sent`)
with the box of the ref's annotation (`[x, y, x + w, y + h]`, clipped to the image), or the boxes of
each annotation when `ann_id` is a list (gRefCOCO); regions have no position (`segment` null), so each
sentence becomes one referring-expression turn. Key: `<refs file relative to the source root>#<index
in the refs list>`. Meta: the ref's fields except `sentences` and `file_name`.

Checks: the ref an object (`malformed_record`); `image_id` naming exactly one image and `ann_id` (an
id or a non-empty list of ids) naming annotations of that image (`missing_field`, `bad_field`); a
sentence that is valid text (`bad_field`, `bad_text`; blank ones are skipped, none left is
`empty_text`); boxes four finite numbers (`bad_field`) with an area (`degenerate_box`) overlapping
the image (`box_outside_image`); the image file and its declared size (see `checks`; each image is
read once for consecutive refs of it).
"""

from __future__ import annotations

import io
import pickle
import posixpath
import re
from collections.abc import Generator
from dataclasses import dataclass

from pipeline.ingest.base import ConfigError, Format, ImageOptions, Row, SourceConfig, option
from pipeline.ingest.checks import (
    CheckedImage,
    FileUnreadable,
    Rejected,
    clip_box,
    file_reject_row,
    image_segment,
    is_finite_number,
    load_entry_image,
    reject_row,
    sample_row,
    text_field,
)
from pipeline.ingest.streams import json_object, parse_json, read_whole

__all__ = ["FORMAT", "RefCocoOptions", "load_plain_pickle", "read_file"]

REFS_NAME = re.compile(r"refs\((.+)\)\.(p|json)")
_PLAIN = (dict, list, tuple, set, frozenset, str, int, float, bool, type(None))


@dataclass(frozen=True)
class RefCocoOptions(ImageOptions):
    """Options of `format: refcoco`."""

    split_by: str | None = option(
        None, "which refs(<split_by>).p or .json to read (unc, google, umd, ...); null: the only one there"
    )
    split: str | None = option(None, "read only refs of this split (train, val, testA, ...); null: all")


class _PlainUnpickler(pickle.Unpickler):
    """An unpickler that refuses every class and function reference (so nothing can be called)."""

    def find_class(self, module: str, name: str) -> object:
        raise pickle.UnpicklingError(
            f"the pickle refers to {module}.{name}; only plain containers, str, int, float, bool and None "
            "are admitted, and nothing was executed"
        )


def load_plain_pickle(data: bytes) -> object:
    """The plain value pickled in `data`, loaded without running anything (`FileUnreadable` for a
    pickle that refers to any class or function, or that cannot be read)."""
    try:
        value = _PlainUnpickler(io.BytesIO(data), encoding="utf-8", errors="surrogateescape").load()
    except Exception as error:  # a hostile or broken pickle raises many types; none of them is ours
        raise FileUnreadable(f"not a pickle of plain values: {type(error).__name__}: {error}") from None
    stack = [value]
    while stack:
        item = stack.pop()
        if not isinstance(item, _PLAIN):
            raise FileUnreadable(f"the pickle holds a {type(item).__name__}, not only plain values")
        if isinstance(item, dict):
            stack += [*item.keys(), *item.values()]
        elif isinstance(item, list | tuple | set | frozenset):
            stack += item
    return value


def read_file(config: SourceConfig, file: str) -> Generator[Row, None, None]:
    """One sample or reject row per ref of the chosen split in the refs file `file`, in file order."""
    options = config.options
    assert isinstance(options, RefCocoOptions)
    try:
        refs = _load_refs(config, file)
        instances = json_object(config.root, posixpath.join(posixpath.dirname(file), "instances.json"))
        images, annotations = instances.get("images"), instances.get("annotations")
        if not isinstance(images, list) or not isinstance(annotations, list):
            raise FileUnreadable("instances.json: images and annotations must be lists")
    except FileUnreadable as problem:
        yield file_reject_row(config, file, problem)
        return
    entries = _by_id(images)
    boxes = _by_id(annotations)
    cached: tuple[object, CheckedImage | Rejected] | None = None  # the last image read
    for index, ref in enumerate(refs):
        if options.split is not None and isinstance(ref, dict) and ref.get("split") != options.split:
            continue
        key = f"{file}#{index}"
        try:
            if not isinstance(ref, dict):
                raise Rejected("read", "malformed_record", f"a ref must be an object, not {ref!r:.80}")
            entry = _one(entries, ref.get("image_id"), "image_id", "images")
            if cached is None or cached[0] != entry["id"]:
                cached = (entry["id"], _image(config, entry))
            image = cached[1]
            if isinstance(image, Rejected):
                raise image
            row = _sample(config, key, ref, image, boxes, entry["id"])
        except Rejected as rejected:
            row = reject_row(config, key, rejected)
        yield row


def _load_refs(config: SourceConfig, file: str) -> list:
    data = read_whole(config.root, file)
    refs = load_plain_pickle(data) if file.endswith(".p") else parse_json(data)
    if not isinstance(refs, list):
        raise FileUnreadable(f"the refs must be a list, not {type(refs).__name__}")
    return refs


def _is_id(value: object) -> bool:
    return isinstance(value, int | str) and not isinstance(value, bool)


def _by_id(entries: list) -> dict[object, list[dict]]:
    found: dict[object, list[dict]] = {}
    for entry in entries:
        if isinstance(entry, dict) and _is_id(entry.get("id")):
            found.setdefault(entry["id"], []).append(entry)
    return found


def _one(entries: dict[object, list[dict]], value: object, what: str, where: str) -> dict:
    if value is None:
        raise Rejected("read", "missing_field", f"{what} is missing")
    if not _is_id(value):
        raise Rejected("read", "bad_field", f"{what} {value!r:.40} is not an id")
    found = entries.get(value, [])
    if len(found) != 1:
        raise Rejected(
            "read", "bad_field", f"{what} {value!r:.40} matches {len(found)} {where} of instances.json"
        )
    return found[0]


def _image(config: SourceConfig, entry: dict) -> CheckedImage | Rejected:
    try:
        return load_entry_image(config, entry, f"image {entry['id']!r:.40}", separator=": ")
    except Rejected as rejected:
        return rejected


def _sample(
    config: SourceConfig, key: str, ref: dict, image: CheckedImage, annotations: dict, image_id: object
) -> Row:
    ann_ids = ref.get("ann_id")
    if isinstance(ann_ids, list) and not ann_ids:
        raise Rejected("read", "missing_field", "ann_id is an empty list (an expression without a target)")
    pixels = []
    for ann_id in ann_ids if isinstance(ann_ids, list) else [ann_ids]:
        annotation = _one(annotations, ann_id, "ann_id", "annotations")
        if annotation.get("image_id") != image_id:
            raise Rejected("read", "bad_field", f"annotation {ann_id!r:.40} is on another image")
        box = annotation.get("bbox")
        if isinstance(box, list) and len(box) == 4 and all(is_finite_number(v) for v in box):
            x, y, w, h = (float(v) for v in box)
            box = [x, y, x + w, y + h]
        width, height = image.row["width"], image.row["height"]
        pixels.append(clip_box(box, width, height, f"the box of annotation {ann_id!r:.40}"))
    sentences = ref.get("sentences")
    if not isinstance(sentences, list):
        raise Rejected(
            "read", "missing_field" if sentences is None else "bad_field", "sentences is not a list"
        )
    phrases: list[str] = []
    for index, sentence in enumerate(sentences):
        if not isinstance(sentence, dict):
            raise Rejected("read", "bad_field", f"sentences[{index}] is not an object")
        field = "raw" if isinstance(sentence.get("raw"), str) and sentence["raw"].strip() else "sent"
        phrase = text_field(sentence.get(field), f"sentences[{index}].{field}").strip()
        if phrase and phrase not in phrases:
            phrases.append(phrase)
    if not phrases:
        raise Rejected("sample", "empty_text", "the ref has no sentence")
    regions = [
        {"phrase": phrase, "image": 0, "boxes": pixels, "segment": None, "start": None, "end": None}
        for phrase in phrases
    ]
    meta = {name: value for name, value in ref.items() if name not in ("sentences", "file_name")}
    return sample_row(config, key, "grounding", [image_segment(0)], [image], regions=regions, meta=meta)


def _select_files(config: SourceConfig, files: list[str]) -> list[str]:
    """The one refs file to read (`split_by`, or the only one there); `ConfigError` otherwise."""
    options = config.options
    assert isinstance(options, RefCocoOptions)
    refs = [file for file in files if REFS_NAME.fullmatch(posixpath.basename(file))]
    if options.split_by is not None:
        refs = [
            file
            for file in refs
            if REFS_NAME.fullmatch(posixpath.basename(file)).group(1) == options.split_by
        ]
    if len(refs) == 1:
        return refs
    found = ", ".join(refs) or "none"
    if options.split_by is not None:
        raise ConfigError(
            f"split_by: expected one refs({options.split_by}).p or refs({options.split_by}).json under "
            f"path, found {found}"
        )
    raise ConfigError(
        f"split_by: required unless path holds exactly one refs(*).p or refs(*).json; found {found}"
    )


FORMAT = Format(
    name="refcoco",
    options=RefCocoOptions,
    suffixes=(".p", ".json"),
    uses_images_root=True,
    read_file=read_file,
    select_files=_select_files,
)
