"""Benchmark: building sequences (`pipeline.sequence`) against raw tokenization of the same text, one core,
with the real DeepSeek-VL2 tokenizer (shape tiny) and the demo sentencepiece model (shape toy, the
baseline).

For each corpus of generated samples (text drawn from the demo tokenizer's shipped training text, fixed
seed; images are size-only, as sequence building never decodes pixels) and each tokenizer, four things are
timed, best of --repeat interleaved rounds, each over the whole corpus in one call:

- raw:       the tokenizer library alone (sentencepiece, or `tokenizers` for the byte-level BPE) encoding
             each sample's own text (batched, one thread);
- raw+tmpl:  the backend encoding every text piece the built sequences hold: the samples' text plus the
             template's (": " after role tags, prompts, written grounding boxes);
- build:     `SequenceBuilder.build_many`: template, tokenization, image spans, labels, shard-row dicts;
- +arrow:    build, then the rows as an Arrow table of `schemas.shard` (what a job writes).

Rates are in tokens of the samples' own text per second (each tokenizer's own tokens: the 128k-piece BPE
makes fewer than the 4k-piece demo model for the same text). `build/raw` is the share of raw tokenization
speed that sequence building keeps; `build/raw+tmpl` compares with encoding exactly the text the sequences
hold, template included. `seq tok/s` counts every token of the built rows, image tokens included.
`build samples/s` and `vs demo` compare the two tokenizers on the same samples.

Run: `.venv/bin/python bench/sequences.py [--repeat N] [--scale S]`.
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "RAYON_NUM_THREADS"):
    os.environ[_var] = "1"

import argparse  # noqa: E402
import gc  # noqa: E402
import lzma  # noqa: E402
import random  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402
from pathlib import Path  # noqa: E402

import sentencepiece as spm  # noqa: E402
from tokenizers import Tokenizer as HFTokenizer  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import model_shapes  # noqa: E402
from pipeline import tokenizer  # noqa: E402
from pipeline.sequence import SequenceBuilder, SequenceOptions  # noqa: E402
from pipeline.templates import TemplateConfig, render  # noqa: E402
from schemas import shard  # noqa: E402
from schemas.sample import sample_id_for  # noqa: E402

WORDS = [w for f in tokenizer.demo_training_files() for w in f.read_text(encoding="utf-8").split()]
TOKENIZERS = (("demo", "toy"), ("deepseek-vl2", "tiny"))
"""(tokenizer, shape) pairs: the demo model (the baseline) and the real DeepSeek-VL2 tokenizer."""


def segment(
    text: str | None = None, image: int | None = None, turn: int = 0, role: str | None = None
) -> dict:
    kind = "image" if image is not None else "text"
    return {"turn": turn, "role": role, "type": kind, "text": text, "image": image}


def picture(width: int, height: int) -> dict:
    return {"bytes": b"\xff\xd8", "path": "x.jpg", "width": width, "height": height, "format": "JPEG"}


def make_corpus(kind: str, count: int, rng: random.Random) -> list[dict]:
    def words(n: int) -> str:
        return " ".join(rng.choice(WORDS) for _ in range(n))

    samples = []
    for index in range(count):
        regions: list[dict] = []
        if kind in ("caption", "caption-plain"):
            content, images = [segment(image=0), segment(words(rng.randint(8, 20)))], [picture(640, 480)]
        elif kind == "conversation":
            content, images = [segment(image=0, role="user")], [picture(1024, 768)]
            for turn in range(6):
                role = "user" if turn % 2 == 0 else "assistant"
                content.append(segment(words(rng.randint(10, 40) * (1 + turn % 2)), turn=turn, role=role))
        elif kind == "grounding":
            content, images = [segment(image=0)], [picture(800, 600)]
            for _ in range(2):
                box = [rng.uniform(0, 400), rng.uniform(0, 300), rng.uniform(400, 800), rng.uniform(300, 600)]
                where = {"segment": None, "start": None, "end": None}
                regions.append({"phrase": words(3), "image": 0, "boxes": [box], **where})
        elif kind == "interleaved":
            content, images = [], []
            for i in range(4):
                content += [
                    segment(words(rng.randint(40, 90))),
                    segment(words(rng.randint(20, 60))),
                    segment(image=i),
                ]
                images.append(picture(rng.randint(200, 2000), rng.randint(200, 2000)))
        else:  # text
            content, images = [segment(words(rng.randint(300, 600)))], []
        real_kind = "caption" if kind == "caption-plain" else kind
        samples.append(
            {
                "sample_id": sample_id_for(kind, str(index)),
                "source": kind,
                "key": str(index),
                "kind": real_kind,
                "content": content,
                "images": images,
                "regions": regions,
                "meta": "{}",
            }
        )
    return samples


def own_text(sample: dict) -> list[str]:
    """The sample's own text: what a pipeline must tokenize at the least."""
    texts = [s["text"] for s in sample["content"] if s["type"] == "text"]
    return texts + [r["phrase"] for r in sample["regions"]]


def best_of_rounds(functions: list[Callable[[], object]], repeat: int) -> list[float]:
    """Best time in seconds of each function over `repeat` rounds, all of them run in each round."""
    best = [float("inf")] * len(functions)
    for _ in range(repeat):
        for index, function in enumerate(functions):
            gc.collect()
            start = time.perf_counter()
            function()
            best[index] = min(best[index], time.perf_counter() - start)
    return best


def raw_encoder(name: str) -> Callable[[list[str]], object]:
    """The tokenizer library alone, without vl2prep's wrapper: what a pipeline pays at the least."""
    if name == "demo":
        processor = spm.SentencePieceProcessor(model_file=str(tokenizer.DEMO_MODEL))
        return lambda texts: processor.encode(texts, num_threads=1)
    library = HFTokenizer.from_str(lzma.decompress(tokenizer.DEEPSEEK_VL2.read_bytes()).decode("utf-8"))
    return lambda texts: [e.ids for e in library.encode_batch_fast(texts, add_special_tokens=False)]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--scale", type=float, default=1.0, help="multiply the corpus sizes")
    args = parser.parse_args()

    corpora = {  # name → samples
        "caption": 4000,
        "caption-plain": 4000,
        "grounding": 3000,
        "conversation": 1000,
        "interleaved": 400,
        "text": 400,
    }
    rng = random.Random(0)
    samples_of = {
        name: make_corpus(name, max(1, int(count * args.scale)), rng) for name, count in corpora.items()
    }
    header = ("tokenizer", "corpus", "samples", "own tok", "raw tok/s", "build tok/s", "+arrow tok/s")
    header += ("build/raw", "build/raw+tmpl", "seq tok/s", "build samples/s", "vs demo")
    rows = []
    demo_seconds: dict[str, float] = {}
    for name, shape_name in TOKENIZERS:
        tok = tokenizer.load(name, model_shapes.load(shape_name))
        raw = raw_encoder(name)
        totals = [0.0] * 4
        total_tokens = total_samples = 0
        for corpus, samples in samples_of.items():
            config = TemplateConfig(render="plain" if corpus == "caption-plain" else None)
            builder = SequenceBuilder(tok, options=SequenceOptions(templates=config))
            own = [t for s in samples for t in own_text(s)]
            templated = [
                part
                for s in samples
                for block in render(s, config).blocks
                for part in block.parts
                if type(part) is str
            ]
            tokens = sum(len(ids) for ids in raw(own))
            built = builder.build_many(samples)
            assert all(b.reject is None for b in built), "the benchmark corpora must build without rejects"
            sequence_tokens = sum(r["seq_len"] for b in built for r in b.rows)

            def to_arrow(builder: SequenceBuilder = builder, samples: list[dict] = samples) -> None:
                shard.to_table([row for b in builder.build_many(samples) for row in b.rows])

            seconds = best_of_rounds(
                [
                    lambda own=own, raw=raw: raw(own),
                    lambda templated=templated, raw=raw: raw(templated),
                    lambda builder=builder, samples=samples: builder.build_many(samples),
                    to_arrow,
                ],
                args.repeat,
            )
            totals = [t + x for t, x in zip(totals, seconds, strict=True)]
            total_tokens += tokens
            total_samples += len(samples)
            if name == "demo":
                demo_seconds[corpus] = seconds[2]
            versus = demo_seconds[corpus] / seconds[2]
            rows.append(table_row(name, corpus, len(samples), tokens, seconds, sequence_tokens, versus))
        if name == "demo":
            demo_seconds["all"] = totals[2]
        versus = demo_seconds["all"] / totals[2]
        rows.append(table_row(name, "all", total_samples, total_tokens, totals, None, versus))
    widths = [max(len(cell) for cell in column) for column in zip(header, *rows, strict=True)]
    for line in (header, *rows):
        cells = zip(line, widths, strict=True)
        print("  ".join(cell.rjust(w) if i > 1 else cell.ljust(w) for i, (cell, w) in enumerate(cells)))
    print(
        f"\nOne thread, best of {args.repeat} interleaved rounds. tok = each tokenizer's tokens of the "
        "samples' own text; vs demo = demo build time / this build time on the same samples (> 1: faster)."
    )


def table_row(
    name: str,
    corpus: str,
    samples: int,
    tokens: int,
    seconds: list[float],
    sequence_tokens: int | None,
    versus: float,
) -> tuple[str, ...]:
    raw, raw_templated, built, arrow = seconds
    return (
        name,
        corpus,
        str(samples),
        f"{tokens / samples:.0f}",
        f"{tokens / raw:,.0f}",
        f"{tokens / built:,.0f}",
        f"{tokens / arrow:,.0f}",
        f"{raw / built:.0%}",
        f"{raw_templated / built:.0%}",
        "" if sequence_tokens is None else f"{sequence_tokens / built:,.0f}",
        f"{samples / built:,.0f}",
        f"{versus:.2f}",
    )


if __name__ == "__main__":
    main()
