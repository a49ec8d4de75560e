"""Reader for RefCOCO / RefCOCO+ / RefCOCOg in the REFER layout (`format: refcoco`): one `grounding`
sample per referring object.

`path` is the dataset folder (or its refs file): `instances.json` (COCO instances: `images` [{id,
file_name, width, height}], `annotations` [{id, image_id, bbox [x, y, w, h]}]) and the refs file
`refs(<split_by>).p`, or the same list as `refs(<split_by>).json`. With `split_by` unset the folder
must hold exactly one refs file. `instances.json` is read from the refs file's folder; image files
are its `file_name` under `images_root` (never the ref's own `file_name`).

The `.p` file is a pickle. It is loaded by a restricted unpickler that admits only what plain values
need (dict, list, tuple, set, str, int, float, bool, None) and refuses every reference to a class or
function (the only way a pickle can run code), so nothing in the file is ever executed. Before it runs,
a scan of the pickle's opcodes (in time and memory linear in the file's size, building nothing) checks
that what it would build is bounded: no container nested deeper than `MAX_DEPTH` (64), at most
`MAX_VALUES` (20 million) values and `MAX_TEXT_BYTES` (1 GiB) of text, a shared value or string counted
at each place it is used (so that no later walk or copy of the refs can blow up), no number longer than
`MAX_NUMBER_BYTES` (32 bytes), no cycle, only strings as dict keys and set members (other keys can be
chosen to collide, which makes building a dict quadratic), no bytes, and no string or frame longer than
the file. A real refs file (50k refs) holds about 3 million values nested 5 deep. Such a file, like any
unreadable one, is one reject row (`unreadable_file`) whose detail says what was wrong ("the pickle
nests deeper than 64 levels", "the pickle holds a cycle: ...", "the pickle refers to posix.system ...").

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
import pickletools
import posixpath
import re
import struct
from collections.abc import Generator
from dataclasses import dataclass

from pipeline.errors import ConfigError
from pipeline.ingest.base import Format, ImageOptions, Row, SourceConfig, option
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
MAX_DEPTH = 64
"""Containers nested in containers, at most (a real refs file nests 5 deep)."""
MAX_VALUES = 20_000_000
"""Values built, and values in the loaded tree with a shared value counted at each place it is used, at
most (a real refs file of 50k refs holds about 3 million)."""
MAX_TEXT_BYTES = 1 << 30
"""Bytes of text in the loaded tree, a shared string counted at each place it is used, at most."""
MAX_NUMBER_BYTES = 32
"""Bytes (or characters, in a protocol 0 pickle) of one number, at most: a longer integer could not
even be written out as JSON."""


_TUPLE, _FROZENSET, _LIST, _DICT, _SET = range(5)
_KIND_NAMES = ("tuple", "frozenset", "list", "dict", "set")


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
    """The plain value pickled in `data`, loaded without running anything, within the limits above
    (`FileUnreadable` for a pickle that refers to any class or function, holds anything but plain
    values, a cycle or more than the limits allow, or that cannot be read)."""
    _scan(data)
    try:
        # The scan stopped at the end of the pickle or at its first class or function reference, which
        # find_class refuses: the unpickler builds only the prefix that the scan admitted.
        stream = io.BufferedReader(io.BytesIO(data), _READ_AHEAD)  # read ahead: no call per opcode
        return _PlainUnpickler(stream, encoding="utf-8", errors="surrogateescape").load()
    except Exception as error:  # a hostile or broken pickle raises many types; none of them is ours
        raise FileUnreadable(f"not a pickle of plain values: {type(error).__name__}: {error}") from None


def _scan(data: bytes) -> None:
    """Check the opcodes of the pickle in `data` without building anything (`FileUnreadable` where it
    would build anything but plain values, a cycle, or more than the limits allow). It models the C
    unpickler's stack, marks and memo exactly, so that its records stand for the values the unpickler
    would build; it stops at the end of the pickle or at its first class or function reference.

    A record is an int. A leaf is 0 for a number, bool or None and n + 1 for a string of n encoded bytes,
    so that a batch of leaves is checked by min() and counted by sum(). A container is a handle h < 0 whose
    five cells, from 5 * ~h in `cells`, hold its kind, the values and the text (bytes, one more per string)
    of its whole tree (a value used twice counts twice), its depth, and whether a second reference to it
    was taken (memo get or DUP): after that it may never change again, which rules out cycles and makes
    each count final once taken. Only ints, so the garbage collector has nothing to visit."""
    stack: list[int] = []
    marks: list[int] = []  # the stack's length at each open MARK
    fence = 0  # the stack's length at the innermost open MARK: nothing below it may be taken
    memo: list[int | None] = []
    stored = 0  # entries in the memo (None marks a slot never stored)
    cells: list[int] = []
    discarded = 0  # values popped off the stack unused: they were built all the same
    pos = 0
    end = len(data)
    # The unpickler reads a FRAME at once: an opcode running past its end would be read from elsewhere than
    # the scan reads it, so none may (nor may a frame begin inside another), as Python's own unpickler says.
    frame_end = 0  # 0: no frame
    limit = end
    push, remember, u4 = stack.append, memo.append, _U4  # local names: this loop runs once per opcode
    try:
        while True:
            while pos < limit:  # the most frequent opcodes of real refs files first
                op = data[pos]
                pos += 1
                if op == _LONG_BINPUT or op == _BINPUT or op == _MEMOIZE or op == _PUT:
                    if op == _LONG_BINPUT:
                        index = u4(data, pos)[0]
                        pos += 4
                    elif op == _BINPUT:
                        index = data[pos]
                        pos += 1
                    elif op == _MEMOIZE:
                        index = stored
                    else:
                        index, pos = _text_index(data, pos)
                    if len(stack) <= fence:
                        raise _malformed("a memo store with nothing to store", pos)
                    if index == len(memo):  # the next slot: Python 3 counts from 0, Python 2's cPickle from 1
                        remember(stack[-1])
                        stored += 1
                    elif index < len(memo):
                        if memo[index] is None:
                            stored += 1
                        memo[index] = stack[-1]
                    elif index <= 2 * stored + 1:  # the unpickler's memo is an array twice the top index
                        memo += [None] * (index - len(memo))
                        remember(stack[-1])
                        stored += 1
                    else:
                        raise FileUnreadable(
                            f"the pickle stores memo entry {index} where {stored} are stored (byte {pos})"
                        )
                elif op == _BINUNICODE or op == _SHORT_BINUNICODE or op == _SHORT_BINSTRING:
                    if op == _BINUNICODE:
                        size = u4(data, pos)[0]
                        pos += 4
                    else:
                        size = data[pos]
                        pos += 1
                    pos += size
                    if pos > end:
                        raise _too_long(size, pos, end)
                    push(size + 1)
                elif op == _BINGET or op == _LONG_BINGET or op == _GET:
                    if op == _BINGET:
                        index = data[pos]
                        pos += 1
                    elif op == _LONG_BINGET:
                        index = u4(data, pos)[0]
                        pos += 4
                    else:
                        index, pos = _text_index(data, pos)
                    record = memo[index] if index < len(memo) else None
                    if record is None:
                        raise _malformed(f"memo entry {index} was never stored", pos)
                    if record < 0:
                        cells[5 * ~record + 4] = 1
                    push(record)
                elif op == _MARK:
                    fence = len(stack)
                    marks.append(fence)
                elif op in _FIXED_NUMBERS:
                    pos += _FIXED_NUMBERS[op]
                    push(0)
                elif op in _ADDS:  # APPEND(S), SETITEM(S), ADDITEMS: into the container below the items
                    kind, count = _ADDS[op]
                    if count is None:
                        at, fence = _pop_mark(marks, pos)
                    else:
                        at = len(stack) - count
                    if at - 1 < fence:
                        raise _malformed("a stack underflow", pos)
                    target = stack[at - 1]
                    if target >= 0 or cells[5 * ~target] != kind:
                        raise FileUnreadable(
                            f"the pickle adds items to {_kind_name(target, cells)}, not to a "
                            f"{_KIND_NAMES[kind]} (byte {pos})"
                        )
                    if cells[5 * ~target + 4]:
                        raise FileUnreadable(
                            f"the pickle holds a cycle: a {_KIND_NAMES[kind]} is referred to before it is "
                            f"complete (byte {pos})"
                        )
                    _add(cells, 5 * ~target, stack[at:], pos)
                    del stack[at:]
                elif op in _EMPTIES:
                    cells += (_EMPTIES[op], 1, 0, 1, 0)
                    push(-len(cells) // 5)
                elif op in _MAKES:  # LIST, DICT, TUPLE(1, 2, 3), FROZENSET: a container of the items
                    kind, count = _MAKES[op]
                    if count is None:
                        at, fence = _pop_mark(marks, pos)
                    else:
                        at = len(stack) - count
                        if at < fence:
                            raise _malformed("a stack underflow", pos)
                    cells += (kind, 1, 0, 1, 0)
                    _add(cells, len(cells) - 5, stack[at:], pos)
                    del stack[at:]
                    push(-len(cells) // 5)
                elif op in _OTHER_STRINGS:  # BINSTRING, BINUNICODE8 and the protocol 0 STRING, UNICODE
                    if op == _BINSTRING:  # its length unsigned, as the unpickler reads it
                        size = u4(data, pos)[0]
                        pos += 4
                    elif op == _BINUNICODE8:
                        size = _U8(data, pos)[0]
                        pos += 8
                    else:  # a line
                        size = data.index(b"\n", pos) + 1 - pos
                    pos += size
                    if pos > end:
                        raise _too_long(size, pos, end)
                    push(size + 1)
                elif op in _NUMBERS:  # LONG1, LONG4 and the protocol 0 INT, LONG, FLOAT: counted bytes
                    if op == _LONG1:
                        size = data[pos]
                        pos += 1
                    elif op == _LONG4:
                        size = _I4(data, pos)[0]
                        pos += 4
                    else:  # a line
                        size = data.index(b"\n", pos) + 1 - pos
                    if not 0 <= size <= MAX_NUMBER_BYTES:
                        raise FileUnreadable(
                            f"the pickle holds a number of {size} bytes; at most {MAX_NUMBER_BYTES} are "
                            f"admitted (byte {pos})"
                        )
                    pos += size
                    push(0)
                elif op == _POP:
                    if marks and marks[-1] == len(stack):  # the unpickler pops a MARK with nothing above it
                        _, fence = _pop_mark(marks, pos)
                    elif len(stack) <= fence:
                        raise _malformed("a stack underflow", pos)
                    else:
                        discarded += _values(stack.pop(), cells)
                elif op == _POP_MARK:
                    at, fence = _pop_mark(marks, pos)
                    discarded += sum(_values(record, cells) for record in stack[at:])
                    del stack[at:]
                elif op == _DUP:
                    if len(stack) <= fence:
                        raise _malformed("a stack underflow", pos)
                    if stack[-1] < 0:
                        cells[5 * ~stack[-1] + 4] = 1
                    push(stack[-1])
                elif op == _PROTO:
                    pos += 1
                elif op == _FRAME:  # its opcodes follow its length
                    if frame_end:
                        raise _malformed("a frame begins inside another", pos)
                    size = _U8(data, pos)[0]
                    pos += 8
                    if size > end - pos:
                        raise _malformed(f"a frame of {size} bytes where {end - pos} remain", pos)
                    frame_end = limit = pos + size
                elif op == _STOP:
                    if len(stack) <= fence:
                        raise _malformed("nothing to return", pos)
                    break
                elif op in _REFERENCES:  # find_class refuses them: the unpickler names what it refers to
                    break
                else:
                    raise FileUnreadable(_refusal(op, pos - 1))
            else:  # out of bytes: the end of the frame, or an opcode past it or past the end of the data
                if frame_end and pos == frame_end:
                    frame_end, limit = 0, end
                    continue
                if frame_end:
                    raise _malformed("an opcode runs past the end of its frame", frame_end)
                raise _truncated()
            break
    except (IndexError, struct.error, ValueError):  # an opcode's argument runs past the end of the data
        raise _truncated() from None
    if discarded + sum(_values(record, cells) for record in stack) > MAX_VALUES:
        raise FileUnreadable(f"the pickle builds more than {MAX_VALUES} values")


def _add(cells: list[int], base: int, items: list[int], pos: int) -> None:
    """Count `items` into the container whose cells start at `base` (its tree then holds theirs)."""
    kind = cells[base]
    if kind == _DICT or kind == _SET or kind == _FROZENSET:
        if kind == _DICT and len(items) % 2:
            raise _malformed("an odd number of items for a dict", pos)
        keys = items[::2] if kind == _DICT else items
        if keys and min(keys) <= 0:
            # the hashes of numbers and tuples can be chosen to collide, which makes building quadratic
            key = next(key for key in keys if key <= 0)
            raise FileUnreadable(
                f"the pickle has {_kind_name(key, cells)} as a {_KIND_NAMES[kind]} "
                f"{'key' if kind == _DICT else 'member'}; only strings are admitted there (byte {pos})"
            )
    values, text, depth = cells[base + 1], cells[base + 2], cells[base + 3]
    if not items or min(items) >= 0:  # leaves only: counted at C speed
        values += len(items)
        text += sum(items)
    else:
        for item in items:
            if item >= 0:
                values += 1
                text += item
            else:
                at = 5 * ~item
                values += cells[at + 1]
                text += cells[at + 2]
                if cells[at + 3] >= depth:
                    depth = cells[at + 3] + 1
    cells[base + 1], cells[base + 2], cells[base + 3] = values, text, depth
    if depth > MAX_DEPTH:
        raise FileUnreadable(f"the pickle nests deeper than {MAX_DEPTH} levels (byte {pos})")
    if values > MAX_VALUES:
        raise FileUnreadable(
            f"the pickle holds more than {MAX_VALUES} values, a shared value counted at each place it is "
            f"used (byte {pos})"
        )
    if text > MAX_TEXT_BYTES:
        raise FileUnreadable(
            f"the pickle holds more than {MAX_TEXT_BYTES} bytes of text, a shared string counted at each "
            f"place it is used (byte {pos})"
        )


def _values(record: int, cells: list[int]) -> int:
    """The values in the tree of a record."""
    return 1 if record >= 0 else cells[5 * ~record + 1]


def _pop_mark(marks: list[int], pos: int) -> tuple[int, int]:
    """The innermost open MARK's stack length, which it closes, and the fence that is left."""
    if not marks:
        raise _malformed("no MARK to close", pos)
    at = marks.pop()
    return at, marks[-1] if marks else 0


def _text_index(data: bytes, pos: int) -> tuple[int, int]:
    """The memo index on the line at `pos` (protocol 0 PUT, GET) and the position after it: decimal
    digits only, which the unpickler reads the same way."""
    end = data.index(b"\n", pos)
    digits = data[pos:end]
    if not digits.isdigit():
        raise _malformed(f"a memo index {digits[:20]!r}", pos)
    return int(digits), end + 1


def _kind_name(record: int, cells: list[int]) -> str:
    if record >= 0:
        return "a string" if record > 0 else "a number, bool or None"
    return f"a {_KIND_NAMES[cells[5 * ~record]]}"


def _refusal(op: int, start: int) -> str:
    info = pickletools.code2op.get(chr(op))
    if info is None:
        return f"not a pickle of plain values: unknown opcode {op:#04x} at byte {start}"
    if op in _BYTES:
        return f"the pickle holds a {_BYTES[op]} (opcode {info.name} at byte {start}), not only plain values"
    return (
        f"the pickle uses opcode {info.name} at byte {start}, which only objects need; only plain "
        "containers, str, int, float, bool and None are admitted, and nothing was executed"
    )


def _too_long(size: int, pos: int, end: int) -> FileUnreadable:
    start = pos - size
    return FileUnreadable(
        f"the pickle declares a string of {size} bytes where only {end - start} remain (byte {start})"
    )


def _truncated() -> FileUnreadable:
    return FileUnreadable("not a pickle of plain values: it ends before its STOP opcode")


def _malformed(what: str, pos: int) -> FileUnreadable:
    return FileUnreadable(f"not a pickle of plain values: {what} (byte {pos})")


_READ_AHEAD = 1 << 20
_U4 = struct.Struct("<I").unpack_from
_I4 = struct.Struct("<i").unpack_from
_U8 = struct.Struct("<Q").unpack_from
_LONG_BINPUT, _BINPUT, _MEMOIZE, _PUT = (
    op[0] for op in (pickle.LONG_BINPUT, pickle.BINPUT, pickle.MEMOIZE, pickle.PUT)
)
_BINGET, _LONG_BINGET, _GET = pickle.BINGET[0], pickle.LONG_BINGET[0], pickle.GET[0]
_BINUNICODE, _SHORT_BINUNICODE, _SHORT_BINSTRING = (
    pickle.BINUNICODE[0],
    pickle.SHORT_BINUNICODE[0],
    pickle.SHORT_BINSTRING[0],
)
_BINSTRING, _BINUNICODE8 = pickle.BINSTRING[0], pickle.BINUNICODE8[0]
_OTHER_STRINGS = frozenset(
    op[0] for op in (pickle.BINSTRING, pickle.BINUNICODE8, pickle.STRING, pickle.UNICODE)
)
_MARK, _POP, _POP_MARK, _DUP = pickle.MARK[0], pickle.POP[0], pickle.POP_MARK[0], pickle.DUP[0]
_PROTO, _FRAME, _STOP = pickle.PROTO[0], pickle.FRAME[0], pickle.STOP[0]
_LONG1, _LONG4 = pickle.LONG1[0], pickle.LONG4[0]
_NUMBERS = frozenset(op[0] for op in (pickle.LONG1, pickle.LONG4, pickle.INT, pickle.LONG, pickle.FLOAT))
_FIXED_NUMBERS = {  # opcode: bytes of its argument
    pickle.BININT[0]: 4,
    pickle.BININT1[0]: 1,
    pickle.BININT2[0]: 2,
    pickle.BINFLOAT[0]: 8,
    pickle.NONE[0]: 0,
    pickle.NEWTRUE[0]: 0,
    pickle.NEWFALSE[0]: 0,
}
_ADDS = {  # opcode: (kind of the container, items taken: None for those above the innermost MARK)
    pickle.APPENDS[0]: (_LIST, None),
    pickle.APPEND[0]: (_LIST, 1),
    pickle.SETITEMS[0]: (_DICT, None),
    pickle.SETITEM[0]: (_DICT, 2),
    pickle.ADDITEMS[0]: (_SET, None),
}
_MAKES = {  # opcode: (kind of the container made, items taken: None for those above the innermost MARK)
    pickle.LIST[0]: (_LIST, None),
    pickle.DICT[0]: (_DICT, None),
    pickle.TUPLE[0]: (_TUPLE, None),
    pickle.TUPLE1[0]: (_TUPLE, 1),
    pickle.TUPLE2[0]: (_TUPLE, 2),
    pickle.TUPLE3[0]: (_TUPLE, 3),
    pickle.FROZENSET[0]: (_FROZENSET, None),
}
_EMPTIES = {
    pickle.EMPTY_LIST[0]: _LIST,
    pickle.EMPTY_DICT[0]: _DICT,
    pickle.EMPTY_SET[0]: _SET,
    pickle.EMPTY_TUPLE[0]: _TUPLE,
}
_REFERENCES = frozenset(op[0] for op in (pickle.GLOBAL, pickle.STACK_GLOBAL, pickle.INST))
_BYTES = {
    pickle.BINBYTES[0]: "bytes",
    pickle.SHORT_BINBYTES[0]: "bytes",
    pickle.BINBYTES8[0]: "bytes",
    pickle.BYTEARRAY8[0]: "bytearray",
    pickle.NEXT_BUFFER[0]: "buffer",
    pickle.READONLY_BUFFER[0]: "buffer",
}


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
