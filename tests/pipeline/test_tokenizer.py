"""pipeline.tokenizer: the shipped tokenizers (DeepSeek-VL2's and the demo model), the default per shape,
training, load-time checks against the shape, backends, special-token strings kept as text."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import lzma

import pytest
import sentencepiece as spm
from hypothesis import given
from hypothesis import strategies as st
from tokenizers import Tokenizer as HFTokenizer
from tokenizers import decoders, models, pre_tokenizers, trainers

import model_shapes
from model_shapes import SpecialTokens
from pipeline import tokenizer
from pipeline.tokenizer import TokenizerError

TOY = model_shapes.load("toy")
TINY = model_shapes.load("tiny")
DEMO = tokenizer.load("default", TOY)
VL2 = tokenizer.load("default", TINY)
VL2_SHA256 = "6ae3d2a608d82e48196939a2ccfea2a545808c681fceae60afa02117a2c6fccb"

# Text the round trip must survive: anything encodable as UTF-8 except U+2581, which sentencepiece writes
# for a space (so it decodes as one).
TEXT = st.text(st.characters(exclude_categories=("Cs",), exclude_characters="\u2581"), max_size=200)


def with_special_tokens(shape: model_shapes.ModelShape, vocab_size: int | None = None, **ids: int):
    """The shape with some special ids (and the vocabulary size) changed."""
    special = None if shape.special_tokens is None else dataclasses.replace(shape.special_tokens, **ids)
    language = (
        shape.language if vocab_size is None else dataclasses.replace(shape.language, vocab_size=vocab_size)
    )
    return dataclasses.replace(shape, language=language, special_tokens=special)


# ----------------------------------------------------------------------------------------------------
# the shipped tokenizers and the default per shape


@pytest.mark.parametrize("name", ["tiny", "base"])
def test_default_of_tiny_and_base_is_the_real_deepseek_vl2_tokenizer(name):
    shape = model_shapes.load(name)
    loaded = tokenizer.load("default", shape)
    assert (loaded.name, loaded.kind, loaded.path) == ("deepseek-vl2", "hf", tokenizer.DEEPSEEK_VL2)
    assert loaded.identity == VL2_SHA256 == tokenizer.load("deepseek-vl2", shape).identity
    assert loaded.piece_count == 128_823 and loaded.special_tokens == shape.special_tokens
    # Ids as in the official processor's output for golden case single_basic: the user text after the
    # image (its trailing "." and the turn separator "\n\n" are one piece, 339) and the answer.
    assert loaded.encode("\nDescribe this image.\n\n") == [201, 72_188, 566, 4_609, 339]
    assert loaded.encode("A red square on a plain background.") == [35, 4332, 5080, 377, 260, 17603, 6951, 16]
    assert loaded.byte_fallback_ids() == []  # byte-level: no byte-fallback pieces


def test_deepseek_vl2_ships_compressed_with_provenance_and_licence():
    path = tokenizer.DEEPSEEK_VL2
    assert path.stat().st_size < 2 * 2**20
    assert hashlib.sha256(lzma.decompress(path.read_bytes())).hexdigest() == VL2_SHA256
    for name in ("tokenizer_config.json", "special_tokens_map.json", "PROVENANCE.md", "LICENSE"):
        assert (path.parent / name).is_file()
    assert "MIT License" in (path.parent / "LICENSE").read_text(encoding="utf-8")
    assert VL2_SHA256 in (path.parent / "PROVENANCE.md").read_text(encoding="utf-8")


def test_default_of_toy_is_the_demo_model():
    assert (DEMO.name, DEMO.kind, DEMO.path) == ("demo", "sentencepiece", tokenizer.DEMO_MODEL)
    assert DEMO.piece_count == tokenizer.DEMO_VOCAB_SIZE <= 8184
    assert tokenizer.DEMO_MODEL.stat().st_size < 200_000
    assert DEMO.identity == hashlib.sha256(tokenizer.DEMO_MODEL.read_bytes()).hexdigest()
    assert DEMO.identity == tokenizer.file_sha256(tokenizer.DEMO_MODEL)
    assert DEMO.special_tokens == TOY.special_tokens and DEMO.shape == TOY
    assert len(DEMO.byte_fallback_ids()) == 256


def test_small_has_no_shipped_tokenizer_and_says_what_to_give():
    with pytest.raises(TokenizerError, match=r"'small' uses the DeepSeek-V2 tokenizer .*\{kind: hf, path: "):
        tokenizer.load("default", model_shapes.load("small"))


@pytest.mark.parametrize("name", ["tiny", "small", "base"])
def test_demo_by_name_is_refused_for_the_released_shapes(name):
    with pytest.raises(TokenizerError, match=rf"'demo' with model_shape '{name}': .*ids are not DeepSeek's"):
        tokenizer.load("demo", model_shapes.load(name))


def test_demo_model_is_reproducible_from_the_shipped_text(tmp_path):
    files = tokenizer.demo_training_files()
    assert files and sum(f.stat().st_size for f in files) < 400_000
    out = tokenizer.train_tokenizer(files, tokenizer.DEMO_VOCAB_SIZE, tmp_path / "again.model")
    assert out.read_bytes() == tokenizer.DEMO_MODEL.read_bytes()


def test_demo_model_layout():
    sp = spm.SentencePieceProcessor(model_file=str(tokenizer.DEMO_MODEL))
    assert (sp.bos_id(), sp.eos_id(), sp.pad_id(), sp.unk_id()) == (0, 1, 2, 3)
    assert [sp.is_control(i) for i in range(4)] == [True, True, True, False]
    # Nothing but the four reserved ids is special; the next 256 are the byte-fallback pieces.
    assert not any(sp.is_control(i) or sp.is_unknown(i) for i in range(4, sp.get_piece_size()))
    assert all(sp.is_byte(i) for i in range(4, 260))
    # No dummy prefix: an answer starts without a space piece.
    assert sp.encode("Hello", out_type=str)[0] == "Hello"
    # Unseen characters fall back to bytes, never to unk.
    assert 3 not in DEMO.encode("\u16a0\u16a1 \U0001f9ea")


def test_a_hugging_face_model_folder_loads(tmp_path):
    folder = tmp_path / "deepseek-vl2-tiny"
    folder.mkdir()
    (folder / "tokenizer.json").write_bytes(lzma.decompress(tokenizer.DEEPSEEK_VL2.read_bytes()))
    config = tokenizer.DEEPSEEK_VL2.parent / "tokenizer_config.json"
    (folder / "tokenizer_config.json").write_bytes(config.read_bytes())
    (folder / "config.json").write_text("{}", encoding="utf-8")
    loaded = tokenizer.load(folder, TINY)
    assert (loaded.name, loaded.kind, loaded.identity) == (None, "hf", VL2_SHA256)
    assert loaded.encode("A cat. <|User|>") == VL2.encode("A cat. <|User|>")


def test_a_recorded_tokenizer_is_found_by_name_path_or_identity(tmp_path):
    assert tokenizer.load_recorded("default", TINY, VL2_SHA256).name == "deepseek-vl2"
    # An output made when `default` meant the demo model for tiny: found among the shipped ones by sha256.
    assert tokenizer.load_recorded("default", TINY, DEMO.identity).name == "demo"
    path = tmp_path / "demo.model"
    path.write_bytes(tokenizer.DEMO_MODEL.read_bytes())
    recorded = {"kind": "sentencepiece", "path": str(path)}
    assert tokenizer.load_recorded(recorded, TOY, DEMO.identity).path == path
    with pytest.raises(TokenizerError, match=r"no tokenizer with sha256 0+ found"):
        tokenizer.load_recorded({"kind": "hf", "path": "relative.json"}, TINY, "0" * 64)


# ----------------------------------------------------------------------------------------------------
# special-token strings in text


def test_special_token_strings_in_text_stay_ordinary_text_and_are_counted():
    specials = set(TINY.special_tokens.as_dict().values())
    text = "Say <|User|> or <｜end▁of▁sentence｜> then <｜place▁holder▁no▁5｜>."
    ids = VL2.encode(text)
    assert specials.isdisjoint(ids) and not any(128_000 <= i < 128_815 for i in ids)
    assert VL2.decode(ids) == text
    assert VL2.count_special_strings(text) == 3
    # The grounding markup and the image placeholder are the templates' business, not counted here; a
    # non-special added token of the V3 vocabulary (full-width <｜User｜>) is one id, as officially.
    assert VL2.count_special_strings("<|ref|>a<|/ref|><|det|>[[1, 2, 3, 4]]<|/det|><image>") == 0
    assert VL2.count_special_strings("<｜User｜>") == 0 and VL2.encode("<｜User｜>") == [128_803]
    assert VL2.count_special_strings("<|Assistant|><|Assistant|>x<｜▁pad▁｜>") == 3
    assert DEMO.count_special_strings("a <|User|> b <｜begin▁of▁sentence｜>") == 2


# ----------------------------------------------------------------------------------------------------
# encode / decode


def test_encode_gives_ordinary_pieces_and_never_special_ids():
    text = "<|User|>: <image> <|ref|> <s></s><pad><unk>"
    ids = DEMO.encode(text)
    assert set(ids).isdisjoint(TOY.special_tokens.as_dict().values())
    assert DEMO.decode(ids) == text
    assert set(DEMO.encode("<｜end▁of▁sentence｜>")).isdisjoint(TOY.special_tokens.as_dict().values())
    assert DEMO.encode_batch(["a b", "", "c"]) == [DEMO.encode("a b"), [], DEMO.encode("c")]


@given(TEXT)
def test_decode_encode_round_trip(text):
    ids = DEMO.encode(text)
    assert DEMO.decode(ids) == text
    assert all(3 < i < 4096 for i in ids)


@given(st.lists(TEXT, max_size=5))
def test_encode_batch_equals_encode(texts):
    assert DEMO.encode_batch(texts) == [DEMO.encode(t) for t in texts]


# ----------------------------------------------------------------------------------------------------
# training and load-time checks


def test_training_is_deterministic(tmp_path):
    text = tmp_path / "a.txt"
    text.write_text("one two three four\n\nfive six seven eight nine ten\n" * 20, encoding="utf-8")
    first = tokenizer.train_tokenizer([text], 300, tmp_path / "one.model").read_bytes()
    second = tokenizer.train_tokenizer([text], 300, tmp_path / "two.model").read_bytes()
    assert first == second
    loaded = tokenizer.load(tmp_path / "one.model", TOY)
    assert loaded.piece_count <= 300
    assert loaded.decode(loaded.encode("seven nine")) == "seven nine"


def test_training_rejects_tiny_vocabularies_and_empty_text(tmp_path):
    text = tmp_path / "a.txt"
    text.write_text("\n\n", encoding="utf-8")
    with pytest.raises(TokenizerError, match="vocab_size=100 is too small"):
        tokenizer.train_tokenizer([text], 100, tmp_path / "x.model")
    with pytest.raises(TokenizerError, match="holds no text"):
        tokenizer.train_tokenizer([text], 300, tmp_path / "x.model")


def test_text_too_small_for_the_vocabulary_is_an_error_and_writes_nothing(tmp_path):
    """Too little text once gave a model smaller than asked for, silently."""
    text = tmp_path / "a.txt"
    text.write_text("a cat on a mat\n" * 20, encoding="utf-8")
    with pytest.raises(
        TokenizerError, match=r"vocab_size=50000: the training text supports only \d+ pieces"
    ) as info:
        tokenizer.train_tokenizer([text], 50_000, tmp_path / "x.model")
    assert not (tmp_path / "x.model").exists()
    reached = int(str(info.value).split("supports only ")[1].split()[0])
    assert 260 < reached < 50_000
    out = tokenizer.train_tokenizer([text], reached, tmp_path / "x.model")  # the size it names works
    assert tokenizer.load(out, TOY).piece_count == reached


def test_ordinary_piece_on_a_special_id_is_an_error():
    shape = with_special_tokens(TOY, image=100)
    with pytest.raises(
        TokenizerError, match=r"ordinary tokenizer pieces use the shape's special ids 100 \(<image>\)"
    ):
        tokenizer.load("default", shape)


def test_piece_beyond_the_vocabulary_is_an_error():
    shape = with_special_tokens(TOY, vocab_size=9000, image=8992, ref_start=8993)
    assert tokenizer.load("default", shape).piece_count == 4096
    small_vocab = dataclasses.replace(
        TOY,
        language=dataclasses.replace(TOY.language, vocab_size=4000),
        special_tokens=SpecialTokens(
            bos=0, eos=1, pad=2, image=3990, ref_start=3991, ref_end=3992, det_start=3993, det_end=3994,
            grounding=3995, user=3996, assistant=3997,
        ),
    )  # fmt: skip
    with pytest.raises(TokenizerError, match="ordinary piece id 4095, outside the shape's vocab_size 4000"):
        tokenizer.load("default", small_vocab)


def test_shape_without_special_ids_needs_an_hf_tokenizer():
    with pytest.raises(
        TokenizerError, match=r"model_shape 'toy' has no special token ids and tokenizer .* does not"
    ):
        tokenizer.load("default", TOY.with_special_tokens(None))


def test_unknown_kind_and_missing_file(tmp_path):
    with pytest.raises(TokenizerError, match="cannot tell the kind"):
        tokenizer.load(tmp_path / "vocab.txt", TOY)
    with pytest.raises(TokenizerError, match="does not exist"):
        tokenizer.load(tmp_path / "nothing.model", TOY)
    with pytest.raises(TokenizerError, match="kind 'bpe' is not one of"):
        tokenizer.load(tokenizer.DEMO_MODEL, TOY, kind="bpe")
    bad = tmp_path / "bad.model"
    bad.write_bytes(b"not a model")
    with pytest.raises(TokenizerError, match="is not a sentencepiece model"):
        tokenizer.load(bad, TOY)


# ----------------------------------------------------------------------------------------------------
# the Hugging Face backend, on a tokenizer.json built here

CONTROL = ["<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>", "<｜▁pad▁｜>"]
ADDED = [
    "<image>",
    "<|ref|>",
    "<|/ref|>",
    "<|det|>",
    "<|/det|>",
    "<|grounding|>",
    "<|User|>",
    "<|Assistant|>",
]
HF_VOCAB = 300  # byte-level BPE: 3 control tokens + 256 bytes + merges; the added tokens follow at 300..307


def hf_shape(**ids: int) -> model_shapes.ModelShape:
    """A toy shape laid out like the tokenizer built by `hf_file`: vocabulary 320, specials at 300..307."""
    special = {
        "bos": 0,
        "eos": 1,
        "pad": 2,
        **{f: 300 + i for i, f in enumerate(list(tokenizer.SPECIAL_STRINGS))},
    }
    special.update(ids)
    return dataclasses.replace(
        TOY,
        language=dataclasses.replace(TOY.language, vocab_size=320),
        special_tokens=SpecialTokens(**special),
    )


@pytest.fixture(scope="module")
def hf_file(tmp_path_factory):
    """A byte-level BPE tokenizer.json with DeepSeek's control tokens at 0..2 and the eight added tokens."""
    hf = HFTokenizer(models.BPE())
    hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    hf.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=HF_VOCAB,
        special_tokens=CONTROL,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    lines = [
        line for f in tokenizer.demo_training_files() for line in f.read_text(encoding="utf-8").splitlines()
    ]
    hf.train_from_iterator(lines, trainer)
    hf.add_special_tokens(ADDED)
    path = tmp_path_factory.mktemp("hf") / "tokenizer.json"
    hf.save(str(path))
    assert hf.token_to_id("<image>") == 300 and hf.get_vocab_size() == 308
    return path


def test_hf_tokenizer_with_matching_shape(hf_file):
    loaded = tokenizer.load(hf_file, hf_shape())
    assert loaded.kind == "hf" and loaded.piece_count == 308
    assert loaded.identity == tokenizer.file_sha256(hf_file)
    assert tokenizer.load(hf_file.parent, hf_shape()).identity == loaded.identity  # a folder works too
    text = "A cat on a mat. Ünïcödé 🙂 <|User|> <｜end▁of▁sentence｜>"
    ids = loaded.encode(text)
    # Special strings in text stay ordinary text: only templates place special ids.
    assert set(ids).isdisjoint(hf_shape().special_tokens.as_dict().values())
    assert loaded.decode(ids) == text


@given(TEXT)
def test_hf_round_trip(hf_file, text):
    loaded = tokenizer.load(hf_file, hf_shape())
    assert loaded.decode(loaded.encode(text)) == text


def test_hf_fills_special_ids_of_a_shape_without_them(hf_file):
    loaded = tokenizer.load(hf_file, hf_shape().with_special_tokens(None))
    assert loaded.special_tokens == hf_shape().special_tokens
    assert loaded.shape == hf_shape()


def test_hf_special_token_at_another_id_is_an_error(hf_file):
    with pytest.raises(
        TokenizerError,
        match=r"tokenizer .* and model_shape 'toy' disagree: .*image at id 300, the shape at 310",
    ):
        tokenizer.load(hf_file, hf_shape(image=310))


def test_hf_control_strings_from_tokenizer_config(tmp_path, hf_file):
    folder = tmp_path / "custom"
    folder.mkdir()
    data = json.loads(hf_file.read_text(encoding="utf-8"))
    (folder / "tokenizer.json").write_text(json.dumps(data), encoding="utf-8")
    # With bos named "<|User|>" in the config, the tokenizer holds bos at 306, and the shape says 0.
    (folder / "tokenizer_config.json").write_text(json.dumps({"bos_token": {"content": "<|User|>"}}))
    with pytest.raises(TokenizerError, match="holds bos at id 306, the shape at 0"):
        tokenizer.load(folder, hf_shape())


def test_hf_missing_special_tokens_name_both(tmp_path):
    hf = HFTokenizer(models.WordLevel({"a": 0, "b": 1, "[UNK]": 2}, unk_token="[UNK]"))
    path = tmp_path / "tokenizer.json"
    hf.save(str(path))
    with pytest.raises(
        TokenizerError,
        match=r"model_shape 'toy' has no special token ids and tokenizer .* not hold bos, eos, pad, image",
    ):
        tokenizer.load(path, TOY.with_special_tokens(None))
    not_json = tmp_path / "broken.json"
    not_json.write_text("{", encoding="utf-8")
    with pytest.raises(TokenizerError, match=r"not a Hugging Face tokenizer\.json"):
        tokenizer.load(not_json, TOY)
