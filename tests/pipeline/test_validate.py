"""The per-sample forward-pass checks, the small validation model and the validation summary, without Ray."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from shard_support import IMG, TOY, image, png, row_of, text

import model_shapes
from pipeline import layout, report, validate


@pytest.fixture(scope="module")
def validator() -> validate.Validator:
    torch.manual_seed(0)
    return validate.Validator(model_shapes.build_model(validate.small_shape(TOY)), TOY)


@pytest.fixture(scope="module")
def rows() -> list[dict]:
    pictures = [
        row_of("pics", f"p{i}", "caption", [image(0), text(f"Picture {i}.")], [png(200 + 300 * i, 150)])
        for i in range(2)
    ]
    return [*pictures, row_of("chat", "c0", "text", [text("A plain document.")])]


def test_small_shape_keeps_what_the_data_depends_on():
    tiny = model_shapes.load("tiny")
    small = validate.small_shape(tiny)
    assert small.language.vocab_size == tiny.language.vocab_size
    assert small.special_tokens == tiny.special_tokens
    assert small.candidate_resolutions == tiny.candidate_resolutions
    assert (small.image_size, small.patch_size, small.downsample_ratio) == (384, 14, 2)
    assert small.language.hidden_size == 64 and small.vision.width == 64
    for grid in ((1, 1), (2, 1), (3, 3)):
        assert layout.image_token_count(grid, small) == layout.image_token_count(grid, tiny)
    validate.check_compatible(small, tiny)


def test_a_model_with_other_ids_is_refused():
    tiny = model_shapes.load("tiny")
    with pytest.raises(validate.ValidateError, match="vocabulary size 8192, the output's is 129280"):
        validate.check_compatible(TOY, tiny)
    moved = TOY.with_special_tokens(dataclasses.replace(TOY.special_tokens, image=8000))
    with pytest.raises(validate.ValidateError, match="<image> 8000 \\(output: 8184\\)"):
        validate.check_compatible(moved, TOY)
    validate.check_compatible(TOY.with_special_tokens(None), TOY)


def test_good_rows_pass_and_expert_load_counts_real_tokens(validator, rows):
    result = validator(rows)
    assert result.failures == [] and result.passed == dict.fromkeys(validate.CHECKS, 3)
    assert sorted(result.losses) == sorted(row["sample_id"] for row in rows)
    real_tokens = sum(len(row["input_ids"]) for row in rows)
    top_k = validator.model.shape.language.num_experts_per_tok
    assert sorted(result.expert_tokens) == [1, 2]  # layer 0 is dense
    assert all(counts.sum() == real_tokens * top_k for counts in result.expert_tokens.values())
    # The same rows one at a time give the same losses (left padding does not change the math).
    alone = {k: v for row in rows for k, v in validator([row]).losses.items()}
    assert alone == pytest.approx(result.losses, rel=1e-4)


def test_corrupted_rows_are_named_and_the_rest_still_validate(validator, rows):
    extra = dict(rows[0], input_ids=list(rows[0]["input_ids"]))
    extra["input_ids"][extra["image_token_offsets"][0] + extra["num_image_tokens"]] = IMG
    wrong_grid = dict(rows[1], images_spatial_crop=[[1, 2]])
    result = validator([extra, wrong_grid, rows[2]])
    by_sample = {(f.sample_id, f.check) for f in result.failures}
    assert (extra["sample_id"], "visual_tokens") in by_sample and (extra["sample_id"], "forward") in by_sample
    assert (wrong_grid["sample_id"], "reader") in by_sample
    assert rows[2]["sample_id"] not in {f.sample_id for f in result.failures}
    assert list(result.losses) == [rows[2]["sample_id"]]


def test_a_row_without_loss_tokens_fails(validator, rows):
    silent = dict(rows[2], labels=[-100] * len(rows[2]["labels"]))
    result = validator([silent])
    assert [(f.check, f.message) for f in result.failures] == [("loss_tokens", "no position is trained on")]


def test_summary_and_report_section(validator, rows):
    summary = validate.Summary()
    summary.add(validator(rows[:2]))
    summary.add(validator([dict(rows[2], labels=[-100] * len(rows[2]["labels"]))]))
    result = summary.to_json(with_losses=True)
    assert result["samples"] == {"validated": 3, "failed": 1, "passed": 2}
    assert result["checks"]["loss_tokens"] == {"passed": 2, "failed": 1}
    assert result["failed_sample_ids"] == [rows[2]["sample_id"]]
    assert [h["loss"] for h in result["highest_loss"]] == sorted(summary.losses.values(), reverse=True)
    load = result["expert_load"]["1"]
    assert load["imbalance"] == max(load["tokens_per_expert"]) / (load["assignments"] / 8)
    assert summary.to_json(with_losses=False)["highest_loss"] == []

    validation = {"model": {"shape": "toy-small", "weights": None}, **result}
    stats_html = report._validation_html(validation)
    assert any(rows[2]["sample_id"] in part for part in stats_html)
    assert "Forward-pass validation (toy-small): 3 samples, 1 failed" in report._validation_markdown(
        validation
    )


# ------------------------------------------------------------------------------------------------
# damaged rows: named failures before the model, never an exception


def test_ids_outside_the_vocabulary_fail_before_the_model(validator, rows):
    """An id past the embedding table (or negative) used to be a bare IndexError inside the model."""
    huge = dict(rows[2], input_ids=[*rows[2]["input_ids"][:-1], 10**6])
    negative = dict(rows[0], input_ids=list(rows[0]["input_ids"]))
    negative["input_ids"][1] = -3
    label = dict(rows[1], labels=[*rows[1]["labels"][:-1], TOY.language.vocab_size])
    result = validator([huge, negative, label, rows[2]])
    assert {(f.sample_id, f.check, f.message) for f in result.failures} == {
        (huge["sample_id"], "ids_in_vocab", "input ids 1000000 outside the vocabulary [0, 8192)"),
        (negative["sample_id"], "ids_in_vocab", "input ids -3 outside the vocabulary [0, 8192)"),
        (label["sample_id"], "ids_in_vocab", "labels 8192 outside the vocabulary [0, 8192)"),
    }
    assert result.samples == 4 and list(result.losses) == [rows[2]["sample_id"]]
    assert result.passed["ids_in_vocab"] == 1 and result.passed["forward"] == 1
    assert result.passed["labels_length"] == 4  # the damaged rows' lengths were checked too


def test_many_offending_ids_are_named_a_few_at_a_time(validator, rows):
    row = dict(rows[2], input_ids=[*rows[2]["input_ids"][:1], *range(9000, 9008), -1])
    (failure,) = validator([row]).failures
    assert failure.message.startswith("input ids 9000, 9001, 9002, 9003, 9004 and 4 more outside")


@pytest.mark.parametrize("change", [-1, 1])
def test_labels_of_another_length_fail_by_name(validator, rows, change):
    """Labels shorter or longer than the ids used to break the batch (a RuntimeError in the reader)."""
    labels = rows[2]["labels"][:-1] if change < 0 else [*rows[2]["labels"], -100]
    damaged = dict(rows[2], labels=labels)
    result = validator([damaged, rows[0]])
    n = len(rows[2]["input_ids"])
    assert [(f.sample_id, f.check, f.message) for f in result.failures] == [
        (damaged["sample_id"], "labels_length", f"{n + change} labels for {n} input ids")
    ]
    assert list(result.losses) == [rows[0]["sample_id"]]


def test_rows_not_validated_are_problems_per_file():
    summary = validate.Summary()
    summary.add(validate.BatchResult(problems=[validate.Problem("shards/b.parquet", 2, "cannot be read: x")]))
    summary.add(validate.BatchResult(problems=[validate.Problem("shards/a.parquet", 4, "cannot be read: y")]))
    summary.add(validate.BatchResult(problems=[validate.Problem("shards/b.parquet", 3, "cannot be read: x")]))
    result = summary.to_json(with_losses=False)
    assert result["problems"] == [
        {"path": "shards/a.parquet", "rows": 4, "message": "cannot be read: y"},
        {"path": "shards/b.parquet", "rows": 5, "message": "cannot be read: x"},
    ]
    assert result["samples"] == {"validated": 0, "failed": 0, "passed": 0}


# ------------------------------------------------------------------------------------------------
# which rows a run validates


def entries(**rows_per_source: list[int]) -> list[dict]:
    """Manifest shard entries: per source, the row counts of its files."""
    return [
        {"path": f"shards/{source}/part-{i:05d}.parquet", "rows": rows, "source": source}
        for source, files in rows_per_source.items()
        for i, rows in enumerate(files)
    ]


def per_source(picked: list[tuple[str, list[int]]]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for path, rows in picked:
        assert rows == sorted(set(rows))
        counts[path.split("/")[1]] = counts.get(path.split("/")[1], 0) + len(rows)
    return counts


def test_the_default_sample_is_bounded_and_spread_over_the_sources():
    """A big source does not crowd out the small ones: each gets an equal share, and what a small source
    lacks goes to the others."""
    shards = entries(big=[10_000, 10_000], mid=[40], small=[3])
    picked = validate.sample_rows(shards, validate.DEFAULT_SAMPLES)
    assert per_source(picked) == {"big": 31, "mid": 30, "small": 3}
    assert sum(per_source(picked).values()) == validate.DEFAULT_SAMPLES == 64
    # Rows of the big source are drawn over both its files, inside each file's rows.
    big = {path: rows for path, rows in picked if "/big/" in path}
    assert len(big) == 2 and all(0 <= r < 10_000 for rows in big.values() for r in rows)


def test_samples_are_reproducible_and_all_means_every_row():
    shards = entries(a=[5, 7], b=[9], c=[1])
    assert validate.sample_rows(shards, 6, seed=0) == validate.sample_rows(shards, 6, seed=0)
    # Shares of 2; c holds one row, and the row it lacks goes to the first source still open.
    assert per_source(validate.sample_rows(shards, 6)) == {"a": 3, "b": 2, "c": 1}
    everything = validate.sample_rows(shards, None)
    assert everything == [(e["path"], list(range(e["rows"]))) for e in shards]
    assert validate.sample_rows(shards, 1000) == everything
    assert validate.sample_rows(entries(a=[0], b=[2]), 1) == [("shards/b/part-00000.parquet", [0])]


def test_packed_shards_and_entries_without_a_source_are_one_source_each():
    shards = [
        {"path": "shards/packed/part-00000.parquet", "rows": 50},
        {"path": "shards/packed/part-00001.parquet", "rows": 50},
        {"path": "shards/x/part-00000.parquet", "rows": 50},
    ]
    assert per_source(validate.sample_rows(shards, 10)) == {"packed": 5, "x": 5}
