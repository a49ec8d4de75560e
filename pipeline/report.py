"""Reports of a `stats.json` dict (`pipeline.stats.finalize`): a self-contained HTML page, a Markdown summary.

`html` gives a single file with inline CSS and every plot embedded as a base64 PNG (matplotlib, Agg backend),
so it opens from disk with no network. `markdown` gives the short version for a terminal or a pull request.
`PLOTS` names the plots, in page order; each appears once as a `<figure>` with that name as its id. When
filters ran, a Filters section follows with one figure per (source, quantity), id
`filter-<source>-<quantity>`: the distribution of the measured values with the cut part in red and the
thresholds as lines.
"""

from __future__ import annotations

import base64
import html as html_escape
import io
import itertools
from collections.abc import Callable, Sequence
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from matplotlib.axes import Axes

__all__ = ["PLOTS", "filter_png", "html", "markdown", "plot_png"]

_CSS = """
body { font: 14px/1.45 system-ui, sans-serif; margin: 2em auto; max-width: 1100px; color: #222; }
h1 { font-size: 1.6em; } h2 { border-bottom: 1px solid #ccc; padding-bottom: .2em; margin-top: 2em; }
table { border-collapse: collapse; margin: .8em 0; }
th, td { padding: .25em .7em; border-bottom: 1px solid #eee; }
th { text-align: left; background: #f6f6f6; } td.n { text-align: right; font-variant-numeric: tabular-nums; }
figure { display: inline-block; margin: .5em; vertical-align: top; }
figcaption { font-size: .9em; color: #555; } img { max-width: 520px; }
p.warning { color: #a33; }
"""


def _bars(ax: Axes, labels: Sequence[str], values: Sequence[float], title: str, rotate: bool = False) -> None:
    ax.bar(range(len(values)), values, color="#4c72b0")
    ax.set_xticks(range(len(values)), labels, rotation=60 if rotate else 0, fontsize=7 if rotate else 9)
    ax.set_title(title)


def _hist(ax: Axes, histogram: dict[str, Any], title: str, xlabel: str) -> None:
    edges = histogram["bin_edges"]
    widths = [b - a for a, b in itertools.pairwise(edges)]
    ax.bar(edges[:-1], histogram["counts"], width=widths, align="edge", color="#4c72b0")
    ax.set_title(title)
    ax.set_xlabel(xlabel)


def _seq_len(ax: Axes, stats: dict[str, Any]) -> None:
    seq = stats["overall"]["seq_len"]
    _hist(ax, seq["histogram"], "sequence lengths (rows)", "tokens")
    ax.axvline(seq["max_seq_len"], color="#c44e52", linestyle="--", label="max_seq_len")
    ax.legend()


def _tokens_per_source(ax: Axes, stats: dict[str, Any]) -> None:
    names = list(stats["sources"])
    text = [stats["sources"][n]["tokens"]["text"]["sum"] for n in names]
    image = [stats["sources"][n]["tokens"]["image"]["sum"] for n in names]
    ax.bar(names, text, label="text", color="#4c72b0")
    ax.bar(names, image, bottom=text, label="image", color="#dd8452")
    ax.set_title("tokens per source (rows)")
    ax.tick_params(axis="x", rotation=30)
    ax.legend()


def _images_per_sequence(ax: Axes, stats: dict[str, Any]) -> None:
    counts = stats["overall"]["images"]["per_sequence"]
    _bars(ax, list(counts), list(counts.values()), "images per sequence")


def _image_sizes(ax: Axes, stats: dict[str, Any]) -> None:
    sizes = stats["overall"]["images"]["size_histogram"]
    extent = (0, sizes["max_px"], 0, sizes["max_px"])
    counts = [list(column) for column in zip(*sizes["counts"], strict=True)]  # rows: height bins
    shown = ax.imshow(counts, origin="lower", extent=extent, cmap="viridis", aspect="auto")
    plt.colorbar(shown, ax=ax)
    ax.set_title("original image sizes (px)")
    ax.set_xlabel("width")
    ax.set_ylabel("height")


def _aspect(ax: Axes, stats: dict[str, Any]) -> None:
    _hist(ax, stats["overall"]["images"]["aspect_ratio"], "aspect ratio", "log2(width / height)")


def _grids(ax: Axes, stats: dict[str, Any]) -> None:
    grids = stats["overall"]["images"]["grids"]
    candidates = [tuple(g) for g in stats["candidate_grids"]]
    seen = [tuple(int(v) for v in key.split("x")) for key in grids]
    width = max(w for w, _ in [*candidates, *seen, (1, 1)])
    height = max(h for _, h in [*candidates, *seen, (1, 1)])
    cells = [[float("nan")] * width for _ in range(height)]
    for w, h in {*candidates, *seen}:
        cells[h - 1][w - 1] = grids.get(f"{w}x{h}", 0)
    shown = ax.imshow(cells, origin="lower", extent=(0.5, width + 0.5, 0.5, height + 0.5), cmap="magma")
    plt.colorbar(shown, ax=ax)
    ax.set_title("tile grids (blank: not a candidate)")
    ax.set_xlabel("width tiles")
    ax.set_ylabel("height tiles")


def _tokens_per_image(ax: Axes, stats: dict[str, Any]) -> None:
    dist = stats["overall"]["images"]["tokens_per_image"]
    keys = ("min", "p50", "p90", "p99", "max")
    _bars(ax, list(keys), [dist[k] or 0 for k in keys], "<image> tokens per image")


def _padding(ax: Axes, stats: dict[str, Any]) -> None:
    waste = stats["overall"]["images"]["padding_waste"]
    share = waste["share"]
    title = "padding waste" + (f" (overall {share:.1%})" if share is not None else "")
    _hist(ax, waste["histogram"], title, "% of the tiled canvas that is padding")


def _grounding(ax: Axes, stats: dict[str, Any]) -> None:
    boxes = stats["overall"]["grounding"]["boxes_per_sequence"]
    _bars(ax, list(boxes), list(boxes.values()), "boxes per sequence")


def _box_area(ax: Axes, stats: dict[str, Any]) -> None:
    _hist(ax, stats["overall"]["grounding"]["box_area_share"], "box area", "% of the image")


def _top_tokens(ax: Axes, stats: dict[str, Any]) -> None:
    top = stats["overall"]["text"]["top_tokens"]
    labels = [repr(t["text"]) if t["text"] is not None else str(t["id"]) for t in top]
    _bars(ax, labels, [t["count"] for t in top], "top text tokens", rotate=True)


def _rejects(ax: Axes, stats: dict[str, Any]) -> None:
    reasons = stats["rejects"]["by_reason"]
    _bars(ax, list(reasons), [r["count"] for r in reasons.values()], "rejects by reason", rotate=True)


PLOTS: dict[str, Callable[[Axes, dict[str, Any]], None]] = {
    "sequence-lengths": _seq_len,
    "tokens-per-source": _tokens_per_source,
    "images-per-sequence": _images_per_sequence,
    "image-sizes": _image_sizes,
    "aspect-ratios": _aspect,
    "tile-grids": _grids,
    "tokens-per-image": _tokens_per_image,
    "padding-waste": _padding,
    "boxes-per-sequence": _grounding,
    "box-area": _box_area,
    "top-tokens": _top_tokens,
    "rejects": _rejects,
}
"""Plot name → drawing function, in page order."""


def _png(draw: Callable[[Axes], None]) -> bytes:
    """What `draw` puts on one axes, as PNG bytes (no timestamp: the same plot gives the same bytes)."""
    figure, ax = plt.subplots(figsize=(5.2, 3.4), dpi=90)
    try:
        draw(ax)
        figure.tight_layout()
        buffer = io.BytesIO()
        figure.savefig(buffer, format="png", metadata={"Software": None})
        return buffer.getvalue()
    finally:
        plt.close(figure)


def plot_png(name: str, stats: dict[str, Any]) -> bytes:
    """One named plot of `PLOTS` as PNG bytes."""
    return _png(lambda ax: PLOTS[name](ax, stats))


def _fmt(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 1000 else f"{value:,.0f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    head = "".join(f"<th>{html_escape.escape(h)}</th>" for h in header)
    body = "".join(
        "<tr>"
        + "".join(
            f'<td class="n">{_fmt(c)}</td>'
            if isinstance(c, int | float) or c is None
            else f"<td>{_esc(c)}</td>"
            for c in row
        )
        + "</tr>"
        for row in rows
    )
    return f"<table><tr>{head}</tr>{body}</table>"


def _esc(value: Any) -> str:
    return html_escape.escape(str(value))


def _special_strings(group: dict) -> str:
    """`sequences (occurrences)` of special-token strings kept as text; outputs made before the count
    existed show "n/a"."""
    found = group["text"].get("special_strings_as_text")
    return "n/a" if found is None else f"{_fmt(found['sequences'])} ({_fmt(found['occurrences'])})"


def _percent(value: float | None) -> str:
    return "–" if value is None else f"{value:.1%}"


def _source_rows(stats: dict[str, Any]) -> list[list[Any]]:
    return [
        [
            name,
            s["read"],
            s["written"],
            s["rejected"],
            s["rows"],
            s["tokens"]["total"]["sum"],
            _percent(s["tokens"]["image_share"]),
            s["truncated"],
            s["dropped"],
        ]
        for name, s in stats["sources"].items()
    ]


_SOURCE_HEADER = (
    "source",
    "read",
    "written",
    "rejected",
    "rows",
    "tokens",
    "image share",
    "truncated",
    "dropped",
)
_DIST_KEYS = ("count", "sum", "mean", "min", "p50", "p90", "p99", "max")


def _token_rows(group: dict[str, Any]) -> list[list[Any]]:
    return [
        [name, *(group["tokens"][name][k] for k in _DIST_KEYS)] for name in ("text", "image", "loss", "total")
    ]


def html(stats: dict[str, Any], validation: dict[str, Any] | None = None) -> str:
    """The self-contained HTML report; with a `validation.json` dict, a forward-pass validation section."""
    overall = stats["overall"]
    output = stats["output"]
    mixture = stats["mixture"]
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8"><title>vl2prep dataset report</title>',
        f"<style>{_CSS}</style></head><body>",
        "<h1>vl2prep dataset report</h1>",
        f"<p>model shape <b>{_esc(output['model_shape'])}</b> ({_esc(output['shape_fingerprint'])}), "
        f"max_seq_len {output['max_seq_len']}, packing {'on' if output['packing'] else 'off'}, "
        f"tokenizer {_esc((output['tokenizer_sha256'] or '')[:16])}.</p>",
        *_problems_html(stats.get("problems"), "Files left out of these statistics"),
        "<h2>Sources</h2>",
        _table(_SOURCE_HEADER, _source_rows(stats)),
        "<h2>Rejects</h2>",
        _table(
            ("reason", "count", "example key"),
            [[r, v["count"], v["example_key"]] for r, v in stats["rejects"]["by_reason"].items()],
        ),
        "<h2>Tokens (overall, per row)</h2>",
        _table(("tokens", *_DIST_KEYS), _token_rows(overall)),
        "<h2>Kinds</h2>",
        _table(
            ("kind", "rows", "samples", "tokens", "image share", "images", "padding waste"),
            [
                [
                    kind,
                    g["rows"],
                    g["samples"],
                    g["tokens"]["total"]["sum"],
                    _percent(g["tokens"]["image_share"]),
                    g["images"]["count"],
                    _percent(g["images"]["padding_waste"]["share"]),
                ]
                for kind, g in stats["kinds"].items()
            ],
        ),
        "<h2>Mixture</h2>",
        _table(
            ("source", "sequences", "tokens", "share"),
            [
                [name, m["sequences"], m["tokens"], _percent(m["token_share"])]
                for name, m in stats["mixture"]["per_source"].items()
            ],
        ),
        f"<p>vision-language tokens {_fmt(mixture['vl_tokens'])}, text-only tokens "
        f"{_fmt(mixture['text_only_tokens'])}, ratio {_fmt(mixture['vl_to_text_only'])}.</p>",
        "<h2>Images and text</h2>",
        _table(
            ("measure", "value"),
            [
                ["images", overall["images"]["count"]],
                ["images through the >2-images no-tiling path", overall["images"]["no_tiling"]],
                [
                    "padding waste (share of tiled canvas)",
                    _percent(overall["images"]["padding_waste"]["share"]),
                ],
                ["grounding boxes", overall["grounding"]["boxes"]],
                ["text tokens", overall["text"]["tokens"]],
                ["byte-fallback share", _percent(overall["text"]["byte_fallback_share"])],
                [
                    "sequences with special-token strings kept as text (occurrences)",
                    _special_strings(overall),
                ],
                ["characters per token (every 16th row)", overall["text"]["chars_per_token"]],
                ["shards", stats["shards"]["count"]],
                [
                    "shard bytes p50 / max",
                    f"{_fmt(stats['shards']['bytes']['p50'])} / {_fmt(stats['shards']['bytes']['max'])}",
                ],
            ],
        ),
        "<h2>Plots</h2>",
    ]
    for name in PLOTS:
        encoded = base64.b64encode(plot_png(name, stats)).decode("ascii")
        parts.append(
            f'<figure id="{name}"><img alt="{name}" src="data:image/png;base64,{encoded}">'
            f"<figcaption>{name}</figcaption></figure>"
        )
    parts += _filters_html(stats)
    if validation is not None:
        parts += _validation_html(validation)
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


_FILTER_HEADER = ("source", "quantity", "filters", "measured", "cut", "dropped by others", "min", "max")


def _filter_rows(stats: dict[str, Any]) -> list[list[Any]]:
    return [
        [
            source,
            quantity,
            ", ".join(f"{name} {_fmt(value)}" for name, value in entry["filters"].items()),
            entry["measured"],
            entry["cut"],
            entry["dropped_other"],
            entry["min"],
            entry["max"],
        ]
        for source, quantities in stats.get("filters", {}).items()
        for quantity, entry in quantities.items()
    ]


def filter_png(source: str, quantity: str, entry: dict[str, Any]) -> bytes:
    """The distribution of one filtered quantity of one source (a `stats.json` `filters` entry) as PNG bytes:
    all measured values, the part a filter on the quantity cut, and each threshold as a vertical line."""
    return _png(lambda ax: _filtered(ax, source, quantity, entry))


def _filtered(ax: Axes, source: str, quantity: str, entry: dict[str, Any]) -> None:
    histogram = entry["histogram"]
    edges = histogram["bin_edges"]
    logarithmic = edges[-1] > 1.0
    left = [max(edge, 0.5) for edge in edges[:-1]] if logarithmic else edges[:-1]
    widths = [b - a for a, b in zip(left, edges[1:], strict=True)]
    ax.bar(left, histogram["counts"], width=widths, align="edge", color="#4c72b0", label="measured")
    ax.bar(left, histogram["cut_counts"], width=widths, align="edge", color="#c44e52", label="cut")
    for name, value in entry["filters"].items():
        ax.axvline(value, color="#222", linestyle="--", linewidth=1)
        ax.annotate(name, (value, 1), xycoords=("data", "axes fraction"), fontsize=7, rotation=90, va="top")
    if logarithmic:
        ax.set_xscale("log", base=2)
        used = [i for i, count in enumerate(histogram["counts"]) if count]
        if used:
            ax.set_xlim(max(edges[max(used[0] - 1, 0)], 0.5), edges[min(used[-1] + 2, len(edges) - 1)])
    ax.set_title(f"{source}: {quantity}")
    ax.legend(fontsize=7)


def _filters_html(stats: dict[str, Any]) -> list[str]:
    if not stats.get("filters"):
        return []
    parts = ["<h2>Filters</h2>", _table(_FILTER_HEADER, _filter_rows(stats))]
    for source, quantities in stats["filters"].items():
        for quantity, entry in quantities.items():
            name = f"filter-{source}-{quantity}"
            encoded = base64.b64encode(filter_png(source, quantity, entry)).decode("ascii")
            parts.append(
                f'<figure id="{_esc(name)}"><img alt="{_esc(name)}" src="data:image/png;base64,{encoded}">'
                f"<figcaption>{_esc(name)}</figcaption></figure>"
            )
    return parts


def _md_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_fmt(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def markdown(stats: dict[str, Any], validation: dict[str, Any] | None = None) -> str:
    """A short Markdown summary: sources, rejects, overall tokens and the headline image/text numbers, and
    with a `validation.json` dict the forward-pass validation's headline."""
    overall = stats["overall"]
    images = overall["images"]
    reasons = ", ".join(f"{r} {v['count']}" for r, v in stats["rejects"]["by_reason"].items()) or "none"
    return (
        "\n\n".join(
            [
                "# vl2prep dataset report",
                *_problems_markdown(stats.get("problems"), "Files left out of these statistics"),
                _md_table(_SOURCE_HEADER, _source_rows(stats)),
                f"Rejects: {reasons}.",
                _md_table(("tokens", *_DIST_KEYS), _token_rows(overall)),
                f"Images: {_fmt(images['count'])}, "
                f"padding waste {_percent(images['padding_waste']['share'])}, "
                f"{_fmt(images['no_tiling'])} through the no-tiling path. Byte-fallback share "
                f"{_percent(overall['text']['byte_fallback_share'])}; characters per token "
                f"{_fmt(overall['text']['chars_per_token'])}; sequences with special-token strings kept as "
                f"text {_special_strings(overall)}. VL / text-only tokens "
                f"{_fmt(stats['mixture']['vl_to_text_only'])}. Shards: {stats['shards']['count']}.",
                *([_md_table(_FILTER_HEADER, _filter_rows(stats))] if stats.get("filters") else []),
                *([_validation_markdown(validation)] if validation is not None else []),
            ]
        )
        + "\n"
    )


def _validation_rows(validation: dict[str, Any]) -> list[list[Any]]:
    return [[name, c["passed"], c["failed"]] for name, c in validation["checks"].items()]


def _validation_html(validation: dict[str, Any]) -> list[str]:
    """The forward-pass validation section (`validation.json`): checks, failures, losses, expert load."""
    samples, loss = validation["samples"], validation["loss"]
    return [
        '<h2 id="validation">Forward-pass validation</h2>',
        f"<p>{samples['validated']} samples through model <b>{_esc(validation['model']['shape'])}</b> "
        f"(weights {_esc(validation['model']['weights'] or 'random')}): {samples['failed']} failed. "
        f"Per-sample loss mean {_fmt(loss['mean'])}, max {_fmt(loss['max'])}.</p>",
        *_problems_html(validation.get("problems"), "Rows that could not be validated"),
        _table(("check", "passed", "failed"), _validation_rows(validation)),
        _table(
            ("sample_id", "check", "what"),
            [[f["sample_id"], f["check"], f["message"]] for f in validation["failures"]],
        ),
        _table(("sample_id", "loss"), [[h["sample_id"], h["loss"]] for h in validation["highest_loss"]]),
        _table(
            ("MoE layer", "routed tokens", "imbalance (max/mean)", "tokens per expert"),
            [
                [layer, e["assignments"], e["imbalance"], " ".join(map(str, e["tokens_per_expert"]))]
                for layer, e in validation["expert_load"].items()
            ],
        ),
    ]


def _validation_markdown(validation: dict[str, Any]) -> str:
    samples = validation["samples"]
    failed = ", ".join(validation["failed_sample_ids"]) or "none"
    return (
        f"Forward-pass validation ({_esc(validation['model']['shape'])}): {samples['validated']} samples, "
        f"{samples['failed']} failed ({failed}).\n\n"
        + "".join(f"{part}\n\n" for part in _problems_markdown(validation.get("problems"), "Not validated"))
        + _md_table(("check", "passed", "failed"), _validation_rows(validation))
    )


def _problems_html(problems: list[dict[str, Any]] | None, title: str) -> list[str]:
    """A warning table of the files a pass could not read (`problems` of stats.json or validation.json)."""
    if not problems:
        return []
    rows = [[p["path"], p.get("rows", ""), p["message"]] for p in problems]
    return [f'<p class="warning"><b>{_esc(title)}</b>:</p>', _table(("file", "rows", "problem"), rows)]


def _problems_markdown(problems: list[dict[str, Any]] | None, title: str) -> list[str]:
    if not problems:
        return []
    return [f"**{title}**: " + "; ".join(f"{p['path']}: {p['message']}" for p in problems) + "."]
