"""jobs.config, the `tokenizer` key: each shape's own tokenizer by default, shipped ones by name, a file or a
Hugging Face model folder, and clear errors before Ray starts for pairings a model could not train on."""

from __future__ import annotations

import json
import lzma
import shutil
from pathlib import Path

import pytest

from jobs.config import ConfigError, parse_config
from pipeline import tokenizer

REPO = Path(__file__).resolve().parents[2]
CORPUS = REPO / "jobs" / "examples" / "corpus"
VL2_SHA256 = "6ae3d2a608d82e48196939a2ccfea2a545808c681fceae60afa02117a2c6fccb"


def config(**top: object) -> dict:
    return {
        "sources": [{"name": "text", "format": "text", "path": str(CORPUS / "text.jsonl")}],
        "output": {"dir": "out"},
        **top,
    }


def model_folder(folder: Path, with_config_json: bool = True) -> Path:
    """A Hugging Face model folder of DeepSeek-VL2 tiny as a hub download leaves it (tokenizer files and,
    optionally, the official config.json with the tiny dimensions)."""
    folder.mkdir()
    (folder / "tokenizer.json").write_bytes(lzma.decompress(tokenizer.DEEPSEEK_VL2.read_bytes()))
    shutil.copy(tokenizer.DEEPSEEK_VL2.parent / "tokenizer_config.json", folder)
    if with_config_json:
        import model_shapes

        official = model_shapes.load("tiny").to_official_config()
        (folder / "config.json").write_text(json.dumps(official), encoding="utf-8")
    return folder


@pytest.mark.parametrize("shape", ["tiny", "base"])
def test_the_default_for_tiny_and_base_is_the_deepseek_vl2_tokenizer(tmp_path, shape):
    loaded = parse_config(config(model_shape=shape), tmp_path).load_tokenizer()
    assert (loaded.name, loaded.identity) == ("deepseek-vl2", VL2_SHA256)
    assert parse_config(config(), tmp_path).load_tokenizer().identity == VL2_SHA256  # tiny is the default


def test_the_default_for_toy_is_the_demo_model(tmp_path):
    assert parse_config(config(model_shape="toy"), tmp_path).load_tokenizer().name == "demo"


def test_small_needs_its_tokenizer_given(tmp_path):
    with pytest.raises(ConfigError, match=r"^tokenizer: model_shape 'small' uses the DeepSeek-V2 tokenizer"):
        parse_config(config(model_shape="small"), tmp_path)


@pytest.mark.parametrize("shape", ["tiny", "small", "base"])
def test_the_demo_tokenizer_with_a_released_shape_is_refused_by_name_and_by_path(tmp_path, shape):
    with pytest.raises(ConfigError, match=r"^tokenizer: .*ids are not DeepSeek's"):
        parse_config(config(model_shape=shape, tokenizer="demo"), tmp_path)
    by_path = {"kind": "sentencepiece", "path": str(tokenizer.DEMO_MODEL)}
    with pytest.raises(ConfigError, match=r"^tokenizer: .*the demo tokenizer, whose ids are not DeepSeek's"):
        parse_config(config(model_shape=shape, tokenizer=by_path), tmp_path)


def test_names_and_unknown_names(tmp_path):
    assert parse_config(config(tokenizer="deepseek-vl2"), tmp_path).load_tokenizer().identity == VL2_SHA256
    with pytest.raises(ConfigError, match=r"^tokenizer: 'llama' is not a shipped tokenizer"):
        parse_config(config(tokenizer="llama"), tmp_path)


def test_a_hugging_face_model_folder(tmp_path):
    folder = model_folder(tmp_path / "deepseek-vl2-tiny")
    given = parse_config(config(tokenizer={"kind": "hf", "path": str(folder)}), tmp_path)
    assert given.load_tokenizer().identity == VL2_SHA256
    # With the model's config.json as model_shape, `default` is the tokenizer beside it.
    beside = parse_config(config(model_shape=str(folder / "config.json")), tmp_path)
    assert (beside.tokenizer_path, beside.load_tokenizer().identity) == (str(folder), VL2_SHA256)
    # Special tokens that disagree with the shape (<image> and <|ref|> swapped): an error naming both.
    data = json.loads((folder / "tokenizer.json").read_text(encoding="utf-8"))
    swap = {"<image>": "<|ref|>", "<|ref|>": "<image>"}
    for token in data["added_tokens"]:
        token["content"] = swap.get(token["content"], token["content"])
    (folder / "tokenizer.json").write_text(json.dumps(data), encoding="utf-8")
    with pytest.raises(
        ConfigError, match=r"tokenizer .* and model_shape 'tiny' disagree: .*image at id 128816"
    ):
        parse_config(config(tokenizer={"kind": "hf", "path": str(folder)}), tmp_path)


def test_the_identity_follows_the_tokenizer_the_default_resolves_to(tmp_path):
    tiny, toy = parse_config(config(), tmp_path), parse_config(config(model_shape="toy"), tmp_path)
    assert tiny.tokenizer_sha256 == VL2_SHA256 and toy.tokenizer_sha256 != VL2_SHA256
    assert tiny.identity() != toy.identity()
