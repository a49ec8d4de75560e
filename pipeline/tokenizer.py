"""Tokenizers: one small interface over sentencepiece `.model` files and Hugging Face `tokenizer.json` files,
and the two tokenizers vl2prep ships.

A backend encodes only ordinary text. The special tokens (`<image>`, `<|ref|>`, `<|/ref|>`, `<|det|>`,
`<|/det|>`, `<|grounding|>`, `<|User|>`, `<|Assistant|>`, bos, eos, pad) belong to the model shape: the
templates place their ids, and the text between them goes to :meth:`Tokenizer.encode` piece by piece.
:func:`load` checks, before any work, that the backend and the shape agree: every id the backend can emit is
below the shape's `vocab_size` and differs from every special id, and a backend that holds special tokens of
its own holds them at the shape's ids. When the shape has no special ids (one read from an official
`config.json`), a Hugging Face tokenizer supplies them from its added tokens.

Shipped tokenizers, chosen by name (`BUNDLED`):

- `deepseek-vl2`: the tokenizer of DeepSeek-VL2 tiny and base, the DeepSeek-V3 byte-level BPE completed with
  the VL2 tokens (`pipeline/data/tokenizers/deepseek-vl2/`, stored xz-compressed; its identity is the sha256
  of the uncompressed `tokenizer.json`, as for the plain file). Whole conversations tokenized with it equal
  the official processor's ids.
- `demo`: a 4096-piece sentencepiece model trained by :func:`train_tokenizer` from text shipped beside it, for
  the `toy` shape (its pieces sit below toy's special ids 8184..8191). Its ids are not DeepSeek's: loading it
  by name for tiny, small or base is an error.

`load("default", shape)` takes the shape's own tokenizer (`SHAPE_TOKENIZERS`): `deepseek-vl2` for tiny and
base, `demo` for toy. Small uses the DeepSeek-V2 tokenizer (vocab 102,400), which is not shipped: it must be
given as a file or folder.

Text that spells a special token of the tokenizer or the shape's role and control tokens (`<|User|>`,
`<｜end▁of▁sentence｜>`, ...) stays ordinary text: data cannot inject control tokens. This is the one place
where vl2prep departs from the official tokenizer, which would turn such strings into special ids;
:meth:`Tokenizer.count_special_strings` counts them so that the statistics can report them. The grounding
markup (`<|ref|>` ... `<|grounding|>`) is not affected: the templates place its ids wherever data text
holds it, as the official processor does.
"""

from __future__ import annotations

import hashlib
import io
import json
import lzma
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Protocol

import sentencepiece as spm

from model_shapes import TOKEN_STRINGS, ModelShape, SpecialTokens

__all__ = [
    "BUNDLED",
    "DEEPSEEK_CONTROL_STRINGS",
    "DEEPSEEK_SHAPES",
    "DEEPSEEK_VL2",
    "DEMO_MODEL",
    "DEMO_TEXT",
    "DEMO_VOCAB_SIZE",
    "GROUNDING_STRINGS",
    "KINDS",
    "NAMES",
    "SHAPE_TOKENIZERS",
    "SPECIAL_STRINGS",
    "Tokenizer",
    "TokenizerError",
    "default_name",
    "demo_training_files",
    "file_sha256",
    "load",
    "load_recorded",
    "train_tokenizer",
]

DATA_DIR = Path(__file__).resolve().parent / "data" / "tokenizers"
DEEPSEEK_VL2 = DATA_DIR / "deepseek-vl2" / "tokenizer.json.xz"
"""The DeepSeek-VL2 tiny/base tokenizer (`tokenizer.json`, xz-compressed), with its provenance and licence."""
DEMO_MODEL = DATA_DIR / "demo" / "demo.model"
"""The demo sentencepiece model: `train_tokenizer(demo_training_files(), 4096, DEMO_MODEL)`."""
DEMO_TEXT = DATA_DIR / "demo" / "text"
"""The folder of original text (`*.txt`, read in name order) the demo model is trained from."""
DEMO_VOCAB_SIZE = 4096

BUNDLED: dict[str, Path] = {"deepseek-vl2": DEEPSEEK_VL2, "demo": DEMO_MODEL}
"""The shipped tokenizers by name."""
NAMES = ("default", *BUNDLED)
"""The names `load` takes instead of a path."""
SHAPE_TOKENIZERS: dict[str, str] = {"tiny": "deepseek-vl2", "base": "deepseek-vl2", "toy": "demo"}
"""The tokenizer `default` means for each shipped shape (small's is not shipped)."""
DEEPSEEK_SHAPES = ("tiny", "small", "base")
"""The released DeepSeek-VL2 shapes: the demo tokenizer is never theirs."""

KINDS = ("sentencepiece", "hf")

# Token strings of the shape's special tokens, by SpecialTokens field: the templates write these. bos/eos/pad
# strings differ between tokenizers: for a Hugging Face tokenizer they come from tokenizer_config.json beside
# tokenizer.json, else from the DeepSeek defaults below.
SPECIAL_STRINGS: dict[str, str] = {
    name: string for name, string in TOKEN_STRINGS.items() if name not in ("bos", "eos", "pad")
}
GROUNDING_STRINGS: dict[str, str] = {
    name: SPECIAL_STRINGS[name] for name in ("ref_start", "ref_end", "det_start", "det_end", "grounding")
}
"""The grounding markup: in data text it becomes its special ids, as in the official processor."""
DEEPSEEK_CONTROL_STRINGS: dict[str, str] = {
    "bos": "<｜begin▁of▁sentence｜>",
    "eos": "<｜end▁of▁sentence｜>",
    "pad": "<｜▁pad▁｜>",
}
_KEPT_SPECIAL = frozenset({SPECIAL_STRINGS["image"], *GROUNDING_STRINGS.values()})
"""Special strings the templates handle themselves (the image placeholder, the grounding markup)."""


class TokenizerError(ValueError):
    """A tokenizer that cannot be used with the model shape; the message says what to change."""


class _Backend(Protocol):
    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]: ...

    def decode(self, ids: Sequence[int]) -> str: ...

    def byte_fallback_ids(self) -> list[int]: ...


@dataclass(frozen=True, eq=False)
class Tokenizer:
    """A loaded, checked tokenizer (build it with :func:`load`).

    - `kind`: "sentencepiece" or "hf"; `path`: the file it was read from; `name`: the shipped tokenizer's name
      (`BUNDLED`), None for a user's file.
    - `identity`: sha256 (hex) of the tokenizer file (uncompressed); it travels into every output row.
    - `piece_count`: how many ids the backend's vocabulary holds.
    - `shape`: the model shape it was checked against, with `special_tokens` filled in (from the tokenizer's
      added tokens when the shape had none); `special_tokens` is `shape.special_tokens`.
    """

    kind: str
    path: Path
    identity: str
    piece_count: int
    shape: ModelShape
    name: str | None = None
    _backend: _Backend = field(default=None, repr=False)  # type: ignore[assignment]
    _special_strings: _StringMatcher = field(default=None, repr=False)  # type: ignore[assignment]

    @property
    def special_tokens(self) -> SpecialTokens:
        """The special token ids rows carry: the shape's."""
        assert self.shape.special_tokens is not None  # load() guarantees it
        return self.shape.special_tokens

    def encode(self, text: str) -> list[int]:
        """Ids of the ordinary pieces of `text` (no bos/eos, never a special id)."""
        return self._backend.encode_batch([text])[0]

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        """`encode` of each text, in one call to the backend. sentencepiece runs it on the calling thread;
        the `tokenizers` library may spread it over threads unless TOKENIZERS_PARALLELISM=false."""
        return self._backend.encode_batch(texts)

    def decode(self, ids: Sequence[int]) -> str:
        """The text of ordinary piece ids; `decode(encode(t)) == t` for any text without U+2581 with the
        sentencepiece backend (it writes spaces as U+2581) and for any text with a byte-level `hf` one."""
        return self._backend.decode(ids)

    def count_special_strings(self, text: str) -> int:
        """How many special-token strings `text` spells that this tokenizer encodes as ordinary text: the
        tokenizer's own special tokens and the shape's role and control tokens, not the grounding markup or
        `<image>` (see the module docstring)."""
        return self._special_strings.count(text)

    def byte_fallback_ids(self) -> list[int]:
        """Ids of the byte-fallback pieces (`<0xNN>`); none in a byte-level BPE, which needs no fallback."""
        return self._backend.byte_fallback_ids()


def default_name(shape: ModelShape) -> str:
    """The shipped tokenizer `default` means for `shape`; raises TokenizerError when there is none."""
    name = SHAPE_TOKENIZERS.get(shape.name)
    if name is not None:
        return name
    if shape.name == "small":
        raise TokenizerError(
            "model_shape 'small' uses the DeepSeek-V2 tokenizer (vocabulary 102,400), which vl2prep does not "
            "ship: give it as tokenizer: {kind: hf, path: FOLDER} (a folder with its tokenizer.json)"
        )
    raise TokenizerError(
        f"model_shape {shape.name!r} has no default tokenizer: name one (deepseek-vl2 for the DeepSeek-V3 "
        "vocabulary of tiny and base) or give {kind: hf, path: FOLDER} / {kind: sentencepiece, path: FILE}"
    )


def load(source: str | os.PathLike[str], shape: ModelShape, kind: str | None = None) -> Tokenizer:
    """Load and check a tokenizer for `shape`.

    `source` is a name (`NAMES`: "default" is the shape's own tokenizer, "deepseek-vl2", "demo"), a `.model`
    file (sentencepiece), a `tokenizer.json` (or `.json.xz`) file or a folder holding one, as a Hugging Face
    model folder does (`hf`); `kind` overrides the guess from the name. Raises :class:`TokenizerError`
    naming `tokenizer` and/or `model_shape` when they do not fit together.
    """
    name: str | None = None
    if isinstance(source, str) and source in NAMES:
        name = default_name(shape) if source == "default" else source
        if name == "demo" and shape.name in DEEPSEEK_SHAPES:
            raise TokenizerError(
                f"tokenizer 'demo' with model_shape {shape.name!r}: the demo tokenizer is a 4,096-piece "
                "sentencepiece model for tests and the toy shape; its ids are not DeepSeek's, so a "
                f"DeepSeek-VL2 {shape.name} model could not train on them (use tokenizer: default)"
            )
        path, kind = BUNDLED[name], ("sentencepiece" if name == "demo" else "hf")
    else:
        path = Path(source)
        if path.is_dir():
            path = _tokenizer_in_folder(path)
        kind = kind or _guess_kind(path)
        name = next((known for known, bundled in BUNDLED.items() if bundled == path), None)
    if kind not in KINDS:
        raise TokenizerError(f"tokenizer kind {kind!r} is not one of {', '.join(KINDS)}")
    if not path.is_file():
        raise TokenizerError(f"tokenizer file {str(path)!r} does not exist")
    data = _read(path)
    identity = hashlib.sha256(data).hexdigest()
    if kind == "sentencepiece":
        backend, piece_count, ordinary, held, own = _load_sentencepiece(data, path)
    else:
        backend, piece_count, ordinary, held, own = _load_hf(data, path)
    shape = _resolve_special_tokens(shape, held, path)
    _check_vocabulary(shape, ordinary, held, path)
    controls = {
        *own,
        *_control_strings(kind, path).values(),
        SPECIAL_STRINGS["user"],
        SPECIAL_STRINGS["assistant"],
    }
    return Tokenizer(
        kind=kind,
        path=path,
        identity=identity,
        piece_count=piece_count,
        shape=shape,
        name=name,
        _backend=backend,
        _special_strings=_StringMatcher(controls - _KEPT_SPECIAL),
    )


def load_recorded(
    recorded: object, shape: ModelShape, sha256: str, path: str | os.PathLike[str] | None = None
) -> Tokenizer:
    """The tokenizer an output was made with: `path` when given, else the config's `tokenizer` value as
    recorded in its manifest (a name, or {kind, path} with an absolute path), else the shipped tokenizer whose
    identity is `sha256` (outputs made when `default` meant another shipped tokenizer). Raises TokenizerError
    when none of them is the file with that sha256."""
    tried: list[str] = []
    candidates: list[tuple[str | os.PathLike[str], str | None]] = []
    if path is not None:
        candidates.append((path, None))
    elif isinstance(recorded, str) and recorded in NAMES:
        candidates.append((recorded, None))
    elif isinstance(recorded, Mapping) and os.path.isabs(str(recorded.get("path", ""))):
        candidates.append((str(recorded["path"]), recorded.get("kind")))
    elif recorded is not None:
        tried.append(f"{recorded!r} (relative to its config: give its path)")
    # By path, not by name: an output made with the demo model for tiny (as `default` once was) still
    # finds it.
    candidates += [(bundled, None) for bundled in BUNDLED.values()]
    for source, kind in candidates:
        try:
            loaded = load(source, shape, kind=kind)
        except (TokenizerError, OSError):
            continue
        if loaded.identity == sha256:
            return loaded
        described = f"{loaded.name or str(loaded.path)} (sha256 {loaded.identity[:12]}…)"
        if described not in tried:
            tried.append(described)
    raise TokenizerError(
        f"no tokenizer with sha256 {sha256} found; tried {', '.join(tried) or 'nothing'}: give the file the "
        "output was made with"
    )


def file_sha256(path: str | os.PathLike[str]) -> str:
    """sha256 (hex) of a file's bytes: a tokenizer's identity."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def demo_training_files() -> list[Path]:
    """The shipped training text of the demo model, in the order it is read."""
    return sorted(DEMO_TEXT.glob("*.txt"))


def train_tokenizer(
    inputs: Iterable[str | os.PathLike[str]], vocab_size: int, out: str | os.PathLike[str]
) -> Path:
    """Train a sentencepiece BPE model from text files and write it to `out`; returns the path.

    One line of the inputs is one training sentence (empty lines are skipped; files are read in the order
    given, as UTF-8). Byte fallback is on (no text ever maps to unk), no dummy prefix and no whitespace
    clean-up (the text is kept exactly: answers are tokenized with no leading space), identity
    normalization, digits split one by one; ids 0/1/2/3 are bos/eos/pad/unk and no other special token is
    held. The result depends only on the input text and `vocab_size` (training runs on one thread from
    memory, so no path or time enters the file): the same input gives the same bytes. Text too small for
    `vocab_size` pieces is a `TokenizerError` saying how many it supports, and nothing is written: a model
    smaller than asked for would otherwise pass unnoticed.
    """
    if vocab_size < 4 + 256 + 1:
        raise TokenizerError(f"vocab_size={vocab_size} is too small: 4 control ids + 256 bytes need room")
    lines: list[str] = []
    for name in inputs:
        text = Path(name).read_text(encoding="utf-8")
        lines.extend(line for line in text.splitlines() if line.strip())
    if not lines:
        raise TokenizerError("the training input holds no text")
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(lines),
        model_writer=model,
        model_type="bpe",
        vocab_size=vocab_size,
        hard_vocab_limit=False,  # a shortfall is reported below with the count reached
        byte_fallback=True,
        add_dummy_prefix=False,
        remove_extra_whitespaces=False,
        normalization_rule_name="identity",
        split_digits=True,
        character_coverage=1.0,
        bos_id=0,
        eos_id=1,
        pad_id=2,
        unk_id=3,
        input_sentence_size=0,
        shuffle_input_sentence=False,
        num_threads=1,
        minloglevel=2,
    )
    pieces = spm.SentencePieceProcessor(model_proto=model.getvalue()).get_piece_size()
    if pieces < vocab_size:
        raise TokenizerError(
            f"vocab_size={vocab_size}: the training text supports only {pieces} pieces; give more text, or a "
            f"vocab_size of {pieces} or less"
        )
    out_path = Path(out)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_bytes(model.getvalue())
    return out_path


# ----------------------------------------------------------------------------------------------------
# backends


class _SentencePiece:
    def __init__(self, processor: spm.SentencePieceProcessor) -> None:
        self._processor = processor

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        return self._processor.encode(list(texts), num_threads=1)

    def decode(self, ids: Sequence[int]) -> str:
        return self._processor.decode(list(ids))

    def byte_fallback_ids(self) -> list[int]:
        return [i for i in range(self._processor.get_piece_size()) if self._processor.is_byte(i)]


class _HuggingFace:
    def __init__(self, tokenizer) -> None:  # tokenizers.Tokenizer, imported lazily
        self._tokenizer = tokenizer

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        encodings = self._tokenizer.encode_batch_fast(list(texts), add_special_tokens=False)
        return [encoding.ids for encoding in encodings]

    def decode(self, ids: Sequence[int]) -> str:
        return self._tokenizer.decode(list(ids), skip_special_tokens=False)

    def byte_fallback_ids(self) -> list[int]:
        vocabulary = self._tokenizer.get_vocab(with_added_tokens=False)
        return sorted(i for piece, i in vocabulary.items() if _BYTE_PIECE.fullmatch(piece))


_BYTE_PIECE = re.compile(r"<0x[0-9A-Fa-f]{2}>")


class _StringMatcher:
    """Counts the occurrences of a set of strings in a text, left to right, the longest match first, without
    overlaps: at each position holding a possible first character, one set lookup per distinct length."""

    def __init__(self, strings: Iterable[str]) -> None:
        self._lengths: dict[str, list[tuple[int, frozenset[str]]]] = {}
        by_first: dict[str, dict[int, set[str]]] = {}
        for string in strings:
            if string:
                by_first.setdefault(string[0], {}).setdefault(len(string), set()).add(string)
        for first, by_length in by_first.items():
            self._lengths[first] = [(n, frozenset(by_length[n])) for n in sorted(by_length, reverse=True)]
        firsts = "".join(re.escape(first) for first in sorted(self._lengths))
        self._first = re.compile(f"[{firsts}]") if firsts else None

    def count(self, text: str) -> int:
        if self._first is None:
            return 0
        found = 0
        match = self._first.search(text)
        while match is not None:
            start = match.start()
            step = 1
            for length, strings in self._lengths[text[start]]:
                if text[start : start + length] in strings:
                    found, step = found + 1, length
                    break
            match = self._first.search(text, start + step)
        return found


@lru_cache(maxsize=4)
def _read_bundled(path: Path) -> bytes:
    return _decompressed(path.read_bytes(), path)


def _read(path: Path) -> bytes:
    """The tokenizer file's bytes, uncompressed when it is `.xz`; the shipped ones are read once."""
    if path in BUNDLED.values():
        return _read_bundled(path)
    return _decompressed(path.read_bytes(), path)


def _decompressed(data: bytes, path: Path) -> bytes:
    if path.suffix != ".xz":
        return data
    try:
        return lzma.decompress(data)
    except lzma.LZMAError as error:
        raise TokenizerError(f"tokenizer {str(path)!r} is not a readable xz file: {error}") from None


def _tokenizer_in_folder(folder: Path) -> Path:
    """The tokenizer file of a folder: `tokenizer.json` (a Hugging Face model folder), its `.xz`, or the only
    sentencepiece `.model` file."""
    for name in ("tokenizer.json", "tokenizer.json.xz"):
        if (folder / name).is_file():
            return folder / name
    models = sorted(folder.glob("*.model"))
    if len(models) == 1:
        return models[0]
    raise TokenizerError(
        f"tokenizer folder {str(folder)!r} holds no tokenizer.json (nor exactly one sentencepiece .model)"
    )


def _guess_kind(path: Path) -> str:
    if path.suffix == ".model":
        return "sentencepiece"
    if path.name.endswith((".json", ".json.xz")):
        return "hf"
    raise TokenizerError(
        f"tokenizer {str(path)!r}: cannot tell the kind from the name; give kind sentencepiece or hf"
    )


_Loaded = tuple[_Backend, int, list[int], dict[str, int], frozenset[str]]
"""(backend, piece count, ordinary piece ids, the shape's special tokens it holds by field name, the strings
of its own special tokens)."""


def _load_sentencepiece(data: bytes, path: Path) -> _Loaded:
    processor = spm.SentencePieceProcessor()
    try:
        processor.load_from_serialized_proto(data)
    except (RuntimeError, OSError) as error:
        raise TokenizerError(f"tokenizer {str(path)!r} is not a sentencepiece model: {error}") from None
    count = processor.get_piece_size()
    held: dict[str, int] = {}
    for name, token_id in (
        ("bos", processor.bos_id()),
        ("eos", processor.eos_id()),
        ("pad", processor.pad_id()),
    ):
        if token_id >= 0:
            held[name] = token_id
    specials_by_string = {string: name for name, string in SPECIAL_STRINGS.items()}
    ordinary: list[int] = []
    for token_id in range(count):
        if processor.is_control(token_id):
            continue
        name = specials_by_string.get(processor.id_to_piece(token_id))
        if name is not None:
            held[name] = token_id
        else:
            ordinary.append(token_id)
    # sentencepiece never matches its control pieces inside text: no string of its own is special there.
    return _SentencePiece(processor), count, ordinary, held, frozenset()


_HF_PARSED: dict[str, tuple[object, dict[str, int], dict[int, object]]] = {}


def _load_hf(data: bytes, path: Path) -> _Loaded:
    from tokenizers import Tokenizer as HFTokenizer

    key = hashlib.sha256(data).hexdigest()
    if key not in _HF_PARSED:
        try:
            tokenizer = HFTokenizer.from_str(data.decode("utf-8"))
        except Exception as error:  # the library raises plain Exception subclasses for malformed files
            raise TokenizerError(
                f"tokenizer {str(path)!r} is not a Hugging Face tokenizer.json: {error}"
            ) from None
        # Text that happens to spell an added special token (an eos string inside a caption, say) must stay
        # ordinary text: the templates alone place special ids.
        tokenizer.encode_special_tokens = True
        if len(_HF_PARSED) >= 4:
            _HF_PARSED.clear()
        vocab = tokenizer.get_vocab(with_added_tokens=True)
        _HF_PARSED[key] = (tokenizer, vocab, tokenizer.get_added_tokens_decoder())
    tokenizer, vocab, added = _HF_PARSED[key]
    strings = {**SPECIAL_STRINGS, **_control_strings("hf", path)}
    held = {name: vocab[string] for name, string in strings.items() if string in vocab}
    added_special = {token_id for token_id, token in added.items() if token.special}
    held_ids = set(held.values())
    ordinary = [
        token_id for token_id in vocab.values() if token_id not in held_ids and token_id not in added_special
    ]
    own = frozenset(token.content for token in added.values() if token.special)
    count = tokenizer.get_vocab_size(with_added_tokens=True)
    return _HuggingFace(tokenizer), count, ordinary, held, own


def _control_strings(kind: str, path: Path) -> dict[str, str]:
    """bos/eos/pad strings: for a Hugging Face tokenizer from tokenizer_config.json beside the file when it
    names them, else DeepSeek's."""
    strings = dict(DEEPSEEK_CONTROL_STRINGS)
    config_path = path.parent / "tokenizer_config.json"
    if kind == "hf" and config_path.is_file():
        try:
            config = json.loads(config_path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as error:
            raise TokenizerError(f"tokenizer config {str(config_path)!r} is unreadable: {error}") from None
        for name in ("bos", "eos", "pad"):
            value = config.get(f"{name}_token") if isinstance(config, Mapping) else None
            if isinstance(value, Mapping):
                value = value.get("content")
            if isinstance(value, str):
                strings[name] = value
    return strings


def _resolve_special_tokens(shape: ModelShape, held: Mapping[str, int], path: Path) -> ModelShape:
    if shape.special_tokens is not None:
        return shape
    names = ("bos", "eos", "pad", *SPECIAL_STRINGS)
    missing = [name for name in names if name not in held]
    if missing:
        raise TokenizerError(
            f"model_shape {shape.name!r} has no special token ids and tokenizer {str(path)!r} does not hold "
            f"{', '.join(missing)}: use a shape with special_tokens (tiny, small, base, toy) or a Hugging "
            "Face tokenizer.json whose added tokens include all of them"
        )
    return shape.with_special_tokens(SpecialTokens(**{name: held[name] for name in names}))


def _check_vocabulary(shape: ModelShape, ordinary: list[int], held: Mapping[str, int], path: Path) -> None:
    special = shape.special_tokens
    assert special is not None
    where = f"tokenizer {str(path)!r} and model_shape {shape.name!r}"
    for name, token_id in held.items():
        expected = getattr(special, name)
        if token_id != expected:
            raise TokenizerError(
                f"{where} disagree: the tokenizer holds {name} at id {token_id}, the shape at {expected}"
            )
    vocab_size = shape.language.vocab_size
    largest = max(ordinary, default=-1)
    if largest >= vocab_size:
        raise TokenizerError(
            f"{where} disagree: the tokenizer has ordinary piece id {largest}, outside the shape's "
            f"vocab_size {vocab_size}"
        )
    clashes = sorted(set(ordinary) & set(special.as_dict().values()))
    if clashes:
        by_id = {token_id: name for name, token_id in special.as_dict().items()}
        named = ", ".join(f"{token_id} ({by_id[token_id]})" for token_id in clashes[:5])
        raise TokenizerError(
            f"{where} disagree: ordinary tokenizer pieces use the shape's special ids {named}"
        )
