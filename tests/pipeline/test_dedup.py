"""pipeline.dedup: keys per kind, planted duplicates, scope, pixel identity, bucketing invariance, config."""

from __future__ import annotations

import io
import random
import unicodedata

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image, PngImagePlugin
from shard_support import sample_of

from pipeline import dedup
from pipeline.dedup import DedupOptions
from pipeline.errors import ConfigError
from schemas import reject as reject_schema
from schemas.sample import sample_id_for, to_table


def png(seed: int, **save_options) -> bytes:
    """A 24×16 noisy PNG (noise so that compression levels give different files)."""
    pixels = np.random.default_rng(seed).integers(0, 256, (16, 24, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG", **save_options)
    return buffer.getvalue()


def image(data: bytes | None, path: str = "a.png") -> dict:
    return {"bytes": data, "path": path, "width": 24, "height": 16, "format": "PNG"}


def text(value: str, turn: int = 0, role: str | None = None) -> dict:
    return {"turn": turn, "role": role, "type": "text", "text": value, "image": None}


def image_ref(index: int, turn: int = 0, role: str | None = None) -> dict:
    return {"turn": turn, "role": role, "type": "image", "text": None, "image": index}


def sample(source: str, key: str, content: list[dict], images: list[dict] = (), kind: str = "") -> dict:
    return sample_of(source, key, kind or ("caption" if images else "text"), content, images)


def caption(source: str, key: str, words: str, data: bytes) -> dict:
    return sample(source, key, [image_ref(0), text(words)], [image(data, f"{key}.png")])


def run(partitions: list[list[dict]], options: DedupOptions | list[DedupOptions], buckets: int = 1):
    """The job's walk without Ray: keys per partition, find_duplicates per bucket, one per sample."""
    per_partition = options if isinstance(options, list) else [options] * len(partitions)
    keys = pa.concat_tables(
        dedup.sample_keys(to_table(rows), opts, index)
        for index, (rows, opts) in enumerate(zip(partitions, per_partition, strict=True))
    )
    bucket = dedup.bucket_of(keys, buckets).to_numpy()
    found = [dedup.find_duplicates(keys.filter(pa.array(bucket == b))) for b in range(buckets)]
    return dedup.one_per_sample(pa.concat_tables(found))


def dropped(result: pa.Table) -> dict[str, tuple[str, str]]:
    """key of each dropped sample → (kind, kept key)."""
    return {row["key"]: (row["kind"], row["kept_key"]) for row in result.to_pylist()}


CAT, DOG, BIRD = png(1), png(2), png(3)


def test_planted_duplicates_within_and_across_sources_are_found_once_and_the_earliest_is_kept():
    web = [
        caption("web", "w0", "A cat on a mat.", CAT),
        caption("web", "w1", "A cat on a mat.", CAT),  # exact copy of w0
        caption("web", "w2", "Totally different words.", CAT),  # same image, other caption
        caption("web", "w3", "a  CAT on a\tmat. ", DOG),  # same caption (case, whitespace), other image
    ]
    books = [
        caption("books", "b0", "Ａ cat on a mat.", BIRD),  # fullwidth A: same text after NFKC
        caption("books", "b1", "A bird.", DOG),  # same image as w3
        caption("books", "b2", "Something new.", png(4)),
        sample("books", "b3", [text("A cat on a mat.")]),  # same text, no image
    ]
    result = run([web, books], DedupOptions(by=dedup.EXACT_KINDS), buckets=3)
    assert dropped(result) == {
        "w1": ("sample", "w0"),
        "w2": ("image", "w0"),
        "w3": ("text", "w0"),
        "b0": ("text", "w0"),
        "b1": ("image", "w3"),
        "b3": ("text", "w0"),
    }
    assert result["partition"].to_pylist() == [0, 0, 0, 1, 1, 1]
    assert result["row"].to_pylist() == [1, 2, 3, 0, 1, 3]
    rejects = dedup.reject_rows(result)
    assert rejects.schema == reject_schema.SCHEMA
    first = rejects.to_pylist()[0]
    assert first["stage"] == "dedup" and first["reason"] == "duplicate_sample" and first["value"] is None
    assert first["detail"] == f"same content as sample {sample_id_for('web', 'w0')} (web: w0)"
    assert [r["reason"] for r in rejects.to_pylist()][1:3] == ["duplicate_image", "duplicate_text"]


def test_only_the_configured_kinds_count():
    rows = [caption("web", "w0", "A cat.", CAT), caption("web", "w1", "A dog.", CAT)]
    assert dropped(run([rows], DedupOptions(by=("text",)))) == {}
    assert dropped(run([rows], DedupOptions(by=("image",)))) == {"w1": ("image", "w0")}


def test_across_sources_false_only_matches_within_the_source():
    web = [caption("web", "w0", "A cat.", CAT), caption("web", "w1", "A cat.", DOG)]
    books = [caption("books", "b0", "A cat.", CAT)]
    options = DedupOptions(by=("image", "text"), across_sources=False)
    assert dropped(run([web, books], options)) == {"w1": ("text", "w0")}
    keys = dedup.sample_keys(to_table(books), options, 1)
    assert set(keys["scope"].to_pylist()) == {"books"}
    assert dropped(run([web, books], DedupOptions(by=("image", "text")))) == {
        "w1": ("text", "w0"),
        "b0": ("image", "w0"),
    }


def test_sample_key_ignores_provenance_and_meta_but_not_role_or_kind():
    first = caption("web", "w0", "A cat.", CAT)
    moved = {**caption("other", "x9", "A cat.", CAT), "meta": '{"url": "u"}'}
    as_ocr = {**caption("web", "w2", "A cat.", CAT), "kind": "ocr"}
    options = DedupOptions(by=("sample",))
    assert dropped(run([[first, moved, as_ocr]], options)) == {"x9": ("sample", "w0")}
    chat = [
        sample("chat", "c0", [text("Hi.", 0, "user"), text("Hello.", 1, "assistant")]),
        sample("chat", "c1", [text("Hi.", 0, "assistant"), text("Hello.", 1, "user")]),
    ]
    assert dropped(run([chat], DedupOptions(by=("sample", "text")))) == {}


def test_samples_without_images_or_text_have_no_key_of_that_kind():
    rows = [
        sample("s", "text-only", [text("Words.")]),
        sample("s", "image-only", [image_ref(0)], [image(CAT)], kind="caption"),
        sample("s", "blank", [image_ref(0), text(" \n\t")], [image(DOG)], kind="caption"),
    ]
    keys = dedup.sample_keys(to_table(rows), DedupOptions(by=dedup.EXACT_KINDS), 7)
    assert list(zip(keys["row"].to_pylist(), keys["kind"].to_pylist(), strict=True)) == [
        (0, "sample"),
        (0, "text"),
        (1, "sample"),
        (1, "image"),
        (2, "sample"),
        (2, "image"),
    ]
    assert set(keys["partition"].to_pylist()) == {7}
    assert keys.schema == dedup.KEY_SCHEMA
    assert keys["key"].to_pylist()[2] == "image-only"


def test_pixels_mode_matches_resaved_pngs_and_bytes_mode_does_not():
    pixels = np.random.default_rng(5).integers(0, 256, (16, 24, 3), dtype=np.uint8)
    info = PngImagePlugin.PngInfo()
    info.add_text("Comment", "saved again")
    variants = []
    for options in ({"compress_level": 1}, {"compress_level": 9}, {"pnginfo": info}):
        buffer = io.BytesIO()
        Image.fromarray(pixels).save(buffer, format="PNG", **options)
        variants.append(buffer.getvalue())
    assert len(set(variants)) == 3
    rows = [caption("s", f"k{i}", f"caption {i}", data) for i, data in enumerate(variants)]
    rows.append(caption("s", "other", "caption x", png(6)))
    assert dropped(run([rows], DedupOptions(by=("image",), image_hash="bytes"))) == {}
    assert dropped(run([rows], DedupOptions(by=("image",), image_hash="pixels"))) == {
        "k1": ("image", "k0"),
        "k2": ("image", "k0"),
    }


def test_pixels_mode_sees_images_as_the_tiler_does_and_keeps_undecodable_bytes_apart():
    rgb = Image.new("RGB", (8, 8), (10, 20, 30))
    palette = rgb.convert("P", palette=Image.Palette.ADAPTIVE)
    encoded = []
    for picture in (rgb, palette):
        buffer = io.BytesIO()
        picture.save(buffer, format="PNG")
        encoded.append(buffer.getvalue())
    rows = [
        caption("s", "rgb", "one", encoded[0]),
        caption("s", "palette", "two", encoded[1]),
        caption("s", "junk", "three", b"not an image"),
        caption("s", "junk-again", "four", b"not an image"),
    ]
    assert dropped(run([rows], DedupOptions(by=("image",), image_hash="pixels"))) == {
        "palette": ("image", "rgb"),
        "junk-again": ("image", "junk"),
    }


def test_images_without_bytes_are_identified_by_path():
    rows = [
        sample("s", "a", [image_ref(0)], [image(None, "x.png")], kind="caption"),
        sample("s", "b", [image_ref(0)], [image(None, "x.png")], kind="caption"),
        sample("s", "c", [image_ref(0)], [image(b"x.png", "x.png")], kind="caption"),
    ]
    assert dropped(run([rows], DedupOptions(by=("image",)))) == {"b": ("image", "a")}


def test_normalize_text():
    assert dedup.normalize_text("  Ｈello\u00a0 WORLD\n\tStraße ") == "hello world strasse"
    assert dedup.normalize_text("\u2003 \n") == ""


def test_sliced_and_chunked_tables_give_the_same_keys():
    rows = [caption("s", f"k{i}", f"words {i % 3}", png(i % 2)) for i in range(6)]
    whole = to_table(rows)
    options = DedupOptions(by=dedup.EXACT_KINDS)
    expected = dedup.sample_keys(whole.slice(2, 3), options, 0)
    chunked = pa.concat_tables([whole.slice(2, 1), whole.slice(3, 2)])
    assert dedup.sample_keys(chunked, options, 0).equals(expected)
    assert expected["row"].to_pylist()[0] == 0
    assert dedup.bucket_of(expected.slice(1), 5).equals(dedup.bucket_of(expected, 5).slice(1))


def test_bucket_of_reads_the_leading_hash_bytes():
    keys = dedup.sample_keys(
        to_table([caption("s", "k", "words", CAT)]), DedupOptions(by=dedup.EXACT_KINDS), 0
    )
    buckets = dedup.bucket_of(keys, 1000)
    assert buckets.type == pa.int32()
    assert buckets.to_pylist() == [int.from_bytes(h[:4], "big") % 1000 for h in keys["hash"].to_pylist()]
    with pytest.raises(ValueError, match="at least 1"):
        dedup.bucket_of(keys, 0)


def test_empty_inputs():
    keys = dedup.sample_keys(to_table([]), DedupOptions(by=dedup.EXACT_KINDS), 0)
    assert keys.num_rows == 0 and keys.schema == dedup.KEY_SCHEMA
    assert dedup.bucket_of(keys, 4).to_pylist() == []
    duplicates = dedup.find_duplicates(keys)
    assert duplicates.schema == dedup.DUPLICATE_SCHEMA
    assert dedup.one_per_sample(duplicates).num_rows == 0
    assert dedup.reject_rows(duplicates).num_rows == 0


# ----------------------------------------------------------------------------------------------------
# any bucketing and partitioning gives what a plain first-occurrence dict gives

WORDS = ["A cat.", "a  CAT.", "Ａ cat.", "A dog.", "", "  "]
BLOBS = [b"one", b"two", b"three"]


def reference_key(kind: str, row: dict) -> object | None:
    """The key of a sample as plain Python values, written independently of the module."""
    images = tuple(entry["bytes"] for entry in row["images"])
    if kind == "image":
        return images or None
    if kind == "text":
        words = tuple(
            (
                segment["role"] or "",
                " ".join(unicodedata.normalize("NFKC", segment["text"]).casefold().split()),
            )
            for segment in row["content"]
            if segment["type"] == "text"
        )
        return tuple(pair for pair in words if pair[1]) or None
    segments = tuple(
        (s["turn"], s["role"], s["type"], s["text"], None if s["image"] is None else images[s["image"]])
        for s in row["content"]
    )
    return (row["kind"], segments)


def reference(partitions: list[list[dict]], options: list[DedupOptions]) -> list[tuple]:
    seen: dict[tuple, dict] = {}
    result = []
    for partition, (rows, opts) in enumerate(zip(partitions, options, strict=True)):
        for index, row in enumerate(rows):
            scope = "" if opts.across_sources else row["source"]
            first_duplicate = None
            for kind in dedup.EXACT_KINDS:
                value = reference_key(kind, row) if kind in opts.by else None
                if value is None:
                    continue
                holder = seen.setdefault((kind, scope, value), row)
                if holder is not row and first_duplicate is None:
                    first_duplicate = (partition, index, row["key"], kind, holder["key"])
            if first_duplicate:
                result.append(first_duplicate)
    return result


@st.composite
def corpora(draw):
    source_names = ["a", "b", "c"]
    source_options = {
        name: DedupOptions(
            by=tuple(draw(st.lists(st.sampled_from(dedup.EXACT_KINDS), min_size=1, max_size=3, unique=True))),
            across_sources=draw(st.booleans()),
        )
        for name in source_names
    }
    partitions, options = [], []
    for number in range(draw(st.integers(1, 5))):
        name = draw(st.sampled_from(source_names))
        rows = []
        for index in range(draw(st.integers(0, 8))):
            blobs = draw(st.lists(st.sampled_from(BLOBS), max_size=2))
            words = draw(st.sampled_from(WORDS))
            role = draw(st.sampled_from([None, "user"]))
            content = [image_ref(i, role=role) for i in range(len(blobs))] + [text(words, role=role)]
            rows.append(sample(name, f"{name}{number}-{index}", content, [image(b) for b in blobs]))
        partitions.append(rows)
        options.append(source_options[name])
    return partitions, options, draw(st.integers(1, 6)), draw(st.randoms(use_true_random=False))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(corpora())
def test_any_bucketing_matches_a_first_occurrence_reference(corpus):
    partitions, options, buckets, shuffler = corpus
    keys = pa.concat_tables(
        dedup.sample_keys(to_table(rows), opts, index)
        for index, (rows, opts) in enumerate(zip(partitions, options, strict=True))
    )
    order = list(range(keys.num_rows))
    shuffler.shuffle(order)
    keys = keys.take(pa.array(order, pa.int64()))
    bucket = dedup.bucket_of(keys, buckets).to_numpy()
    found = [dedup.find_duplicates(keys.filter(pa.array(bucket == b))) for b in range(buckets)]
    result = dedup.one_per_sample(pa.concat_tables(found))
    got = [(r["partition"], r["row"], r["key"], r["kind"], r["kept_key"]) for r in result.to_pylist()]
    assert got == reference(partitions, options)


def test_find_duplicates_does_not_depend_on_row_order():
    rows = [caption("s", f"k{i}", f"words {i % 4}", BLOBS[i % 3]) for i in range(30)]
    keys = dedup.sample_keys(to_table(rows), DedupOptions(by=dedup.EXACT_KINDS), 0)
    shuffled = list(range(keys.num_rows))
    random.Random(0).shuffle(shuffled)
    plain = dedup.one_per_sample(dedup.find_duplicates(keys))
    assert dedup.one_per_sample(dedup.find_duplicates(keys.take(pa.array(shuffled)))).equals(plain)


# ----------------------------------------------------------------------------------------------------
# config


def test_parse_dedup_forms():
    assert dedup.parse_dedup(None, "sources[0].dedup") is None
    assert dedup.parse_dedup([], "sources[0].dedup") is None
    assert dedup.parse_dedup(["text", "image"], "x") == DedupOptions(by=("image", "text"))
    assert dedup.parse_dedup(
        {"by": ["sample"], "across_sources": False, "image_hash": "pixels"}, "x"
    ) == DedupOptions(by=("sample",), across_sources=False, image_hash="pixels")


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (["pictures"], "sources[1].dedup.by: 'pictures' is not one of sample, image, text"),
        ({"by": ["image", "image"]}, "sources[1].dedup.by: 'image' is listed twice"),
        ({"by": "image"}, "sources[1].dedup.by: must be a list"),
        ({"across_sources": True}, "sources[1].dedup.by: required"),
        ({"by": ["text"], "scope": "all"}, "sources[1].dedup.scope: unknown option"),
        ({"by": ["text"], "across_sources": "yes"}, "sources[1].dedup.across_sources: must be true or false"),
        (
            {"by": ["image"], "image_hash": "md5"},
            "sources[1].dedup.image_hash: 'md5' is not one of bytes, pixels",
        ),
        ("image", "sources[1].dedup: must be a list of kinds"),
    ],
)
def test_parse_dedup_errors_name_the_key(value, message):
    with pytest.raises(ConfigError) as raised:
        dedup.parse_dedup(value, "sources[1].dedup")
    assert str(raised.value).startswith(message)


def test_options_reject_unknown_values():
    with pytest.raises(ValueError, match=r"DedupOptions\.by"):
        DedupOptions(by=("pictures",))
    with pytest.raises(ValueError, match="image_hash"):
        DedupOptions(by=("image",), image_hash="md5")


def test_key_encoding_is_unambiguous():
    variants = [
        [text("a"), text("b")],
        [text("a\0\0b")],
        [text("a\\0\\0b")],
        [text("a", role="user"), text("b", role="user")],
        [text("user\0a"), text("b", role="user")],
    ]
    rows = [sample("s", f"k{i}", content) for i, content in enumerate(variants)]
    keys = dedup.sample_keys(to_table(rows), DedupOptions(by=("sample", "text")), 0)
    assert keys.num_rows == 2 * len(variants)
    assert len(set(keys["hash"].to_pylist())) == keys.num_rows
