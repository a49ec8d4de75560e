"""Benchmark: the language model's Triton kernels against their torch references on one CUDA GPU.

First the GPU's own ceilings are measured: bfloat16 tensor-core TFLOP/s (a large ``torch.matmul``) and memory
GB/s (a large copy). Then each section (``SECTIONS``) checks its kernel against its reference in bfloat16
(max abs/rel error, pass or fail) and times both with CUDA events (warm-up, then the median of N runs),
printing TFLOP/s and GB/s with their fractions of the ceilings and the kernel's speedup over the reference:

- ``bench_rmsnorm``: RMSNorm with and without the fused residual add, at tiny's and small's hidden sizes;
- ``bench_moe``: the fused MoE (grouped GEMMs) against the loop over experts, at tiny's and small's sizes
  (hidden, moe_intermediate_size, n_routed_experts, num_experts_per_tok) with the router's picks.
- ``bench_mla``: MLA attention over the latent (absorbed weights) against torch SDPA, at small's and base's
  sizes (heads, kv_lora_rank, qk_rope_head_dim), 4096 tokens as one document and as four.

The goals: fused MoE at least 3× the reference loop at tiny's sizes; MLA prefill at least 50% of the
bf16 matmul ceiling at 4096 tokens. The last lines are a markdown table for
``bench/RESULTS.md`` (GPU, torch, triton, date). A few minutes at most on one H200 (``--quick``: smaller
sizes).
Without a GPU, ``--interpret-smoke`` runs the checks at toy sizes on the CPU in Triton's interpreter.

Run: ``.venv/bin/python bench/gpu.py [--quick] [--interpret-smoke]``.
"""

from __future__ import annotations

import argparse
import datetime
import os
import statistics
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import model_shapes  # noqa: E402
from model_shapes.kernels import use_kernels  # noqa: E402
from model_shapes.kernels.mla import document_starts, mla_attention, mla_attention_reference  # noqa: E402
from model_shapes.kernels.moe import moe_experts, moe_experts_reference  # noqa: E402
from model_shapes.kernels.rmsnorm import rms_norm, rms_norm_reference  # noqa: E402
from model_shapes.moe import Router  # noqa: E402

WARMUP, REPEAT = 5, 20
MOE_GOAL = 3.0  # fused MoE / reference loop at tiny's sizes
BF16_TOLERANCE = 2e-2  # atol = rtol for kernel against reference in bfloat16


@dataclass(frozen=True)
class Ceilings:
    """What the GPU reaches at best, as measured here, and the size of the run."""

    tflops: float  # bfloat16 matmul
    gbs: float  # copy: bytes read plus bytes written per second
    quick: bool


@dataclass(frozen=True)
class Check:
    """Kernel against reference: largest absolute error, that error relative to the largest |reference|."""

    max_abs: float
    max_rel: float
    passed: bool

    def __str__(self) -> str:
        verdict = "pass" if self.passed else "FAIL"
        return f"max abs {self.max_abs:.2e}, max rel {self.max_rel:.2e}: {verdict}"


@dataclass(frozen=True)
class Row:
    """One timed implementation of one case; ``speedup`` is the reference's time over this one's."""

    section: str
    case: str
    impl: str
    ms: float
    tflops: float
    gbs: float
    compute_fraction: float
    memory_fraction: float
    speedup: float
    check: str


def compare(got: torch.Tensor, expected: torch.Tensor, tolerance: float = BF16_TOLERANCE) -> Check:
    """``got`` against ``expected`` elementwise, |got - expected| ≤ tolerance · (1 + |expected|)."""
    got, expected = got.float(), expected.float()
    error = (got - expected).abs()
    scale = expected.abs().max().clamp_min(1e-30)
    passed = bool((error <= tolerance * (1 + expected.abs())).all())
    return Check(float(error.max()), float(error.max() / scale), passed)


def time_ms(fn: Callable[..., object], *args: object, warmup: int = WARMUP, repeat: int = REPEAT) -> float:
    """Median wall time of ``fn(*args)`` on the current CUDA stream, in milliseconds."""
    for _ in range(warmup):
        fn(*args)
    times = []
    for _ in range(repeat):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn(*args)
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def measure_ceilings(quick: bool) -> Ceilings:
    """bfloat16 matmul TFLOP/s and copy GB/s of the current GPU."""
    n = 4096 if quick else 8192
    a, b = (torch.randn(n, n, device="cuda", dtype=torch.bfloat16) for _ in range(2))
    tflops = 2 * n**3 / time_ms(torch.matmul, a, b) / 1e9
    elements = (2**28 if quick else 2**30) // 4  # float32: 256 MiB or 1 GiB
    source = torch.empty(elements, device="cuda")
    target = torch.empty_like(source)
    gbs = 2 * source.nbytes / time_ms(target.copy_, source) / 1e6
    return Ceilings(tflops, gbs, quick)


def rows_for(
    section: str,
    case: str,
    flops: float,
    bytes_moved: float,
    ceilings: Ceilings,
    timings: dict[str, float],
    check: Check,
) -> list[Row]:
    """One row per implementation in ``timings`` (ms; the first is the reference), printed as it is made."""
    reference_ms = next(iter(timings.values()))
    rows = []
    for impl, ms in timings.items():
        tflops, gbs = flops / ms / 1e9, bytes_moved / ms / 1e6
        row = Row(
            section,
            case,
            impl,
            ms,
            tflops,
            gbs,
            tflops / ceilings.tflops,
            gbs / ceilings.gbs,
            reference_ms / ms,
            "pass" if check.passed else "FAIL",
        )
        print(
            f"  {impl:>9}: {ms:8.3f} ms  {tflops:7.1f} TFLOP/s ({row.compute_fraction:5.1%})  "
            f"{gbs:7.0f} GB/s ({row.memory_fraction:5.1%})  speedup {row.speedup:5.2f}x"
        )
        rows.append(row)
    return rows


# ----------------------------------------------------------------------------------------------------
# RMSNorm


def rmsnorm_cost(tokens: int, hidden: int, element_bytes: int, residual: bool) -> tuple[float, float]:
    """(FLOPs, bytes) of one RMSNorm: square, sum, scale, weight (+ the add); x (and residual) read, the
    weight read, the output (and the sum) written."""
    flops = (4 + residual) * tokens * hidden
    streams = 2 + 2 * residual  # x, out (+ residual, sum)
    return float(flops), float((streams * tokens + 1) * hidden * element_bytes)


def rmsnorm_inputs(
    tokens: int, hidden: int, device: str, dtype: torch.dtype = torch.bfloat16
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(x, residual, weight) with a useful spread."""
    x, residual = (torch.randn(tokens, hidden, device=device, dtype=dtype) for _ in range(2))
    weight = (1 + 0.1 * torch.randn(hidden, device=device)).to(dtype)
    return x, residual, weight


def check_rmsnorm(tokens: int, hidden: int, residual: bool, device: str) -> Check:
    """The kernel against the reference in bfloat16 (normed output and, with a residual, the sum)."""
    x, res, weight = rmsnorm_inputs(tokens, hidden, device)
    res = res if residual else None
    with use_kernels("triton"):
        got = rms_norm(x, weight, 1e-6, res)
    expected = rms_norm_reference(x, weight, 1e-6, res)
    checks = [compare(g, e) for g, e in zip(got, expected, strict=True) if e is not None]
    return Check(
        max(c.max_abs for c in checks), max(c.max_rel for c in checks), all(c.passed for c in checks)
    )


def bench_rmsnorm(ceilings: Ceilings) -> list[Row]:
    rows = []
    tokens = 4096 if ceilings.quick else 16384
    for variant in ("tiny", "small"):
        hidden = model_shapes.load(variant).language.hidden_size
        for residual in (False, True):
            case = f"{variant} H={hidden} T={tokens}" + (" +residual" if residual else "")
            check = check_rmsnorm(tokens, hidden, residual, "cuda")
            print(f"rmsnorm {case}: {check}")
            x, res, weight = rmsnorm_inputs(tokens, hidden, "cuda")
            res = res if residual else None
            with use_kernels("triton"):
                timings = {
                    "reference": time_ms(rms_norm_reference, x, weight, 1e-6, res),
                    "kernel": time_ms(rms_norm, x, weight, 1e-6, res),
                }
            flops, bytes_moved = rmsnorm_cost(tokens, hidden, x.element_size(), residual)
            rows += rows_for("rmsnorm", case, flops, bytes_moved, ceilings, timings, check)
    return rows


# ----------------------------------------------------------------------------------------------------
# MoE


def moe_cost(
    tokens: int, hidden: int, width: int, experts: int, top_k: int, element_bytes: int
) -> tuple[float, float]:
    """(FLOPs, bytes) of the routed experts: three [hidden × width] products per (token, pick); at least the
    weights of the experts that can be hit, the tokens and the output move."""
    picks = tokens * top_k
    flops = 2 * picks * 3 * hidden * width
    weights = min(experts, picks) * 3 * hidden * width
    return float(flops), float((weights + 2 * tokens * hidden) * element_bytes)


def moe_inputs(
    shape: model_shapes.LanguageShape, tokens: int, device: str, dtype: torch.dtype = torch.bfloat16
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """(x, index, weight, stacked expert weights): random weights, the picks of a randomly initialised router
    of ``shape`` (its scoring and top-k) on random tokens."""
    hidden, width, experts = shape.hidden_size, shape.moe_intermediate_size, shape.n_routed_experts
    x = torch.randn(tokens, hidden, device=device, dtype=dtype)
    router = Router(shape).to(device)
    router.reset_parameters()
    with torch.no_grad():
        index, weight = router(x)
    gate, up = (torch.randn(experts, width, hidden, device=device) * hidden**-0.5 for _ in range(2))
    down = torch.randn(experts, hidden, width, device=device) * width**-0.5
    return x, index, weight, (gate.to(dtype), up.to(dtype), down.to(dtype))


def check_moe(shape: model_shapes.LanguageShape, tokens: int, device: str) -> Check:
    """The fused kernels against the reference loop in bfloat16."""
    x, index, weight, stacked = moe_inputs(shape, tokens, device)
    with use_kernels("triton"):
        got = moe_experts(x, index, weight, *stacked)
    return compare(got, moe_experts_reference(x, index, weight, *stacked))


def bench_moe(ceilings: Ceilings) -> list[Row]:
    rows = []
    speedups = {}
    for variant in ("tiny",) if ceilings.quick else ("tiny", "small"):
        shape = model_shapes.load(variant).language
        for tokens in (4096,) if ceilings.quick else (4096, 16384):
            case = (
                f"{variant} H={shape.hidden_size} I={shape.moe_intermediate_size} "
                f"E={shape.n_routed_experts} k={shape.num_experts_per_tok} T={tokens}"
            )
            check = check_moe(shape, tokens, "cuda")
            print(f"moe {case}: {check}")
            x, index, weight, stacked = moe_inputs(shape, tokens, "cuda")
            with use_kernels("triton"):
                timings = {
                    "reference": time_ms(
                        moe_experts_reference, x, index, weight, *stacked, warmup=2, repeat=5
                    ),
                    "kernel": time_ms(moe_experts, x, index, weight, *stacked),
                }
            flops, bytes_moved = moe_cost(
                tokens,
                shape.hidden_size,
                shape.moe_intermediate_size,
                shape.n_routed_experts,
                shape.num_experts_per_tok,
                x.element_size(),
            )
            case_rows = rows_for("moe", case, flops, bytes_moved, ceilings, timings, check)
            rows += case_rows
            if variant == "tiny":
                speedups[tokens] = case_rows[-1].speedup
    worst = min(speedups.values())
    verdict = "met" if worst >= MOE_GOAL else "NOT met"
    shown = ", ".join(f"{s:.2f}x at T={t}" for t, s in speedups.items())
    print(f"GOAL fused MoE >= {MOE_GOAL:.0f}x the reference loop at tiny's sizes: {verdict} ({shown})")
    return rows


# ----------------------------------------------------------------------------------------------------
# MLA attention (absorbed weights: every head against the one latent key head)

MLA_GOAL = 0.5  # kernel TFLOP/s / bf16 matmul ceiling, prefill at 4096 tokens


def mla_cost(
    heads: int, rank: int, rope: int, doc_lengths: list[int], element_bytes: int
) -> tuple[float, float]:
    """(FLOPs, bytes) of causal MLA attention: per head and allowed (query, key) pair, a score over
    rank + rope and a weighted sum over rank; q and kv read once, the output written once."""
    pairs = sum(length * (length + 1) // 2 for length in doc_lengths)
    flops = 2 * heads * (rank + rope) * pairs + 2 * heads * rank * pairs
    tokens = sum(doc_lengths)
    return float(flops), float(tokens * (heads * (2 * rank + rope) + rank + rope) * element_bytes)


def mla_inputs(
    heads: int, rank: int, rope: int, doc_lengths: list[int], device: str, dtype: torch.dtype = torch.bfloat16
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(q [tokens, heads, rank + rope], kv [tokens, rank + rope], cu_seqlens): unit-variance entries, as the
    RMS-normed latent has."""
    tokens = sum(doc_lengths)
    q = torch.randn(tokens, heads, rank + rope, device=device, dtype=dtype)
    kv = torch.randn(tokens, rank + rope, device=device, dtype=dtype)
    bounds = [0]
    for length in doc_lengths:
        bounds.append(bounds[-1] + length)
    return q, kv, torch.tensor(bounds, device=device, dtype=torch.int32)


def check_mla(heads: int, rank: int, rope: int, doc_lengths: list[int], scale: float, device: str) -> Check:
    """The kernel in bfloat16 against the reference computed in float32 from the same inputs."""
    q, kv, cu_seqlens = mla_inputs(heads, rank, rope, doc_lengths, device)
    with use_kernels("triton"):
        got = mla_attention(q, kv, rank, scale, cu_seqlens)
    return compare(got, mla_attention_reference(q.float(), kv.float(), rank, scale, cu_seqlens))


def bench_mla(ceilings: Ceilings) -> list[Row]:
    from triton.runtime.errors import OutOfResources

    from model_shapes.kernels._mla_triton import Tile, default_tile, mla_forward

    rows = []
    tokens = 4096
    fractions = {}
    for variant in ("small", "base"):
        shape = model_shapes.load(variant).language
        heads, rank, rope = shape.num_attention_heads, shape.kv_lora_rank, shape.qk_rope_head_dim
        scale = (shape.qk_nope_head_dim + rope) ** -0.5
        for documents in (1, 4):
            doc_lengths = [tokens // documents] * documents
            case = f"{variant} heads={heads} rank={rank}+{rope} T={tokens} docs={documents}"
            check = check_mla(heads, rank, rope, doc_lengths, scale, "cuda")
            print(f"mla {case}: {check}")
            q, kv, cu_seqlens = mla_inputs(heads, rank, rope, doc_lengths, "cuda")
            with use_kernels("triton"):
                timings = {
                    "reference": time_ms(mla_attention_reference, q, kv, rank, scale, cu_seqlens),
                    "kernel": time_ms(mla_attention, q, kv, rank, scale, cu_seqlens),
                }
            if variant == "small" and documents == 1 and not ceilings.quick:
                # Other tiles than the default, to tune it: name = rows x keys, warps, stages.
                starts = document_starts(cu_seqlens, tokens).to(torch.int32)
                for tile in (Tile(64, 32, 8, 2), Tile(64, 32, 8, 3), Tile(64, 16, 8, 4)):
                    if tile == default_tile(q):
                        continue
                    name = f"{tile.block_m}x{tile.block_n}w{tile.num_warps}s{tile.num_stages}"
                    try:
                        timings[name] = time_ms(mla_forward, q, kv, rank, scale, starts, tile)
                    except OutOfResources as error:  # a tile that does not fit this GPU: report, go on
                        print(f"  tile {name}: {error}")
            flops, bytes_moved = mla_cost(heads, rank, rope, doc_lengths, q.element_size())
            case_rows = rows_for("mla", case, flops, bytes_moved, ceilings, timings, check)
            rows += case_rows
            fractions[case] = case_rows[1].compute_fraction
    worst = min(fractions, key=fractions.__getitem__)
    verdict = "met" if fractions[worst] >= MLA_GOAL else "NOT met"
    print(
        f"GOAL MLA prefill >= {MLA_GOAL:.0%} of the bf16 matmul ceiling at {tokens} tokens: {verdict} "
        f"(worst {fractions[worst]:.1%}: {worst})"
    )
    return rows


# Each section takes the measured ceilings and returns its rows; main runs them in order.
SECTIONS: list[Callable[[Ceilings], list[Row]]] = [bench_rmsnorm, bench_moe, bench_mla]


def results_table(rows: list[Row], ceilings: Ceilings) -> str:
    """The markdown block for bench/RESULTS.md."""
    import triton

    day = datetime.date.today().isoformat()
    lines = [
        f"## GPU kernels: `bench/gpu.py` ({day}{', --quick' if ceilings.quick else ''})",
        "",
        f"{torch.cuda.get_device_name()}, torch {torch.__version__}, triton {triton.__version__}. Ceilings "
        f"measured here: {ceilings.tflops:.0f} TFLOP/s (bf16 matmul), {ceilings.gbs:.0f} GB/s (copy). "
        f"Median of {REPEAT} timed runs after {WARMUP} warm-up runs (MoE reference: 5 after 2); bfloat16.",
        "",
        "| section | case | impl | ms | TFLOP/s | % matmul | GB/s | % copy | speedup | check |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    lines += [
        f"| {r.section} | {r.case} | {r.impl} | {r.ms:.3f} | {r.tflops:.1f} | {r.compute_fraction:.1%} | "
        f"{r.gbs:.0f} | {r.memory_fraction:.1%} | {r.speedup:.2f}x | {r.check} |"
        for r in rows
    ]
    return "\n".join(lines)


def interpret_smoke() -> bool:
    """The checks at toy sizes on the CPU in Triton's interpreter; whether all passed."""
    toy = model_shapes.load("toy").language
    checks = {
        "rmsnorm": check_rmsnorm(19, toy.hidden_size, False, "cpu"),
        "rmsnorm +residual": check_rmsnorm(19, toy.hidden_size, True, "cpu"),
        "moe": check_moe(toy, 23, "cpu"),
        "mla": check_mla(4, 32, 8, [9, 9, 9, 10], 0.2, "cpu"),
    }
    for name, check in checks.items():
        print(f"{name} (toy, interpreter): {check}")
    return all(check.passed for check in checks.values())


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller sizes (tiny only for MoE, 4096 tokens)")
    parser.add_argument(
        "--interpret-smoke",
        action="store_true",
        help="no GPU needed: run the kernel checks at toy sizes in Triton's interpreter, time nothing",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.interpret_smoke:
        os.environ["TRITON_INTERPRET"] = "1"  # before the kernel modules define their @triton.jit functions
        return 0 if interpret_smoke() else 1
    if not torch.cuda.is_available():
        print("bench/gpu.py needs a CUDA device and found none (use --interpret-smoke on a CPU machine).")
        return 2
    ceilings = measure_ceilings(args.quick)
    print(
        f"{torch.cuda.get_device_name()}: {ceilings.tflops:.0f} TFLOP/s bf16 matmul, {ceilings.gbs:.0f} GB/s"
    )
    rows = [row for section in SECTIONS for row in section(ceilings)]
    print()
    print(results_table(rows, ceilings))
    return 0 if all(row.check == "pass" for row in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
