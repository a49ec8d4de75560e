"""Reports of a `stats.json` dict (`pipeline.stats.finalize`): a self-contained HTML page, a Markdown summary.

`html` gives a single file with inline CSS and every plot embedded as a base64 PNG (matplotlib, Agg backend),
so it opens from disk with no network. `markdown` gives the short version for a terminal or a pull request.
`PLOTS` names the plots, in page order; each appears once as a `<figure>` with that name as its id, its title
and axis labels in `data-title`, `data-xlabel`, `data-ylabel`. A plot without data is no empty axes but a
figure of class "none" that says why (`data-empty`); a table without rows is "none" too. Distributions are
drawn per source (one line or bar per source, the same colour for a source in every plot) where the
statistics have them per source. When filters ran, a Filters section follows with one figure per (source,
quantity), id `filter-<source>-<quantity>`: the distribution of the measured values with the cut part in red
and the thresholds as lines inside the plot.

The page opens with the run (when the report was made, the output, vl2prep version, code and config
identity, the config as written), then sources with a totals row (read, written, rejected and dropped on
purpose, as shares of the records read), rejects per source, and a definition of every token total. Packing,
deduplication and decontamination get their sections when the statistics record them. The validation
section shows losses only for real weights.

When the statistics hold a `gallery` (source → rows, each made by `gallery_entry`, as `jobs.stats` adds it), a
Gallery section shows a card per row (`div.sample`, grouped in one `section.gallery-source` per source): the
first image's local canvas as a PNG thumbnail with its tile grid drawn, and the first `GALLERY_TOKENS` tokens
decoded, image spans collapsed and trained-on text shaded (`span.trained`), as `vl2prep inspect` shows them.
"""

from __future__ import annotations

import base64
import html as html_escape
import io
import itertools
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import matplotlib.ticker
import numpy as np
from matplotlib.axes import Axes
from matplotlib.colors import LogNorm
from PIL import Image, ImageDraw, UnidentifiedImageError

from model_shapes import ModelShape
from pipeline import inspect_rows, tiling
from pipeline import tokenizer as tokenizers
from schemas.shard import IGNORE_INDEX

__all__ = [
    "GALLERY_TOKENS",
    "PLOTS",
    "THUMBNAIL_PX",
    "filter_png",
    "gallery_entry",
    "html",
    "markdown",
    "plot_png",
]

_CSS = """
body { font: 14px/1.45 system-ui, sans-serif; margin: 2em auto; max-width: 1360px; padding: 0 1em;
       color: #222; }
h1 { font-size: 1.6em; } h2 { border-bottom: 1px solid #ccc; padding-bottom: .2em; margin-top: 2em; }
h3 { font-size: 1.05em; margin-bottom: .2em; }
table { border-collapse: collapse; margin: .8em 0; }
th, td { padding: .25em .7em; border-bottom: 1px solid #eee; }
th { text-align: left; background: #f6f6f6; } td.n { text-align: right; font-variant-numeric: tabular-nums; }
tr.total td { font-weight: bold; border-top: 1px solid #999; }
figure { display: inline-block; margin: .5em; vertical-align: top; width: 640px; }
figure img { width: 100%; } figcaption { font-size: .9em; color: #444; }
figure.none { border: 1px dashed #ccc; padding: .6em; width: auto; min-width: 300px; }
p.none { color: #777; font-style: italic; } p.warning { color: #a33; }
dl.definitions dt { font-weight: bold; } dl.definitions dd { margin: 0 0 .4em 1.5em; }
pre { background: #f6f6f6; padding: .6em; overflow-x: auto; font-size: .85em; }
section.gallery-source { margin-bottom: 1em; }
div.sample { display: inline-block; vertical-align: top; width: 420px; margin: .4em; padding: .5em;
             border: 1px solid #ddd; }
img.thumbnail { display: block; max-width: 100%; } p.about { font-size: .85em; color: #444; }
pre.tokens { white-space: pre-wrap; word-break: break-all; }
span.trained { background: #ffe08a; } span.break { color: #777; display: block; } span.more { color: #777; }
"""

_COLOURS = ("#4c72b0", "#dd8452", "#55a868", "#c44e52", "#8172b3", "#937860", "#da8bc3", "#8c8c8c")


def _labels(ax: Axes, xlabel: str, ylabel: str, counts: str = "y") -> None:
    """Axis labels; the `counts` axis ("x" or "y") counts things, so its ticks are whole numbers."""
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    (ax.xaxis if counts == "x" else ax.yaxis).set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))


def _per_source(
    stats: dict[str, Any], count: Callable[[dict[str, Any]], float]
) -> list[tuple[str, dict, str]]:
    """(name, group, colour) of the sources for which `count` of the group is not 0; a source keeps its
    colour in every plot."""
    return [
        (name, group, _COLOURS[index % len(_COLOURS)])
        for index, (name, group) in enumerate(stats["sources"].items())
        if count(group)
    ]


def _legend(ax: Axes) -> None:
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7)


def _stairs(ax: Axes, stats: dict[str, Any], histogram: Callable[[dict], dict], count: Callable) -> None:
    """One outline histogram per source (the groups' `histogram(group)`), overlaid."""
    for name, group, colour in _per_source(stats, count):
        hist = histogram(group)
        ax.stairs(hist["counts"], hist["bin_edges"], label=name, color=colour, linewidth=1.5)
    _legend(ax)


def _grouped_bars(
    ax: Axes, stats: dict[str, Any], by_value: Callable[[dict], dict[str, int]], skip_zero: bool
) -> None:
    """Bars per value ({value: count} of each source's group), one bar of each source side by side."""
    sources = _per_source(stats, lambda g: sum(by_value(g).values()))
    values = sorted({int(v) for _, g, _ in sources for v in by_value(g)} - ({0} if skip_zero else set()))
    width = 0.8 / max(len(sources), 1)
    for index, (name, group, colour) in enumerate(sources):
        counts = by_value(group)
        shift = (index - (len(sources) - 1) / 2) * width
        ax.bar(
            [v + shift for v in values],
            [counts.get(str(v), 0) for v in values],
            width,
            label=name,
            color=colour,
        )
    ax.set_xticks(values)
    _legend(ax)


def _seq_len(ax: Axes, stats: dict[str, Any]) -> None:
    _stairs(ax, stats, lambda g: g["seq_len"]["histogram"], lambda g: g["rows"])
    max_len = stats["overall"]["seq_len"]["max_seq_len"]
    ax.axvline(max_len, color="#222", linestyle="--", linewidth=1)
    ax.annotate(
        f"max_seq_len {max_len:,}",
        (max_len, 1),
        xycoords=("data", "axes fraction"),
        fontsize=7,
        rotation=90,
        va="top",
        ha="right",
    )
    ax.set_xlim(0, max_len * 1.03)
    _labels(ax, "tokens per row (seq_len)", "rows")


def _tokens_per_source(ax: Axes, stats: dict[str, Any]) -> None:
    names = list(stats["sources"])
    image = [stats["sources"][n]["tokens"]["image"]["sum"] for n in names]
    other = [stats["sources"][n]["tokens"]["total"]["sum"] - i for n, i in zip(names, image, strict=True)]
    ax.barh(names, other, label="other positions (text, special, pad)", color=_COLOURS[0])
    ax.barh(names, image, left=other, label="<image> tokens", color=_COLOURS[1])
    ax.invert_yaxis()
    _legend(ax)
    _labels(ax, "tokens (sum of seq_len over rows)", "source", counts="x")


def _images_per_sequence(ax: Axes, stats: dict[str, Any]) -> None:
    _grouped_bars(ax, stats, lambda g: g["images"]["per_sequence"], skip_zero=False)
    _labels(ax, "images in the sequence", "sequences")


def _image_sizes(ax: Axes, stats: dict[str, Any]) -> None:
    sizes = stats["overall"]["images"]["size_log_histogram"]
    per_octave = sizes["bins_per_octave"]
    cells = sizes["cells"]
    low_w, high_w = min(c[0] for c in cells), max(c[0] for c in cells) + 1
    low_h, high_h = min(c[1] for c in cells), max(c[1] for c in cells) + 1
    counts = np.zeros((high_h - low_h, high_w - low_w))
    for i, j, count in cells:
        counts[j - low_h, i - low_w] = count
    counts[counts == 0] = np.nan
    x_edges = [2 ** (i / per_octave) for i in range(low_w, high_w + 1)]
    y_edges = [2 ** (j / per_octave) for j in range(low_h, high_h + 1)]
    shown = ax.pcolormesh(x_edges, y_edges, counts, cmap="viridis", norm=LogNorm(vmin=1))
    plt.colorbar(
        shown, ax=ax, label="images", format=matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:,.0f}")
    )
    ax.set_xscale("log", base=2)
    ax.set_yscale("log", base=2)
    for axis in (ax.xaxis, ax.yaxis):
        axis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:,.0f}"))
    _labels(ax, "width (px, log scale)", "height (px, log scale)")


def _aspect(ax: Axes, stats: dict[str, Any]) -> None:
    _stairs(ax, stats, lambda g: g["images"]["aspect_ratio"], lambda g: g["images"]["count"])
    ticks = list(range(-3, 4))
    ax.set_xticks(ticks, [f"1:{2**-t}" if t < 0 else f"{2**t}:1" for t in ticks])
    _labels(ax, "width : height (log scale; ends include beyond)", "images")


def _grids(ax: Axes, stats: dict[str, Any]) -> None:
    grids = stats["overall"]["images"]["grids"]
    candidates = [tuple(g) for g in stats["candidate_grids"]]
    seen = [tuple(int(v) for v in key.split("x")) for key in grids]
    shown_grids = [(w, h) for w, h in {*candidates, *seen} if w > 0 and h > 0]
    width = max(w for w, _ in [*shown_grids, (1, 1)])
    height = max(h for _, h in [*shown_grids, (1, 1)])
    cells = [[float("nan")] * width for _ in range(height)]
    for w, h in shown_grids:
        cells[h - 1][w - 1] = grids.get(f"{w}x{h}", 0)
        if grids.get(f"{w}x{h}"):
            ax.text(w, h, f"{grids[f'{w}x{h}']:,}", ha="center", va="center", fontsize=6, color="#000")
    colours = matplotlib.colormaps["Blues"].with_extremes(bad="#d9d9d9")  # grey: not a candidate grid
    shown = ax.imshow(cells, origin="lower", extent=(0.5, width + 0.5, 0.5, height + 0.5), cmap=colours)
    plt.colorbar(shown, ax=ax, label="images")
    _labels(ax, "tiles across", "tiles down", counts="x")


def _tokens_per_image(ax: Axes, stats: dict[str, Any]) -> None:
    images = stats["overall"]["images"]
    counts = images["tokens_per_image_counts"]
    values = [int(v) for v in counts]
    ax.vlines(values, 0, list(counts.values()), color=_COLOURS[0], linewidth=2)
    ax.plot(values, list(counts.values()), "o", color=_COLOURS[0], markersize=3)
    for key, style in (("p50", ":"), ("p90", "--"), ("p99", "-.")):
        value = images["tokens_per_image"][key]
        ax.axvline(value, color="#222", linestyle=style, linewidth=1, label=f"{key} {value:,}")
    _legend(ax)
    _labels(ax, "<image> tokens per image", "images")


def _padding(ax: Axes, stats: dict[str, Any]) -> None:
    _stairs(ax, stats, lambda g: g["images"]["padding_waste"]["histogram"], lambda g: g["images"]["count"])
    share = stats["overall"]["images"]["padding_waste"]["share"]
    if share is not None:
        ax.annotate(
            f"overall {share:.1%} of the canvas pixels",
            (0.98, 0.95),
            xycoords="axes fraction",
            ha="right",
            va="top",
            fontsize=8,
        )
    _labels(ax, "padding (% of the tiled canvas)", "images")


def _grounding(ax: Axes, stats: dict[str, Any]) -> None:
    _grouped_bars(ax, stats, lambda g: g["grounding"]["boxes_per_sequence"], skip_zero=True)
    _labels(ax, "boxes in the sequence (1 or more)", "sequences")


def _box_area(ax: Axes, stats: dict[str, Any]) -> None:
    _stairs(ax, stats, lambda g: g["grounding"]["box_area_share"], lambda g: g["grounding"]["boxes"])
    _labels(ax, "box area (% of its image)", "boxes")


def _token_label(token: dict[str, Any]) -> str:
    """A top token as a person reads it: its text with spaces and newlines made visible, and its id."""
    text = token["text"]
    if text is None:
        return f"id {token['id']}"
    visible = text.replace(" ", "␣").replace("\n", "⏎").replace("\t", "⇥")
    visible = "".join(c if c.isprintable() else f"\\x{ord(c):02x}" for c in visible)
    return f"{visible[:14] + '…' if len(visible) > 15 else visible}  ({token['id']})"


def _top_tokens(ax: Axes, stats: dict[str, Any]) -> None:
    top = stats["overall"]["text"]["top_tokens"]
    ax.barh([_token_label(t) for t in top], [t["count"] for t in top], color=_COLOURS[0])
    ax.invert_yaxis()
    ax.tick_params(axis="y", labelsize=7)
    _labels(ax, "occurrences", "token (id)", counts="x")


def _rejects(ax: Axes, stats: dict[str, Any]) -> None:
    reasons = list(stats["rejects"]["by_reason"])
    left = [0] * len(reasons)
    for name, group, colour in _per_source(stats, lambda g: g["rejects"]["total"]):
        counts = [group["rejects"]["by_reason"].get(r, {}).get("count", 0) for r in reasons]
        ax.barh(reasons, counts, left=left, label=name, color=colour)
        left = [a + b for a, b in zip(left, counts, strict=True)]
    ax.invert_yaxis()
    ax.tick_params(axis="y", labelsize=7)
    _legend(ax)
    _labels(ax, "records", "reason", counts="x")


def _histogram_bars(ax: Axes, histogram: dict[str, Any]) -> None:
    edges = histogram["bin_edges"]
    widths = [b - a for a, b in itertools.pairwise(edges)]
    ax.bar(edges[:-1], histogram["counts"], width=widths, align="edge", color=_COLOURS[0])


def _packed_tokens(ax: Axes, stats: dict[str, Any]) -> None:
    _histogram_bars(ax, stats["overall"]["packing"]["tokens_per_row"]["histogram"])
    max_len = stats["overall"]["seq_len"]["max_seq_len"]
    ax.axvline(max_len, color="#222", linestyle="--", linewidth=1, label=f"max_seq_len {max_len:,}")
    ax.set_xlim(0, max_len * 1.03)
    _legend(ax)
    _labels(ax, "tokens of the row's documents (pad left out)", "packed rows")


def _packed_tiles(ax: Axes, stats: dict[str, Any]) -> None:
    _histogram_bars(ax, stats["overall"]["packing"]["tiles_per_row"]["histogram"])
    budget = (((stats.get("run") or {}).get("config") or {}).get("sequence") or {}).get("max_tiles")
    if isinstance(budget, int):
        ax.axvline(budget, color="#222", linestyle="--", linewidth=1, label=f"max_tiles {budget}")
        ax.set_xlim(0, max(ax.get_xlim()[1], budget * 1.05))
    _legend(ax)
    _labels(ax, "tiles of the row (per image: global view + local tiles)", "packed rows")


def _near_distances(ax: Axes, stats: dict[str, Any]) -> None:
    dedup = stats["dedup"]
    histogram = dedup["near_distance_histogram"]
    _histogram_bars(ax, histogram)
    thresholds = dedup["near_distance"]
    for source, value in thresholds.items():
        ax.axvline(
            value + 1,
            color="#c44e52",
            linestyle="--",
            linewidth=1,
            label=f"near_distance {value}" + (f" ({source})" if source else ""),
        )
    used = [i for i, count in enumerate(histogram["counts"]) if count]
    right = max([*used, *(v for v in thresholds.values())], default=0) + 2
    ax.set_xlim(0, min(right, len(histogram["counts"])))
    _legend(ax)
    _labels(ax, "distance between pHashes (bits of 64)", "candidate images")


@dataclass(frozen=True)
class Plot:
    """A plot of the report: title, caption, how to draw it, and why there is nothing to draw (None: there
    is)."""

    title: str
    caption: str
    draw: Callable[[Axes, dict[str, Any]], None]
    empty: Callable[[dict[str, Any]], str | None]


def _no_images(stats: dict[str, Any]) -> str | None:
    return None if stats["overall"]["images"]["count"] else "no images"


def _no_boxes(stats: dict[str, Any]) -> str | None:
    return None if stats["overall"]["grounding"]["boxes"] else "no grounding boxes"


def _no_packing(stats: dict[str, Any]) -> str | None:
    packing = stats["overall"].get("packing")
    return None if packing and "tokens_per_row" in packing else "no packed rows"


PLOTS: dict[str, Plot] = {
    "sequence-lengths": Plot(
        "Sequence length per row, by source",
        "Rows by length, one line per source; the dashed line is max_seq_len.",
        _seq_len,
        lambda s: None if s["overall"]["rows"] else "no rows",
    ),
    "tokens-per-source": Plot(
        "Tokens per source",
        "All positions of each source's rows, <image> tokens apart.",
        _tokens_per_source,
        lambda s: None if s["overall"]["tokens"]["total"]["sum"] else "no tokens",
    ),
    "images-per-sequence": Plot(
        "Images per sequence, by source",
        "Sequences by their number of images, per source.",
        _images_per_sequence,
        _no_images,
    ),
    "image-sizes": Plot(
        "Original image sizes (all sources)",
        "Original width and height of every image, quarter-octave bins, axes fitted to the data.",
        _image_sizes,
        lambda s: (
            _no_images(s) or (None if "size_log_histogram" in s["overall"]["images"] else "not recorded")
        ),
    ),
    "aspect-ratios": Plot(
        "Aspect ratio, by source", "Width : height of the images, per source.", _aspect, _no_images
    ),
    "tile-grids": Plot(
        "Tile grids chosen (all sources)",
        "How many images got each tile grid (tiles across × down); grey: not a candidate grid.",
        _grids,
        _no_images,
    ),
    "tokens-per-image": Plot(
        "<image> tokens per image (all sources)",
        "Images by their number of <image> tokens; lines at the 50th, 90th and 99th percentiles.",
        _tokens_per_image,
        lambda s: (
            _no_images(s) or (None if "tokens_per_image_counts" in s["overall"]["images"] else "not recorded")
        ),
    ),
    "padding-waste": Plot(
        "Padding waste of dynamic tiling, by source",
        "Share of each image's tiled canvas that is padding, per source.",
        _padding,
        _no_images,
    ),
    "boxes-per-sequence": Plot(
        "Grounding boxes per sequence, by source",
        "Sequences with grounding boxes, by their number of boxes.",
        _grounding,
        _no_boxes,
    ),
    "box-area": Plot(
        "Box area, by source",
        "Grounding boxes by their area as a share of their image, per source.",
        _box_area,
        _no_boxes,
    ),
    "top-tokens": Plot(
        "Most frequent ordinary text tokens (all sources)",
        "The 20 most frequent ordinary text tokens (special ids left out); ␣ is a space, ⏎ a newline.",
        _top_tokens,
        lambda s: None if s["overall"]["text"]["top_tokens"] else "no text tokens",
    ),
    "rejects": Plot(
        "Rejects by reason and source",
        "Rejected records by reason, one colour per source.",
        _rejects,
        lambda s: None if s["rejects"]["total"] else "no rejects",
    ),
    "packed-tokens-per-row": Plot(
        "Document tokens per packed row",
        "Packed rows by the tokens of their documents; the rest of a row is pad.",
        _packed_tokens,
        _no_packing,
    ),
    "packed-tiles-per-row": Plot(
        "Tiles per packed row",
        "Packed rows by the image tiles they feed the vision tower.",
        _packed_tiles,
        _no_packing,
    ),
    "near-duplicate-distances": Plot(
        "Hamming distance of near-duplicate candidates",
        "Near-duplicate candidate images by the distance to their nearest candidate; dashed: the threshold "
        "(at or below it, a later copy is dropped).",
        _near_distances,
        lambda s: (
            None if (s.get("dedup") or {}).get("near_distance_histogram") else "no near-duplicate search"
        ),
    ),
}
"""Plot name (the figure's id) → caption, drawing function and emptiness test, in page order."""


def _render(title: str, draw: Callable[[Axes], None]) -> tuple[bytes, dict[str, str]]:
    """What `draw` puts on one axes, titled, as PNG bytes (no timestamp: the same plot gives the same bytes),
    and the title and axis labels the axes end with."""
    figure, ax = plt.subplots(figsize=(6.4, 3.8), dpi=100)
    try:
        draw(ax)
        ax.set_title(title, fontsize=10)
        labels = {"title": ax.get_title(), "xlabel": ax.get_xlabel(), "ylabel": ax.get_ylabel()}
        figure.tight_layout()
        buffer = io.BytesIO()
        figure.savefig(buffer, format="png", metadata={"Software": None})
        return buffer.getvalue(), labels
    finally:
        plt.close(figure)


def plot_png(name: str, stats: dict[str, Any]) -> bytes:
    """One named plot of `PLOTS` as PNG bytes."""
    return _render(PLOTS[name].title, lambda ax: PLOTS[name].draw(ax, stats))[0]


def _figure(name: str, title: str, caption: str, draw: Callable[[Axes], None], empty: str | None) -> str:
    """A `<figure>`: the plot with its title and axis labels as data attributes, or, when there is nothing to
    draw, its title and "none" with the reason, never empty axes."""
    if empty is not None:
        return (
            f'<figure id="{_esc(name)}" class="none" data-title="{_esc(title)}" data-empty="{_esc(empty)}">'
            f'<figcaption><b>{_esc(title)}</b></figcaption><p class="none">none: {_esc(empty)}.</p></figure>'
        )
    png, labels = _render(title, draw)
    attributes = " ".join(f'data-{key}="{_esc(value)}"' for key, value in labels.items())
    encoded = base64.b64encode(png).decode("ascii")
    return (
        f'<figure id="{_esc(name)}" {attributes}>'
        f'<img alt="{_esc(title)}" src="data:image/png;base64,{encoded}">'
        f"<figcaption><b>{_esc(title)}.</b> {_esc(caption)}</figcaption></figure>"
    )


def _plots_html(stats: dict[str, Any]) -> list[str]:
    return [
        _figure(name, plot.title, plot.caption, lambda ax, plot=plot: plot.draw(ax, stats), plot.empty(stats))
        for name, plot in PLOTS.items()
    ]


def _fmt(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 1000 else f"{value:,.0f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


class _Number(str):
    """A formatted number (a count with its share, ...): right-aligned like one."""

    __slots__ = ()


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]], total: Sequence[Any] | None = None) -> str:
    """An HTML table, with a bold totals row when given; "none" instead of a table without rows."""
    if not rows:
        return '<p class="none">none</p>'

    def cells(row: Sequence[Any]) -> str:
        return "".join(
            f'<td class="n">{_esc(_fmt(c))}</td>'
            if isinstance(c, int | float | _Number) or c is None
            else f"<td>{_esc(c)}</td>"
            for c in row
        )

    head = "".join(f"<th>{_esc(h)}</th>" for h in header)
    body = "".join(f"<tr>{cells(row)}</tr>" for row in rows)
    if total is not None:
        body += f'<tr class="total">{cells(total)}</tr>'
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


def _share(count: int, whole: int) -> _Number:
    """`count (p %)` of `whole`; the share is left out when `whole` is 0."""
    return _Number(f"{count:,} ({count / whole:.1%})" if whole else f"{count:,}")


def _dropped_total(group: dict[str, Any]) -> int:
    dropped = group.get("dropped")
    return dropped["total"] if isinstance(dropped, dict) else dropped or 0  # an int in stats.json version 1


_SOURCE_HEADER = (
    "source",
    "read",
    "written",
    "rejected",
    "of which dropped on purpose",
    "rows",
    "tokens",
    "image share",
    "truncated",
)


def _source_row(name: str, read: int, written: int, rejected: int, dropped: int, group: dict) -> list[Any]:
    return [
        name,
        read,
        _share(written, read),
        _share(rejected, read),
        _share(dropped, read),
        group["rows"],
        group["tokens"]["total"]["sum"],
        _percent(group["tokens"]["image_share"]),
        group["truncated"],
    ]


def _source_rows(stats: dict[str, Any]) -> list[list[Any]]:
    return [
        _source_row(name, s["read"], s["written"], s["rejected"], _dropped_total(s), s)
        for name, s in stats["sources"].items()
    ]


def _totals_row(stats: dict[str, Any]) -> list[Any]:
    sources = stats["sources"].values()
    read = sum(s["read"] for s in sources)
    return _source_row(
        "all sources",
        read,
        sum(s["written"] for s in sources),
        stats["rejects"]["total"],
        _dropped_total(stats["overall"]),
        stats["overall"],
    )


_DIST_KEYS = ("count", "sum", "mean", "min", "p50", "p90", "p99", "max")
_TOKEN_NAMES = {
    "total": "all positions (seq_len)",
    "text": "non-image tokens",
    "image": "<image> tokens",
    "loss": "loss tokens",
}
_DEFINITIONS = (
    ("all positions (seq_len)", "every position of a row: <image> tokens, text, special tokens and pad."),
    (
        "non-image tokens",
        "the positions of a row that are no <image> token and no pad: bos, text, special tokens (roles, "
        "grounding markup), eos.",
    ),
    (
        "ordinary text tokens",
        "non-image tokens whose id is no special id: the text itself (the top tokens, the byte-fallback "
        "share and characters per token are over these).",
    ),
    ("loss tokens", "positions trained on: labels that are not -100, position 0 left out."),
    (
        "rejected",
        "records that became a reject row, whatever the reason; of which dropped on purpose: sound samples "
        "left out by the sequence budget (too_long, too_many_tiles), a filter, deduplication or "
        "decontamination.",
    ),
)


def _token_rows(group: dict[str, Any]) -> list[list[Any]]:
    return [[label, *(group["tokens"][name][k] for k in _DIST_KEYS)] for name, label in _TOKEN_NAMES.items()]


def _definitions_html() -> str:
    items = "".join(f"<dt>{_esc(term)}</dt><dd>{_esc(meaning)}</dd>" for term, meaning in _DEFINITIONS)
    return f'<dl class="definitions">{items}</dl>'


def _run_html(stats: dict[str, Any], made: str | None, location: str | None) -> list[str]:
    """The run header: when, what made the output, with which config, and where it is."""
    run = stats.get("run") or {}
    output = stats["output"]
    rows = [
        ["report made", made],
        ["output", location],
        ["vl2prep version", run.get("version")],
        ["code sha256", (run.get("source_sha256") or "–")[:16]],
        ["config sha256", (run.get("config_sha256") or "–")[:16]],
        ["model shape", f"{output['model_shape']} ({output['shape_fingerprint']})"],
        ["tokenizer sha256", (output["tokenizer_sha256"] or "–")[:16]],
        ["max_seq_len", output["max_seq_len"]],
        ["packing", "on" if output["packing"] else "off"],
    ]
    parts = [_table(("run", ""), [row for row in rows if row[1] is not None])]
    if run.get("config") is not None:
        config = json.dumps(run["config"], indent=2, ensure_ascii=False, sort_keys=False)
        parts.append(f"<details><summary>config as written</summary><pre>{_esc(config)}</pre></details>")
    return parts


def _rejects_html(stats: dict[str, Any]) -> list[str]:
    """Rejects per source with their share of the source's records read, then all sources together."""
    parts = []
    for name, source in stats["sources"].items():
        reasons = source["rejects"]["by_reason"]
        if not reasons:
            continue
        parts += [
            f"<h3>{_esc(name)}: {_share(source['rejected'], source['read'])} of {source['read']:,} read</h3>",
            _table(
                ("reason", "records", "% of read", "example key"),
                [
                    [
                        r,
                        v["count"],
                        _percent(v["count"] / source["read"] if source["read"] else None),
                        v["example_key"],
                    ]
                    for r, v in reasons.items()
                ],
            ),
        ]
    if not parts:
        return ['<p class="none">none: every record read was written.</p>']
    read = sum(s["read"] for s in stats["sources"].values())
    rows = [
        [r, v["count"], _percent(v["count"] / read if read else None), v["example_key"]]
        for r, v in stats["rejects"]["by_reason"].items()
    ]
    return [*parts, "<h3>all sources</h3>", _table(("reason", "records", "% of read", "example key"), rows)]


_DROPPED_HEADER = ("source", "over budget", "filtered", "duplicates", "contaminated", "total")
_DROPPED_KEYS = ("over_budget", "filtered", "duplicates", "contaminated", "total")


def _dropped_rows(stats: dict[str, Any]) -> list[list[Any]]:
    rows = []
    for name, source in stats["sources"].items():
        dropped = source.get("dropped")
        if isinstance(dropped, dict) and dropped["total"]:
            rows.append([name, *(_share(dropped[key], source["read"]) for key in _DROPPED_KEYS)])
    return rows


def _packing_html(stats: dict[str, Any]) -> list[str]:
    packing = stats.get("packing")
    measured = stats["overall"].get("packing")
    if not packing and not measured:
        return []
    parts = ["<h2>Packing</h2>"]
    if packing:
        header = ("source", "rows", "documents", "token fill", "tile fill")
        rows = [
            [name, e["rows"], e["documents"], _percent(e["token_fill"]), _percent(e["tile_fill"])]
            for name, e in packing["sources"].items()
            if e
        ]
        total = packing["total"] or {}
        parts.append(
            _table(
                header,
                rows,
                [
                    "all sources",
                    total.get("rows"),
                    total.get("documents"),
                    _percent(total.get("token_fill")),
                    _percent(total.get("tile_fill")),
                ],
            )
        )
    if measured:
        parts.append(
            f"<p>In the shards: {measured['rows']:,} packed rows holding {measured['documents']:,} "
            f"documents; documents fill {_percent(measured['efficiency'])} of the rows' positions.</p>"
        )
    return parts


def _curation_html(stats: dict[str, Any]) -> list[str]:
    """Deduplication and decontamination, when the manifest records them."""
    parts = []
    dedup = stats.get("dedup")
    if dedup:
        thresholds = ", ".join(f"{v}" + (f" ({s})" if s else "") for s, v in dedup["near_distance"].items())
        parts += [
            "<h2>Deduplication</h2>",
            f"<p>{_fmt(dedup['duplicates'])} duplicates dropped"
            + (f"; near-duplicate threshold {_esc(thresholds)} bits" if thresholds else "")
            + ".</p>",
        ]
    decontamination = stats.get("decontamination")
    if decontamination is not None:
        keys = sorted({k for v in decontamination.values() if isinstance(v, dict) for k in v})
        rows = [
            [name, *([value.get(k) for k in keys] if isinstance(value, dict) else [value])]
            for name, value in decontamination.items()
        ]
        parts += [
            "<h2>Decontamination</h2>",
            _table(("evaluation set", *(keys or ["samples dropped"])), rows),
        ]
    return parts


def html(
    stats: dict[str, Any],
    validation: dict[str, Any] | None = None,
    made: str | None = None,
    location: str | None = None,
) -> str:
    """The self-contained HTML report; with a `validation.json` dict, a forward-pass validation section.
    `made` (when the report was made) and `location` (the output's) go into the run header."""
    overall = stats["overall"]
    mixture = stats["mixture"]
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8"><title>vl2prep dataset report</title>',
        f"<style>{_CSS}</style></head><body>",
        "<h1>vl2prep dataset report</h1>",
        *_problems_html(stats.get("problems"), "Files left out of these statistics"),
        '<h2 id="run">Run</h2>',
        *_run_html(stats, made, location),
        '<h2 id="sources">Sources</h2>',
        "<p>Shares are of the records read.</p>",
        _table(_SOURCE_HEADER, _source_rows(stats), _totals_row(stats)),
        '<h2 id="rejects">Rejects</h2>',
        *_rejects_html(stats),
        '<h2 id="dropped">Dropped on purpose</h2>',
        "<p>Sound samples left out by the sequence budget, a filter, deduplication or decontamination; "
        "counted among the rejects above.</p>",
        _table(_DROPPED_HEADER, _dropped_rows(stats)),
        '<h2 id="tokens">Tokens (all sources, per row)</h2>',
        _table(("tokens", *_DIST_KEYS), _token_rows(overall)),
        _definitions_html(),
        '<h2 id="kinds">Kinds</h2>',
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
        '<h2 id="mixture">Mixture</h2>',
        _table(
            ("source", "sequences", "tokens", "share"),
            [
                [name, m["sequences"], m["tokens"], _percent(m["token_share"])]
                for name, m in mixture["per_source"].items()
            ],
        ),
        f"<p>Tokens of sequences with images {_fmt(mixture['vl_tokens'])}, of text-only sequences "
        f"{_fmt(mixture['text_only_tokens'])}, ratio {_fmt(mixture['vl_to_text_only'])}.</p>",
        '<h2 id="images-and-text">Images and text</h2>',
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
                ["ordinary text tokens (special ids left out)", overall["text"]["tokens"]],
                ["distinct ordinary text tokens", overall["text"]["distinct_tokens"]],
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
        *_packing_html(stats),
        *_curation_html(stats),
        *(_gallery_html(stats["gallery"]) if "gallery" in stats else []),
        '<h2 id="plots">Plots</h2>',
        *_plots_html(stats),
    ]
    parts += _filters_html(stats)
    if validation is not None:
        parts += _validation_html(validation)
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


_FILTER_HEADER = ("source", "quantity", "filters", "measured", "cut", "dropped by others", "min", "max")
_FILTER_UNITS = {
    "image_min_side": "smallest image side (px)",
    "image_max_aspect_ratio": "largest long side / short side",
    "image_max_pixels": "largest image (pixels)",
    "text_chars": "text characters",
    "text_tokens": "text tokens",
    "padding_share": "largest padding share of a tiled canvas",
    "box_min_area": "smallest box area (px²)",
}


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
    return _render(f"{source}: {quantity}", lambda ax: _filtered(ax, quantity, entry))[0]


def _filtered(ax: Axes, quantity: str, entry: dict[str, Any]) -> None:
    histogram = entry["histogram"]
    edges = histogram["bin_edges"]
    logarithmic = edges[-1] > 1.0
    left = [max(edge, 0.5) for edge in edges[:-1]] if logarithmic else edges[:-1]
    widths = [b - a for a, b in zip(left, edges[1:], strict=True)]
    ax.bar(left, histogram["counts"], width=widths, align="edge", color="#4c72b0", label="measured")
    ax.bar(left, histogram["cut_counts"], width=widths, align="edge", color="#c44e52", label="cut")
    thresholds = list(entry["filters"].values())
    for name, value in entry["filters"].items():
        ax.axvline(value, color="#222", linestyle="--", linewidth=1)
        ax.annotate(name, (value, 1), xycoords=("data", "axes fraction"), fontsize=7, rotation=90, va="top")
    if logarithmic:
        ax.set_xscale("log", base=2)
        used = [i for i, count in enumerate(histogram["counts"]) if count]
        if used:
            low = max(edges[max(used[0] - 1, 0)], 0.5)
            high = edges[min(used[-1] + 2, len(edges) - 1)]
            # A threshold beyond the data stays inside the plot.
            ax.set_xlim(
                min([low, *(t / 1.25 for t in thresholds)]), max([high, *(t * 1.25 for t in thresholds)])
            )
    else:
        ax.set_xlim(0, 1)
    ax.legend(fontsize=7)
    _labels(ax, _FILTER_UNITS.get(quantity, quantity), "samples")


def _filters_html(stats: dict[str, Any]) -> list[str]:
    if not stats.get("filters"):
        return []
    parts = ['<h2 id="filters">Filters</h2>', _table(_FILTER_HEADER, _filter_rows(stats))]
    for source, quantities in stats["filters"].items():
        for quantity, entry in quantities.items():
            parts.append(
                _figure(
                    f"filter-{source}-{quantity}",
                    f"{source}: {quantity}",
                    "All measured values; red: the part a filter on this quantity cut; dashed: its "
                    "thresholds.",
                    lambda ax, quantity=quantity, entry=entry: _filtered(ax, quantity, entry),
                    None if entry["measured"] else "nothing measured",
                )
            )
    return parts


# ------------------------------------------------------------------------------------------------
# the gallery: a few rows per source, their first image's canvas and the start of their sequence

GALLERY_TOKENS = 48
"""Tokens of a gallery row shown, not counting `<image>` positions (each image span is one marker)."""
THUMBNAIL_PX = 192
"""Longest side of a gallery thumbnail, in pixels."""
_THUMBNAIL_FORMATS = ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF")
"""The only Pillow plugins that may parse an image's bytes for a thumbnail (those the ingest accepts; JPEG's
reads MPO files too)."""
_THUMBNAIL_MAX_PIXELS = 64_000_000
"""Decoded pixels (after JPEG's reduced-size decoding) above which no thumbnail is made: memory stays bounded
whatever an output holds."""
_GRID_LINE = (230, 30, 30)
_PALETTE = 64
"""Colours of a thumbnail, the grid lines' included."""


def gallery_entry(
    row: dict[str, Any], shape: ModelShape, tokenizer: tokenizers.Tokenizer | None, shard: str, number: int
) -> dict[str, Any]:
    """What the report's gallery shows of one shard row (row `number` of the file `shard`): who it is, its
    first image's local canvas as a PNG thumbnail with the tile grid drawn (`image`: None without images) and
    the first `GALLERY_TOKENS` tokens decoded with the output's tokenizer as [trained, text] pieces (`tokens`:
    None without a tokenizer). A row that cannot be shown (an undecodable image, a grid that is not a tile
    grid) says why in the image's `note`; a row too damaged to show at all (values no sound shard holds) says
    why in the entry's `note`, with neither image nor tokens. The same row gives the same dict, bytes
    included."""
    entry = {
        "sample_id": row.get("sample_id"),
        "key": row.get("key"),
        "kind": row.get("kind"),
        "shard": shard,
        "row": number,
        "seq_len": None,
        "image": None,
        "tokens": None,
        "note": None,
    }
    try:
        ids = np.asarray(row["input_ids"] if row["input_ids"] is not None else [], dtype=np.int64)
        entry["seq_len"] = len(ids)
        entry["image"] = _gallery_image(row, shape)
        entry["tokens"] = _gallery_tokens(row, ids, shape, tokenizer) if tokenizer is not None else None
    except (TypeError, ValueError, IndexError, KeyError) as error:
        entry |= {"image": None, "tokens": None, "note": f"the row cannot be shown: {_one_line(error)}"}
    return entry


def _one_line(error: BaseException) -> str:
    return " ".join(str(error).split()) or type(error).__name__


def _gallery_image(row: dict[str, Any], shape: ModelShape) -> dict[str, Any] | None:
    images = row["images"] or []
    if not images:
        return None
    image = images[0]
    grids = row["images_spatial_crop"] or []
    grid = [int(v) for v in grids[0]] if len(grids) else None
    entry = {
        "images": len(images),
        "format": image["format"],
        "width_px": image["width_px"],
        "height_px": image["height_px"],
        "grid": grid,
        "thumbnail_png": None,
        "note": None,
    }
    tile = shape.image_size
    layouts = {(w // tile, h // tile) for w, h in tiling.candidate_resolutions(shape)} | {(1, 1)}
    if grid is None or tuple(grid) not in layouts:
        entry["note"] = f"grid {grid} is not a tile grid of {shape.name}"
    elif image["bytes"] is None:
        entry["note"] = "image stored by reference (sequence.embed_images: false): no thumbnail"
    elif not all(isinstance(image[side], int) and image[side] > 0 for side in ("width_px", "height_px")):
        entry["note"] = f"image size {image['width_px']}×{image['height_px']} is not a size"
    else:
        try:
            png = _canvas_thumbnail(image["bytes"], (image["width_px"], image["height_px"]), grid, tile)
            entry["thumbnail_png"] = base64.b64encode(png).decode("ascii")
        except UnidentifiedImageError:  # its message names a memory address: stats.json would differ
            entry["note"] = f"image cannot be decoded: not {', '.join(_THUMBNAIL_FORMATS)}"
        except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
            entry["note"] = f"image cannot be decoded: {_one_line(error)}"
    return entry


def _canvas_thumbnail(data: bytes, size: tuple[int, int], grid: list[int], tile: int) -> bytes:
    """PNG bytes of the image's local canvas (grid · tile pixels a side) scaled to `THUMBNAIL_PX`: the image
    fitted inside it and centred as the tiling lays it out (`tiling.contain_size` of its stored `size`, grey
    padding), with the lines between tiles drawn. Scaling rounds to thumbnail pixels, so lines and edges are
    within a pixel of their true place; the pixels are a bilinear preview, not the tiles the model sees."""
    canvas_w, canvas_h = grid[0] * tile, grid[1] * tile
    scale = THUMBNAIL_PX / max(canvas_w, canvas_h)
    fit_w, fit_h = tiling.contain_size(size, (canvas_w, canvas_h))
    thumb = (max(1, round(canvas_w * scale)), max(1, round(canvas_h * scale)))
    fitted = (max(1, round(fit_w * scale)), max(1, round(fit_h * scale)))
    with Image.open(io.BytesIO(data), formats=_THUMBNAIL_FORMATS) as image:
        image.draft("RGB", fitted)  # JPEG decodes at a reduced size; other formats ignore it
        if image.width * image.height > _THUMBNAIL_MAX_PIXELS:
            raise ValueError(f"{image.width}×{image.height} px is too large for a thumbnail")
        picture = tiling.to_rgb(image).resize(fitted, Image.Resampling.BILINEAR)
    canvas = Image.new("RGB", thumb, (127, 127, 127))
    canvas.paste(picture, ((thumb[0] - fitted[0]) // 2, (thumb[1] - fitted[1]) // 2))
    # A palette keeps a thumbnail near 15 KB (stats.json holds them); the lines get an entry of their own,
    # so that no colour of the picture is mistaken for a tile edge.
    canvas = canvas.quantize(colors=_PALETTE - 1, method=Image.Quantize.MEDIANCUT)
    palette = canvas.getpalette()[: 3 * (_PALETTE - 1)]
    canvas.putpalette([*palette, *[0] * (3 * (_PALETTE - 1) - len(palette)), *_GRID_LINE])
    draw = ImageDraw.Draw(canvas)
    line = _PALETTE - 1
    for column in range(1, grid[0]):
        x = round(column * thumb[0] / grid[0])
        draw.line([(x, 0), (x, thumb[1] - 1)], fill=line, width=1)
    for row in range(1, grid[1]):
        y = round(row * thumb[1] / grid[1])
        draw.line([(0, y), (thumb[0] - 1, y)], fill=line, width=1)
    draw.rectangle([(0, 0), (thumb[0] - 1, thumb[1] - 1)], outline=line, width=1)
    buffer = io.BytesIO()
    canvas.save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()


def _gallery_tokens(
    row: dict[str, Any], ids: np.ndarray, shape: ModelShape, tokenizer: tokenizers.Tokenizer
) -> dict[str, Any]:
    """The first `GALLERY_TOKENS` tokens other than `<image>` (image spans before the last of them whole) as
    `pieces`, [trained, text] runs decoded as `vl2prep inspect` decodes them (`pipeline.inspect_rows`), a
    document break of a packed row as [False, None]; `more` counts the tokens left out."""
    labels = np.asarray(row["labels"] if row["labels"] is not None else [], dtype=np.int64)
    trained = np.zeros(len(ids), bool)
    labelled = min(len(ids), len(labels))
    trained[:labelled] = labels[:labelled] != IGNORE_INDEX
    trained[:1] = False  # as `vl2prep inspect`: the first bos is no target
    counted = np.cumsum(ids != shape.special_tokens.image)
    end = int(np.searchsorted(counted, GALLERY_TOKENS) + 1) if len(ids) else 0
    end = min(end, len(ids))
    cu_seqlens = row.get("cu_seqlens")
    starts = {int(c) for c in (cu_seqlens if cu_seqlens is not None else []) if 0 < c < end}
    spans = [
        (int(offset), grid)
        for offset, grid in zip(row["image_token_offsets"], row["images_spatial_crop"], strict=False)
    ]
    pieces: list[list[Any]] = []
    first = 0
    for position in range(1, end + 1):
        if position < end and position not in starts and trained[position] == trained[first]:
            continue
        # One run: the same training state and no document break, decoded by the inspect helpers.
        view = {
            "image_token_offsets": [o - first for o, _ in spans if first <= o < position],
            "images_spatial_crop": [g for o, g in spans if first <= o < position],
        }
        text = inspect_rows._sequence(view, ids[first:position], trained[first:position], shape, tokenizer)
        if trained[first]:
            text = text.removeprefix(inspect_rows.TRAINED_OPEN).removesuffix(inspect_rows.TRAINED_CLOSE)
        pieces.append([bool(trained[first]), text])
        if position in starts:
            pieces.append([False, None])
        first = position
    return {"pieces": pieces, "more": len(ids) - end}


def _gallery_html(gallery: dict[str, list[dict[str, Any]]] | None) -> list[str]:
    """The gallery section: per source, a card per row with its thumbnail (or why there is none) and its
    first tokens, the trained-on ones shaded."""
    parts = [
        '<h2 id="gallery">Gallery</h2>',
        "<p>The first rows of each source's first shard. The thumbnail is the first image's local canvas as "
        "the tiling lays it out (the image fitted and centred in grid · 384 px, grey padding), scaled to "
        f"{THUMBNAIL_PX} px, with the tile grid drawn in red: an approximate drawing, lines within a pixel "
        f"of their place. Tokens: the first {GALLERY_TOKENS} that are not &lt;image&gt;, decoded with the "
        "output's tokenizer, each image span as one marker; "
        '<span class="trained">shaded</span> text is trained on (label not -100).</p>',
    ]
    if not gallery:
        return [*parts, '<p class="none">none: no source has rows.</p>']
    for source, entries in gallery.items():
        cards = "".join(_gallery_card(entry) for entry in entries)
        parts.append(
            f'<section class="gallery-source" id="gallery-{_esc(source)}" data-source="{_esc(source)}">'
            f"<h3>{_esc(source)}</h3>{cards}</section>"
        )
    return parts


def _gallery_card(entry: dict[str, Any]) -> str:
    image = entry["image"]
    if entry["note"] is not None:
        picture, about = "", ""  # the note, below, says why
    elif image is None:
        picture = '<p class="none">no image (text only)</p>'
        about = ""
    else:
        grid = "×".join(str(v) for v in image["grid"]) if image["grid"] else "?"
        about = (
            f" · image 1 of {image['images']}: {_esc(image['format'])} "
            f"{image['width_px']}×{image['height_px']}, grid {_esc(grid)}"
        )
        picture = (
            f'<img class="thumbnail" alt="canvas of {_esc(entry["sample_id"])}" '
            f'src="data:image/png;base64,{image["thumbnail_png"]}">'
            if image["thumbnail_png"] is not None
            else f'<p class="none">{_esc(image["note"])}</p>'
        )
    tokens = entry["tokens"]
    if entry["note"] is not None:
        sequence = f'<p class="none">{_esc(entry["note"])}</p>'
    elif tokens is None:
        sequence = '<p class="none">the output\'s tokenizer was not found: no tokens decoded</p>'
    else:
        spans = "".join(
            '<span class="break">── next document ──</span>'
            if text is None
            else f'<span class="trained">{_esc(text)}</span>'
            if trained
            else _esc(text)
            for trained, text in tokens["pieces"]
        )
        more = f'<span class="more"> … {tokens["more"]:,} more tokens</span>' if tokens["more"] else ""
        sequence = f'<pre class="tokens">{spans}{more}</pre>'
    return (
        f'<div class="sample" data-sample-id="{_esc(entry["sample_id"])}">{picture}'
        f'<p class="about">{_esc(entry["kind"])} · key {_esc(entry["key"])} · {_esc(entry["shard"])} '
        f"row {entry['row']} · {_fmt(entry['seq_len'])} tokens{about}</p>{sequence}</div>"
    )


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
                _md_table(_SOURCE_HEADER, [*_source_rows(stats), _totals_row(stats)]),
                f"Rejects: {reasons}. Shares are of the records read; tokens are all positions (seq_len).",
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
    """The forward-pass validation section (`validation.json`): checks, failures, losses (only with real
    weights: the loss of a random model says nothing about the data), expert load. A table without rows is
    left out."""
    samples, loss = validation["samples"], validation["loss"]
    weights = validation["model"]["weights"]
    if weights:
        losses = f"Per-sample loss mean {_fmt(loss['mean'])}, max {_fmt(loss['max'])}."
    else:
        losses = (
            "Random weights: no loss is shown, as that of an untrained model says nothing about the data."
        )
    parts = [
        '<h2 id="validation">Forward-pass validation</h2>',
        f"<p>{samples['validated']:,} samples through model <b>{_esc(validation['model']['shape'])}</b> "
        f"(weights {_esc(weights or 'random')}): {samples['failed']:,} failed. {losses}</p>",
        *_problems_html(validation.get("problems"), "Rows that could not be validated"),
    ]
    tables = [
        ("Checks", ("check", "passed", "failed"), _validation_rows(validation)),
        (
            "Failures",
            ("sample_id", "check", "what"),
            [[f["sample_id"], f["check"], f["message"]] for f in validation["failures"]],
        ),
        (
            "Highest losses",
            ("sample_id", "loss"),
            [[h["sample_id"], h["loss"]] for h in validation["highest_loss"]] if weights else [],
        ),
        (
            "Expert load",
            ("MoE layer", "routed tokens", "imbalance (max/mean)", "tokens per expert"),
            [
                [layer, e["assignments"], e["imbalance"], " ".join(map(str, e["tokens_per_expert"]))]
                for layer, e in validation["expert_load"].items()
            ],
        ),
    ]
    for title, header, rows in tables:
        if rows:
            parts += [f"<h3>{title}</h3>", _table(header, rows)]
    return parts


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
