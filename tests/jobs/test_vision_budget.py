"""The job with a vision budget for packing, near-duplicate images and evaluation decontamination: every
packed row within its tile budget, samples over it rejected, evaluation overlaps rejected naming the
evaluation item, and all of it counted in the manifest, the summary and the statistics."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.packing import row_tiles
from tests.jobs.test_pretokenize import EXAMPLES, run_job


def test_packing_with_max_tiles_and_decontamination(ray_session, tmp_path):
    shutil.copytree(EXAMPLES / "corpus", tmp_path / "corpus")
    evaluation = tmp_path / "eval"
    (evaluation / "images").mkdir(parents=True)
    shutil.copy(tmp_path / "corpus" / "images" / "chelsea.jpg", evaluation / "images" / "cat.jpg")
    sentence = "Each image is cut into tiles of 384 pixels, and every tile becomes 196 tokens."
    (evaluation / "questions.jsonl").write_text(json.dumps({"id": "q7", "question": sentence}) + "\n")
    config = (EXAMPLES / "pretokenize.yaml").read_text().replace("../../out/example", "out")
    config = config.replace("packing: false", "packing: {max_tiles: 3, buffer: 64}")
    config = config.replace(
        "dedup: [sample, image, text]", "dedup: {by: [sample, image_near], near_distance: 10}"
    )
    config += (
        "decontaminate: {sets: [{name: bench, images: eval/images, texts: eval/questions.jsonl}], ngram: 8}\n"
    )
    (tmp_path / "job.yaml").write_text(config)

    code, printed = run_job(tmp_path / "job.yaml")
    assert code == 0, printed
    out = tmp_path / "out"
    manifest = json.loads((out / "manifest.json").read_text())
    packed = pa.concat_tables(pq.read_table(out / entry["path"]) for entry in manifest["shards"])
    tiles = row_tiles(packed)
    assert tiles.max() <= 3 and len(set(packed.column("seq_len").to_pylist())) == 1
    packing = manifest["packing"]
    assert packing["max_tiles"] == 3 and packing["tiles"] == int(np.sum(tiles))
    assert 0 < packing["tile_fill"] <= 1 and 0 < packing["token_fill"] <= 1
    assert set(packing["sources"]) <= {source["name"] for source in manifest["config"]["sources"]}
    assert f"tile fill {packing['tile_fill']:.1%}" in printed

    rejects = pa.concat_tables(
        pq.read_table(out / entry["path"]) for entry in manifest["rejects"]
    ).to_pylist()
    over = [row for row in rejects if row["reason"] == "too_many_tiles"]
    assert over and all(row["value"] > 3 for row in over)
    images = [row for row in rejects if row["reason"] == "eval_image_overlap"]
    texts = [row for row in rejects if row["reason"] == "eval_text_overlap"]
    assert images and all(
        "eval set 'bench'" in row["detail"] and "cat.jpg" in row["detail"] for row in images
    )
    assert texts and all("q7" in row["detail"] for row in texts)
    assert manifest["decontamination"] == {"bench": len(images) + len(texts)}
    assert "decontamination: samples overlapping evaluation sets: bench" in printed
    dedup = manifest["dedup"]
    assert dedup["near_duplicates"] >= 1 and len(dedup["near_distance_histogram"]) == 65
    near = [row for row in rejects if row["reason"] == "near_duplicate_image"]
    assert len(near) == dedup["near_duplicates"] and all(0 <= row["value"] <= 10 for row in near)
    assert f"({dedup['near_duplicates']} of them near-duplicate images)" in printed
    for name, totals in manifest["sources"].items():
        assert totals["read"] == totals["written"] + totals["rejected_total"], name

    stats = json.loads((out / "stats" / "stats.json").read_text())
    assert stats["packing"] and stats["decontamination"]
