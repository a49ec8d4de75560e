"""Tokenizers: one small interface over sentencepiece `.model` files and Hugging Face `tokenizer.json` files.

A backend encodes only ordinary text. The special tokens (`<image>`, `<|ref|>`, `<|/ref|>`, `<|det|>`,
`<|/det|>`, `<|grounding|>`, `<|User|>`, `<|Assistant|>`, bos, eos, pad) belong to the model shape: the
templates place their ids, and the text between them goes to :meth:`Tokenizer.encode` piece by piece.
:func:`load` checks, before any work, that the backend and the shape agree: every id the backend can emit is
below the shape's `vocab_size` and differs from every special id, and a backend that holds special tokens of
its own holds them at the shape's ids. When the shape has no special ids (one read from an official
`config.json`), a Hugging Face tokenizer supplies them from its added tokens.

The default tokenizer (`load("default", shape)`) is a small sentencepiece BPE model shipped in
`pipeline/data/tokenizer/`, trained by :func:`train_tokenizer` from the text shipped beside it, so that every
command runs offline with no set-up. It is paired with the `toy` shape (4096 pieces below toy's special ids
8184..8191) and also loads with `tiny` and `base` (bos 0, eos 1, pad 2 as theirs, every piece below 128815),
but its ids are not those of the real DeepSeek tokenizer: rows made with it suit demos and tests, not a
released checkpoint. Use the real `tokenizer.json` (kind `hf`) for that.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import sentencepiece as spm

from model_shapes import TOKEN_STRINGS, ModelShape, SpecialTokens

__all__ = [
    "DEEPSEEK_CONTROL_STRINGS",
    "DEFAULT_MODEL",
    "DEFAULT_TEXT",
    "DEFAULT_VOCAB_SIZE",
    "KINDS",
    "SPECIAL_STRINGS",
    "Tokenizer",
    "TokenizerError",
    "default_training_files",
    "file_sha256",
    "load",
    "train_tokenizer",
]

DATA_DIR = Path(__file__).resolve().parent / "data" / "tokenizer"
DEFAULT_MODEL = DATA_DIR / "default.model"
"""The shipped sentencepiece model: `train_tokenizer(default_training_files(), 4096, DEFAULT_MODEL)`."""
DEFAULT_TEXT = DATA_DIR / "text"
"""The folder of original text (`*.txt`, read in name order) the default model is trained from."""
DEFAULT_VOCAB_SIZE = 4096

KINDS = ("sentencepiece", "hf")

# Token strings of the shape's special tokens, by SpecialTokens field: the templates write these, and text
# holding them gets their ids. bos/eos/pad strings differ between tokenizers: for a Hugging Face tokenizer
# they come from tokenizer_config.json beside tokenizer.json, else from the DeepSeek defaults below.
SPECIAL_STRINGS: dict[str, str] = {
    name: string for name, string in TOKEN_STRINGS.items() if name not in ("bos", "eos", "pad")
}
DEEPSEEK_CONTROL_STRINGS: dict[str, str] = {
    "bos": "<｜begin▁of▁sentence｜>",
    "eos": "<｜end▁of▁sentence｜>",
    "pad": "<｜▁pad▁｜>",
}


class TokenizerError(ValueError):
    """A tokenizer that cannot be used with the model shape; the message says what to change."""


class _Backend(Protocol):
    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]: ...

    def decode(self, ids: Sequence[int]) -> str: ...


@dataclass(frozen=True, eq=False)
class Tokenizer:
    """A loaded, checked tokenizer (build it with :func:`load`).

    - `kind`: "sentencepiece" or "hf"; `path`: the file it was read from.
    - `identity`: sha256 (hex) of that file; it travels into every output row.
    - `piece_count`: how many ids the backend's vocabulary holds.
    - `shape`: the model shape it was checked against, with `special_tokens` filled in (from the tokenizer's
      added tokens when the shape had none); `special_tokens` is `shape.special_tokens`.
    """

    kind: str
    path: Path
    identity: str
    piece_count: int
    shape: ModelShape
    _backend: _Backend = field(repr=False)

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


def load(source: str | os.PathLike[str], shape: ModelShape, kind: str | None = None) -> Tokenizer:
    """Load and check a tokenizer for `shape`.

    `source` is "default" (the shipped sentencepiece model), a `.model` file (sentencepiece), a
    `tokenizer.json` file or a folder holding one (`hf`); `kind` overrides the guess from the name. Raises
    :class:`TokenizerError` naming `tokenizer` and/or `model_shape` when they do not fit together.
    """
    path = DEFAULT_MODEL if str(source) == "default" else Path(source)
    if path.is_dir() and (path / "tokenizer.json").is_file():
        path = path / "tokenizer.json"
    kind = kind or _guess_kind(path)
    if kind not in KINDS:
        raise TokenizerError(f"tokenizer kind {kind!r} is not one of {', '.join(KINDS)}")
    if not path.is_file():
        raise TokenizerError(f"tokenizer file {str(path)!r} does not exist")
    data = path.read_bytes()
    identity = hashlib.sha256(data).hexdigest()
    if kind == "sentencepiece":
        backend, piece_count, ordinary, held = _load_sentencepiece(data, path)
    else:
        backend, piece_count, ordinary, held = _load_hf(data, path)
    shape = _resolve_special_tokens(shape, held, path)
    _check_vocabulary(shape, ordinary, held, path)
    return Tokenizer(
        kind=kind, path=path, identity=identity, piece_count=piece_count, shape=shape, _backend=backend
    )


def file_sha256(path: str | os.PathLike[str]) -> str:
    """sha256 (hex) of a file's bytes: a tokenizer's identity."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def default_training_files() -> list[Path]:
    """The shipped training text of the default model, in the order it is read."""
    return sorted(DEFAULT_TEXT.glob("*.txt"))


def train_tokenizer(
    inputs: Iterable[str | os.PathLike[str]], vocab_size: int, out: str | os.PathLike[str]
) -> Path:
    """Train a sentencepiece BPE model from text files and write it to `out`; returns the path.

    One line of the inputs is one training sentence (empty lines are skipped; files are read in the order
    given, as UTF-8). Byte fallback is on (no text ever maps to unk), no dummy prefix and no whitespace
    clean-up (the text is kept exactly: answers are tokenized with no leading space), identity
    normalization, digits split one by one; ids 0/1/2/3 are bos/eos/pad/unk and no other special token is
    held. The result depends only on the input text and `vocab_size` (training runs on one thread from
    memory, so no path or time enters the file): the same input gives the same bytes. With little text the
    model may hold fewer than `vocab_size` pieces.
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
        hard_vocab_limit=False,
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


class _HuggingFace:
    def __init__(self, tokenizer) -> None:  # tokenizers.Tokenizer, imported lazily
        self._tokenizer = tokenizer

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        encodings = self._tokenizer.encode_batch_fast(list(texts), add_special_tokens=False)
        return [encoding.ids for encoding in encodings]

    def decode(self, ids: Sequence[int]) -> str:
        return self._tokenizer.decode(list(ids), skip_special_tokens=False)


def _guess_kind(path: Path) -> str:
    if path.suffix == ".model":
        return "sentencepiece"
    if path.suffix == ".json":
        return "hf"
    raise TokenizerError(
        f"tokenizer {str(path)!r}: cannot tell the kind from the name; give kind sentencepiece or hf"
    )


def _load_sentencepiece(data: bytes, path: Path) -> tuple[_SentencePiece, int, list[int], dict[str, int]]:
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
    return _SentencePiece(processor), count, ordinary, held


def _load_hf(data: bytes, path: Path) -> tuple[_HuggingFace, int, list[int], dict[str, int]]:
    from tokenizers import Tokenizer as HFTokenizer

    try:
        tokenizer = HFTokenizer.from_str(data.decode("utf-8"))
    except Exception as error:  # the library raises plain Exception subclasses for malformed files
        raise TokenizerError(
            f"tokenizer {str(path)!r} is not a Hugging Face tokenizer.json: {error}"
        ) from None
    # Text that happens to spell an added special token (an eos string inside a caption, say) must stay
    # ordinary text: the templates alone place special ids.
    tokenizer.encode_special_tokens = True
    strings = {**SPECIAL_STRINGS, **_hf_control_strings(path)}
    vocab = tokenizer.get_vocab(with_added_tokens=True)
    held = {name: vocab[string] for name, string in strings.items() if string in vocab}
    added_special = {
        token_id for token_id, token in tokenizer.get_added_tokens_decoder().items() if token.special
    }
    held_ids = set(held.values())
    ordinary = [
        token_id for token_id in vocab.values() if token_id not in held_ids and token_id not in added_special
    ]
    count = tokenizer.get_vocab_size(with_added_tokens=True)
    return _HuggingFace(tokenizer), count, ordinary, held


def _hf_control_strings(path: Path) -> dict[str, str]:
    """bos/eos/pad strings: from tokenizer_config.json beside the file when it names them, else DeepSeek's."""
    strings = dict(DEEPSEEK_CONTROL_STRINGS)
    config_path = path.parent / "tokenizer_config.json"
    if config_path.is_file():
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
