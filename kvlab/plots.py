"""matplotlib figures used by the notebooks.

Each figure is built once and then only updated. Drawing tick labels is what makes a
matplotlib redraw slow (tens of labels: ~150 ms), so every figure here renders its static
parts (axes, token labels, colour bar) once into a kept background and, on a slider move,
draws only the artists that changed on top of it ("blitting"): ~15 ms for a 64-token map.
Figures are plain `Figure` objects (no pyplot state); `png()` gives bytes for an `Image`.
"""

from __future__ import annotations

import io
import math
from functools import cache

import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib import font_manager, ft2font
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle
from matplotlib.ticker import FormatStrFormatter
from PIL import Image

from . import bench as _bench
from .attention import token_labels

CMAP = "Blues"  # zero weight is white; masked (future) cells are hatched grey instead
MASK_FACE = "#e4e4e4"
MASK_HATCH = "////"
HIGHLIGHT = "#d62728"
MAX_TICK_LABELS = 64  # beyond this, every k-th token is labelled
LABEL_CHARS = 14  # tick labels are cut to this many characters
DPI = 90


class BlitFigure:
    """A figure whose static parts are drawn once; `png()` redraws only the dynamic artists.

    Subclasses list their changing artists in `self.dynamic`. Static parts (tick labels,
    limits, colour scale) are named by `self.static_key`: a background is kept per key (a
    few), so going back to an earlier key is fast too. `invalidate()` forgets them all.
    """

    KEEP = 8  # backgrounds kept

    def __init__(self, width: float, height: float):
        self.figure = Figure(figsize=(width, height), dpi=DPI)
        FigureCanvasAgg(self.figure)
        self.dynamic: list = []
        self.static_key = None
        self._backgrounds: dict = {}
        self.full_draws = 0  # how often the static parts were drawn (for tests, benchmarks)

    def invalidate(self) -> None:
        """Something static changed for every key: the next `png()` draws the whole figure."""
        self._backgrounds.clear()

    def png(self) -> bytes:
        """The figure as PNG bytes (static parts from a kept background when there is one)."""
        canvas = self.figure.canvas
        background = self._backgrounds.get(self.static_key)
        if background is None:
            shown = [artist.get_visible() for artist in self.dynamic]
            for artist in self.dynamic:
                artist.set_visible(False)
            canvas.draw()
            if len(self._backgrounds) >= self.KEEP:
                self._backgrounds.pop(next(iter(self._backgrounds)))
            self._backgrounds[self.static_key] = canvas.copy_from_bbox(self.figure.bbox)
            self.full_draws += 1
            for artist, visible in zip(self.dynamic, shown, strict=True):
                artist.set_visible(visible)
        else:
            canvas.restore_region(background)
        for artist in self.dynamic:
            if artist.get_visible():
                self.figure.draw_artist(artist)
        buffer = io.BytesIO()
        Image.fromarray(np.asarray(canvas.buffer_rgba())).save(buffer, "png", compress_level=1)
        return buffer.getvalue()


def _colormap():
    # masked cells are transparent: the hatched background shows through
    return matplotlib.colormaps[CMAP].with_extremes(bad=(0.0, 0.0, 0.0, 0.0))


def _hatch_background(ax) -> None:
    ax.patch.set_facecolor(MASK_FACE)
    ax.patch.set_hatch(MASK_HATCH)
    ax.patch.set_edgecolor("#b0b0b0")


def masked_causal(matrix: torch.Tensor) -> np.ma.MaskedArray:
    """A [q, k] map with the keys each query may not see masked (the queries are the last q
    positions, so query i sees keys 0 .. k-q+i: the causal mask aligned bottom-right)."""
    values = matrix.detach().float().numpy()
    n_queries, n_keys = values.shape
    future = np.triu(np.ones((n_queries, n_keys), dtype=bool), k=n_keys - n_queries + 1)
    return np.ma.masked_array(values, mask=future)


@cache
def _font_has(char: str) -> bool:
    """Whether matplotlib's default font can draw this character."""
    path = font_manager.findfont(font_manager.FontProperties(
        family=matplotlib.rcParams["font.family"]))
    return _font(path).get_char_index(ord(char)) != 0


@cache
def _font(path: str) -> ft2font.FT2Font:
    return ft2font.FT2Font(path)


def drawable(text: str) -> str:
    """Text as a figure can draw it: characters the font lacks (emoji; CJK in the default
    font) named as <U+1F642> instead of drawn as empty boxes."""
    return "".join(char if char.isascii() or _font_has(char) else f"<U+{ord(char):04X}>"
                   for char in text)


def short(label: str) -> str:
    """A token label for an axis: drawable, and cut to LABEL_CHARS characters."""
    label = drawable(label)
    return label if len(label) <= LABEL_CHARS else label[: LABEL_CHARS - 1] + "…"


def _set_token_ticks(ax, labels: list[str], axis: str) -> None:
    step = max(1, math.ceil(len(labels) / MAX_TICK_LABELS))
    positions = list(range(0, len(labels), step))
    names = [short(labels[i]) for i in positions]
    size = 9 if len(positions) <= 24 else 7
    if axis == "x":
        ax.set_xticks(positions, names, rotation=90, fontsize=size)
    else:
        ax.set_yticks(positions, names, fontsize=size)


def _title(figure: Figure, y: float = 0.97):
    return figure.text(0.5, y, "", ha="center", va="top", fontsize=11)


class HeadHeatmap(BlitFigure):
    """One head's map: queries as rows, keys as columns, the future hatched, a colour bar."""

    def __init__(self, size: float = 6.0):
        super().__init__(size + 1.2, size)
        self.ax = self.figure.add_axes((0.2, 0.2, 0.62, 0.7))
        cax = self.figure.add_axes((0.86, 0.2, 0.03, 0.7))
        _hatch_background(self.ax)
        self.image = self.ax.imshow(np.ma.masked_all((1, 1)), cmap=_colormap(), vmin=0, vmax=1,
                                    interpolation="nearest", aspect="auto")
        self.colorbar = self.figure.colorbar(self.image, cax=cax)
        self.colorbar.set_label("attention weight")
        self.ax.set_xlabel("key (token attended to)")
        self.ax.set_ylabel("query (token attending)")
        self.marker = Rectangle((0, 0), 0, 0, fill=False, edgecolor=HIGHLIGHT, linewidth=2,
                                visible=False)
        self.ax.add_patch(self.marker)
        self.title = _title(self.figure)
        self.dynamic = [self.image, self.marker, self.title]

    def draw(self, matrix: torch.Tensor, labels: list[str], title: str,
             vmax: float = 1.0, query_labels: list[str] | None = None) -> None:
        """Show a [q, k] map; labels name the keys (the queries too, unless given apart)."""
        query_labels = labels[-matrix.shape[0]:] if query_labels is None else query_labels
        key = (tuple(labels), tuple(query_labels), tuple(matrix.shape), vmax)
        if key != self.static_key:
            self.image.set_extent((-0.5, matrix.shape[1] - 0.5, matrix.shape[0] - 0.5, -0.5))
            self.ax.set_xlim(-0.5, matrix.shape[1] - 0.5)
            self.ax.set_ylim(matrix.shape[0] - 0.5, -0.5)
            self.image.set_clim(0, vmax)
            _set_token_ticks(self.ax, labels, "x")
            _set_token_ticks(self.ax, query_labels, "y")
            self.static_key = key
        self.image.set_data(masked_causal(matrix))
        self.title.set_text(drawable(title))

    def mark_row(self, row: int | None) -> None:
        """Outline one query row (None: no outline)."""
        self.marker.set_visible(row is not None)
        if row is not None:
            self.marker.set_bounds(-0.5, row - 0.5, self.image.get_array().shape[1], 1)

    def matrix(self) -> np.ma.MaskedArray:
        """The drawn data (for tests): the masked map now in the image."""
        return self.image.get_array()


def _round_up(value: float) -> float:
    """The smallest of a few fixed axis tops that holds value (few tops: few full redraws)."""
    for top in (0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0):
        if value <= top:
            return top
    return value


class FocusBars(BlitFigure):
    """Where one query looks: a bar per visible key, the top keys named."""

    def __init__(self, width: float = 8.0, height: float = 3.2, top: int = 3):
        super().__init__(width, height)
        self.ax = self.figure.add_axes((0.08, 0.3, 0.9, 0.58))
        self.ax.set_ylabel("weight")
        self.title = _title(self.figure)
        self.bars: list[Rectangle] = []
        self.notes = [self.ax.annotate("", (0, 0), ha="center", va="bottom", fontsize=8,
                                       xytext=(0, 2), textcoords="offset points")
                      for _ in range(top)]
        self.top_keys: list[tuple[int, str, float]] = []  # (position, label, weight)
        self._labels: tuple = ()

    def draw(self, weights: torch.Tensor, labels: list[str], title: str) -> None:
        """weights: [k] for keys 0..k-1 (the query's visible keys); labels: at least k names."""
        values = weights.detach().float().numpy()
        n_keys, y_top = len(values), _round_up(float(values.max()) * 1.25)
        if tuple(labels[:n_keys]) != self._labels:
            self._new_bars(labels[:n_keys])
        self.ax.set_ylim(0, y_top)
        self.static_key = (self._labels, y_top)
        colour = matplotlib.colormaps[CMAP](0.7)
        for bar, value in zip(self.bars, values, strict=True):
            bar.set_height(value)
            bar.set_color(colour)
        order = np.argsort(-values, kind="stable")[: len(self.notes)]
        self.top_keys = [(int(i), labels[i], float(values[i])) for i in order]
        for rank, note in enumerate(self.notes):
            note.set_visible(rank < len(self.top_keys))
            if rank < len(self.top_keys):
                index, label, value = self.top_keys[rank]
                self.bars[index].set_color(HIGHLIGHT if rank == 0 else "#ff7f0e")
                note.xy = (index, value)
                note.set_text(f"{short(label)}\n{value:.2f}")
        self.title.set_text(drawable(title))

    def _new_bars(self, labels: list[str]) -> None:
        for bar in self.bars:
            bar.remove()
        n_keys = len(labels)
        self.bars = [self.ax.add_patch(Rectangle((i - 0.4, 0), 0.8, 0)) for i in range(n_keys)]
        self.ax.set_xlim(-0.6, n_keys - 0.4)
        _set_token_ticks(self.ax, labels, "x")
        self.dynamic = [*self.bars, *self.notes, self.title]
        self._labels = tuple(labels)


class HeadGrid(BlitFigure):
    """Small multiples: every head of one layer, side by side."""

    def __init__(self, n_heads: int, tile: float = 2.0):
        columns = min(n_heads, 6)
        rows = math.ceil(n_heads / columns)
        super().__init__(columns * tile, rows * tile + 0.4)
        self.n_heads = n_heads
        self.figure.subplots_adjust(left=0.02, right=0.98, bottom=0.02, top=0.86,
                                    wspace=0.08, hspace=0.25)
        self.axes = [self.figure.add_subplot(rows, columns, h + 1) for h in range(n_heads)]
        self.images = []
        for head, ax in enumerate(self.axes):
            _hatch_background(ax)
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_title(f"head {head}", fontsize=9)
            self.images.append(ax.imshow(np.ma.masked_all((1, 1)), cmap=_colormap(), vmin=0,
                                         vmax=1, interpolation="nearest", aspect="auto"))
        self.frame = Rectangle((0, 0), 1, 1, transform=self.figure.transFigure, fill=False,
                               edgecolor=HIGHLIGHT, linewidth=3, visible=False)
        self.figure.add_artist(self.frame)
        self.title = _title(self.figure, y=0.995)
        self.dynamic = [*self.images, self.frame, self.title]

    def draw(self, layer_maps: torch.Tensor, title: str, selected: int | None = None) -> None:
        """layer_maps: [H, n, n]; the selected head is outlined."""
        n = layer_maps.shape[-1]
        if n != self.static_key:
            for ax, image in zip(self.axes, self.images, strict=True):
                image.set_extent((-0.5, n - 0.5, n - 0.5, -0.5))
                ax.set_xlim(-0.5, n - 0.5)
                ax.set_ylim(n - 0.5, -0.5)
            self.static_key = n
        for head, image in enumerate(self.images):
            image.set_data(masked_causal(layer_maps[head]))
        self.frame.set_visible(selected is not None)
        if selected is not None:
            box = self.axes[selected].get_position()
            self.frame.set_bounds(box.x0 - 0.005, box.y0 - 0.008, box.width + 0.01,
                                  box.height + 0.016)
        self.title.set_text(drawable(title))


def thumbnails(weights: torch.Tensor, tile: int) -> torch.Tensor:
    """Every head's map shrunk to tile x tile (mean pooling keeps thin columns such as sinks).

    weights: [L, H, n, n] -> mosaic [L*tile, H*tile], one tile per head (row = layer), each
    tile scaled to its own maximum.
    """
    n_layers, n_heads, n, _ = weights.shape
    tile = min(tile, n)
    flat = weights.reshape(n_layers * n_heads, 1, n, n)
    small = torch.nn.functional.adaptive_avg_pool2d(flat, tile)  # [L*H, 1, tile, tile]
    small = small / small.amax(dim=(-2, -1), keepdim=True).clamp_min(1e-12)
    mosaic = small.reshape(n_layers, n_heads, tile, tile).permute(0, 2, 1, 3)
    return mosaic.reshape(n_layers * tile, n_heads * tile)


class ModelMosaic(BlitFigure):
    """The whole model at a glance: one thumbnail per head (rows: layers, columns: heads)."""

    def __init__(self, n_layers: int, n_heads: int):
        super().__init__(min(9.0, 1.2 + 0.6 * n_heads), min(11.0, 1.2 + 0.36 * n_layers))
        self.ax = self.figure.add_axes((0.12, 0.02, 0.84, 0.88))
        self.image = self.ax.imshow(np.zeros((1, 1)), cmap=CMAP, vmin=0, vmax=1,
                                    interpolation="nearest", aspect="auto")
        self.marker = Rectangle((0, 0), 1, 1, fill=False, edgecolor=HIGHLIGHT, linewidth=2.5)
        self.ax.add_patch(self.marker)
        self.ax.xaxis.set_ticks_position("top")
        self.ax.xaxis.set_label_position("top")
        self.ax.set_xlabel("head")
        self.ax.set_ylabel("layer")
        self.dynamic = [self.marker]
        self.tile = 1

    def draw(self, weights: torch.Tensor, title: str, tile: int = 16) -> None:
        """Build the mosaic of maps [L, H, n, n] (once per text)."""
        mosaic = thumbnails(weights, tile)
        n_layers, n_heads = weights.shape[:2]
        t = self.tile = mosaic.shape[0] // n_layers
        self.image.set_data(mosaic.numpy())
        self.image.set_extent((-0.5, mosaic.shape[1] - 0.5, mosaic.shape[0] - 0.5, -0.5))
        layers = range(0, n_layers, 1 if n_layers <= 16 else 2)
        self.ax.set_xticks([h * t + (t - 1) / 2 for h in range(n_heads)],
                           [str(h) for h in range(n_heads)], fontsize=8)
        self.ax.set_yticks([layer * t + (t - 1) / 2 for layer in layers],
                           [str(layer) for layer in layers], fontsize=8)
        self.ax.set_xticks([h * t - 0.5 for h in range(1, n_heads)], minor=True)
        self.ax.set_yticks([layer * t - 0.5 for layer in range(1, n_layers)], minor=True)
        self.ax.grid(which="minor", color="white", linewidth=1.5)
        self.ax.tick_params(which="minor", length=0)
        self.figure.suptitle(title, fontsize=10, y=0.995)
        self.invalidate()

    def select(self, layer: int, head: int) -> None:
        """Outline one head's thumbnail."""
        t = self.tile
        self.marker.set_bounds(head * t - 0.5, layer * t - 0.5, t, t)


class SummaryScatter(BlitFigure):
    """Every head as a dot: weight on the previous token vs weight on the first token."""

    def __init__(self):
        super().__init__(5.5, 4.2)
        self.ax = self.figure.add_axes((0.13, 0.13, 0.68, 0.76))
        cax = self.figure.add_axes((0.84, 0.13, 0.03, 0.76))
        self.dots = self.ax.scatter([], [], c=[], cmap="viridis", s=22)
        self.figure.colorbar(self.dots, cax=cax, label="layer")
        self.ring = self.ax.scatter([0], [0], s=160, facecolors="none", edgecolors=HIGHLIGHT,
                                    linewidths=2)
        self.ax.set_xlim(-0.03, 1.03)
        self.ax.set_ylim(-0.03, 1.03)
        self.ax.set_xlabel("mean weight on the previous token")
        self.ax.set_ylabel("mean weight on the first token")
        self.dynamic = [self.ring]
        self.previous = self.first = None

    def draw(self, previous: torch.Tensor, first: torch.Tensor, title: str,
             selected: tuple[int, int]) -> None:
        """previous, first: [L, H] summaries; the selected head is ringed."""
        if previous is not self.previous or first is not self.first:
            n_layers = previous.shape[0]
            layer_of = torch.arange(n_layers)[:, None].expand_as(previous)
            self.dots.set_offsets(np.column_stack([previous.flatten(), first.flatten()]))
            self.dots.set_array(layer_of.flatten().numpy())
            self.dots.set_clim(0, max(1, n_layers - 1))
            self.ax.set_title(title, fontsize=10)
            self.previous, self.first = previous, first
            self.invalidate()
        layer, head = selected
        self.ring.set_offsets([[float(previous[layer, head]), float(first[layer, head])]])


# =============================================================================================
# Notebook 02 (cache mechanics): the cache at one decode step, cache bytes as a sequence grows
# =============================================================================================

NEW_ROWS_COLOUR = "#e66100"  # positions computed at this step


def cache_step_figure(stepper, layer: int, head: int, step: int | None = None):
    """Cached keys and values (positions x head_dim) of one layer/head at one step, the rows
    computed at that step outlined, and the new queries' attention over those keys."""
    record = stepper.record(step)
    keys, values = stepper.keys_values(layer, head, record.index)  # [T, hd] each
    probs = stepper.attention(layer, head, record.index)  # [n, T]
    n_total, head_dim = keys.shape
    labels = [f"{p}: {label}" for p, label in
              enumerate(token_labels(stepper.lm.tokenizer, stepper.ids[:n_total]))]

    height = min(9.0, max(3.2, 1.6 + 0.22 * n_total))
    fig, (ax_k, ax_v, ax_a) = plt.subplots(
        1, 3, figsize=(12, height), sharey=True, gridspec_kw=dict(width_ratios=[3, 3, 2]))
    kv_head = stepper.kv_head_of(head)
    for ax, tensor, name in [(ax_k, keys, "keys"), (ax_v, values, "values")]:
        limit = float(tensor.abs().max()) or 1.0
        ax.imshow(tensor.numpy(), aspect="auto", cmap="RdBu_r", vmin=-limit, vmax=limit,
                  interpolation="nearest")
        ax.add_patch(Rectangle((-0.5, record.n_cached - 0.5), head_dim, record.n_new,
                               fill=False, edgecolor=NEW_ROWS_COLOUR, linewidth=2.5))
        ax.set_title(f"cached {name}, layer {layer}, KV head {kv_head}\n"
                     f"[{n_total} positions x {head_dim}]", fontsize=10)
        ax.set_xlabel("head_dim channel")
    step_positions = max(1, n_total // 30)
    ax_k.set_yticks(range(0, n_total, step_positions))
    ax_k.set_yticklabels(labels[::step_positions], fontsize=8)
    ax_k.set_ylabel("position (token)")

    if record.kind == "decode":  # one query: its weights over every key, one bar each
        colours = ["#888888"] * record.n_cached + [NEW_ROWS_COLOUR]
        ax_a.barh(range(n_total), probs[0].numpy(), color=colours, height=0.8)
        ax_a.set_xlim(0, 1)
        ax_a.set_xlabel("attention weight")
        ax_a.set_title(f"the new query (head {head}) over\nall {n_total} keys", fontsize=10)
    else:  # the prefill: every prompt position is a query; keys down, queries across
        first = record.first_query_kept  # a very long prefill keeps only its last rows
        ax_a.imshow(probs.T.numpy(), aspect="auto", cmap="Blues", vmin=0, vmax=1,
                    interpolation="nearest", extent=(first - 0.5, n_total - 0.5,
                                                     n_total - 0.5, -0.5))
        ax_a.set_xlabel("query position (columns; keys are rows,\nas in the cache)")
        shown = "" if first == 0 else f"last {n_total - first} of "
        ax_a.set_title(f"prefill: {shown}{record.n_new} queries (head {head})\n"
                       "over keys, drawn transposed: notebook 01's map flipped", fontsize=10)
    ax_a.set_ylim(n_total - 0.5, -0.5)
    fig.suptitle(f"step {record.index} ({record.kind}): {record.n_cached} positions reused, "
                 f"{record.n_new} computed (outlined)", fontsize=11)
    fig.tight_layout()
    return fig


def cache_growth_figure(series: dict):
    """Cache bytes against cached positions: measured (dots) and the formula (line), per model.

    series: label -> list of memory.GrowthRow.
    """
    fig, ax = plt.subplots(figsize=(7, 3.8))
    for label, rows in series.items():
        tokens = [row.n_tokens for row in rows]
        line, = ax.plot(tokens, [row.formula_bytes / 2 ** 10 for row in rows],
                        label=f"{label}: formula")
        ax.plot(tokens, [row.measured_bytes / 2 ** 10 for row in rows], "o",
                color=line.get_color(), markersize=4, label=f"{label}: measured")
    ax.set_xlabel("positions in the cache")
    ax.set_ylabel("KV cache (KiB)")
    ax.set_title("KV cache bytes grow linearly with the sequence")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


# =============================================================================================
# Notebook 03 (benchmark): latency, totals, speedup, slopes, cost model, cache memory, pooling
# =============================================================================================

MODE_STYLES = {
    "kvlab-cache": dict(color="#1f77b4", linestyle="-"),
    "kvlab-nocache": dict(color="#d62728", linestyle="-"),
    "hf-cache": dict(color="#6baed6", linestyle="--"),
    "hf-nocache": dict(color="#fc9272", linestyle="--"),
    "floor": dict(color="#555555", linestyle=":"),
}





class PlotFigure(Figure):
    """A matplotlib Figure that shows itself as a PNG in any notebook (no pyplot, no backend)."""

    def _repr_png_(self) -> bytes:
        return png_bytes(self)


def png_bytes(figure: Figure, dpi: int = 100) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=dpi)
    return buffer.getvalue()


def run_stamp(report) -> str:
    """The facts every benchmark plot carries: model, sizes, threads, CPU/GPU, versions."""
    machine = report.machine
    device = machine.get("device", "cpu")
    where = machine.get("gpu", device) if device.startswith("cuda") else machine.get("cpu", "")
    stopped = "  (stopped early)" if report.stopped_early else ""
    return (f"{report.model}, prompt {report.prompt_len} + {report.new_tokens} new tokens, "
            f"{report.repeats} repeats | {machine.get('threads', '?')} threads, {where} | "
            f"torch {machine.get('torch', '?')}{stopped}")


def _bench_figure(report, title: str, size=(8.0, 4.6)) -> tuple[Figure, object]:
    figure = PlotFigure(figsize=size, layout="constrained")
    ax = figure.add_subplot()
    ax.set_title(title, fontsize=11)
    figure.suptitle(run_stamp(report), fontsize=8, color="#555555", y=0.01, va="bottom")
    figure.get_layout_engine().set(h_pad=0.25)
    return figure, ax


def _timed_modes(report) -> list[dict]:
    return [entry for entry in report.results if entry["mode"] != _bench.FLOOR]


def _floor_line(ax, report) -> None:
    if report.has(_bench.FLOOR):
        floor_ms = report.result(_bench.FLOOR)["per_token_ms_median"]
        ax.axhline(floor_ms, **MODE_STYLES["floor"],
                   label=f"floor: one pass over all weights ({floor_ms:.2f} ms)")


def latency_plot(report) -> Figure:
    """Each step's time against the tokens it attends over; step 0 (the prefill) marked."""
    title = "Time of each step (median over repeats)"
    if report.has("kvlab-cache") and report.has(_bench.FLOOR):
        title += f": cached decode = {_bench.floor_ratio(report):.2f} x the floor"
    figure, ax = _bench_figure(report, title)
    for entry in _timed_modes(report):
        lengths = _bench.context_lengths(report.prompt_len, len(entry["step_ms"]))
        style = MODE_STYLES[entry["mode"]]
        ax.plot(lengths[1:], entry["step_ms"][1:], **style, label=entry["mode"])
        ax.plot(lengths[:1], entry["step_ms"][:1], "o", color=style["color"], markersize=7)
    if _timed_modes(report):
        first = _timed_modes(report)[0]
        ax.annotate(f"step 0: prefill of {report.prompt_len} prompt tokens",
                    (report.prompt_len, first["step_ms"][0]), xytext=(12, 6),
                    textcoords="offset points", fontsize=8)
    _floor_line(ax, report)
    ax.set_yscale("log")
    ax.set_xlabel("tokens attended over (prompt + tokens generated so far)")
    ax.set_ylabel("ms per step (log scale)")
    ax.legend(fontsize=8)
    return figure


def cumulative_plot(report) -> Figure:
    """Total time so far against tokens generated (the prefill included)."""
    figure, ax = _bench_figure(report, "Total time to generate n tokens")
    for entry in _timed_modes(report):
        totals = _bench.cumulative_s(entry["step_ms"])
        ax.plot(range(1, len(totals) + 1), totals, **MODE_STYLES[entry["mode"]],
                label=f"{entry['mode']}: {totals[-1]:.2f} s")
    ax.set_xlabel("tokens generated, n")
    ax.set_ylabel("seconds")
    ax.legend(fontsize=8)
    return figure


def speedup_plot(report) -> Figure:
    """Uncached / cached time against sequence length: per step, and of the total so far."""
    figure, ax = _bench_figure(report, "Speed-up of the KV cache (uncached / cached)")
    for cached, uncached in (("kvlab-cache", "kvlab-nocache"), ("hf-cache", "hf-nocache")):
        if report.has(cached) and report.has(uncached):
            lengths, per_step, totals = _bench.speedups(report, cached, uncached)
            color = MODE_STYLES[cached]["color"]
            ax.plot(lengths, per_step, color=color, alpha=0.45, label=f"{cached}: this step")
            ax.plot(lengths, totals, color=color, linewidth=2.2,
                    label=f"{cached}: total so far ({totals[-1]:.1f}x at the end)")
    ax.axhline(1, color="#999999", linewidth=0.8)
    ax.set_xlabel("sequence length (tokens attended over)")
    ax.set_ylabel("uncached time / cached time")
    ax.legend(fontsize=8)
    return figure


def loglog_plot(report) -> Figure:
    """Total decode time against tokens on log-log axes, with the fitted slopes."""
    figure, ax = _bench_figure(report, "Total decode time (after the prefill), log-log")
    for mode, fit in _bench.slope_fits(report).items():
        n, seconds = _bench.decode_totals(report.result(mode)["step_ms"])
        style = MODE_STYLES[mode]
        ax.plot(n, seconds, **style, alpha=0.8, label=f"{mode}: slope {fit.slope:.2f}")
        fitted = [x for x in n if x >= fit.x_min]
        ax.plot(fitted, [fit(x) for x in fitted], color="black", linewidth=0.8, alpha=0.6)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("decode steps n (log)")
    ax.set_ylabel("seconds (log)")
    ax.legend(fontsize=8, title="fitted over the last half (thin lines)", title_fontsize=8)
    return figure


def cost_model_plot(report) -> Figure:
    """Measured step times beside the cost model's (dashed), with the floor."""
    figure, ax = _bench_figure(report, "Measured (solid) vs the cost model (dashed)")
    for mode in ("kvlab-cache", "kvlab-nocache"):
        if not report.has(mode):
            continue
        measured = report.result(mode)["step_ms"]
        lengths = _bench.context_lengths(report.prompt_len, len(measured))
        color = MODE_STYLES[mode]["color"]
        ax.plot(lengths, measured, color=color, label=f"{mode} measured")
        ax.plot(lengths, _bench.predicted_ms(report, mode), color=color, linestyle="--",
                label=f"{mode} cost model")
    _floor_line(ax, report)
    rates = _bench.report_rates(report)
    ax.set_yscale("log")
    ax.set_xlabel("tokens attended over")
    ax.set_ylabel("ms per step (log scale)")
    ax.legend(fontsize=8, title_fontsize=8,
              title=f"rates measured here: {rates.bytes_per_s / 1e9:.1f} GB/s (1 row), "
                    f"{rates.flops_per_s / 1e9:.1f} GFLOP/s (64 rows)")
    return figure


def cache_memory_plot(report) -> Figure:
    """KV cache bytes against length (from the model's shapes), with what the run held."""
    if report.spec is None:
        raise ValueError("this report has no model shapes (spec): rerun the benchmark")
    figure, ax = _bench_figure(report, "KV cache memory against sequence length")
    spec = report.spec
    per_token = _bench.spec_cache_bytes(spec, 1)
    lengths = list(range(0, report.prompt_len + report.new_tokens + 1))
    ax.plot(lengths, [_bench.spec_cache_bytes(spec, n) / 1e6 for n in lengths],
            color=MODE_STYLES["kvlab-cache"]["color"],
            label=f"2 x {spec.n_layers} layers x {spec.n_kv_heads} KV heads x "
                  f"{spec.head_dim} x 4 bytes = {per_token / 1e3:.1f} kB per token")
    for entry in _timed_modes(report):
        if entry.get("cache_bytes"):
            ax.plot(entry["cache_bytes"] / per_token, entry["cache_bytes"] / 1e6, "o",
                    color=MODE_STYLES[entry["mode"]]["color"],
                    label=f"{entry['mode']} held at the end: {entry['cache_bytes'] / 1e6:.2f} MB")
    ax.set_xlabel("tokens in the cache")
    ax.set_ylabel("MB")
    ax.legend(fontsize=8, title=f"weights: {spec.matmul_params * 4 / 1e6:.0f} MB (matrices)",
              title_fontsize=8)
    return figure


def compare_plot(reports: list) -> Figure:
    """Pooled runs (several machines): per-token medians of each run, with the floor."""
    if not reports:
        raise ValueError("no runs to compare: load at least one result")
    figure = PlotFigure(figsize=(8.5, 1.2 + 0.75 * len(reports)), layout="constrained")
    ax = figure.add_subplot()
    modes = ("kvlab-cache", "kvlab-nocache", _bench.FLOOR)
    height = 0.8 / len(modes)
    for i, mode in enumerate(modes):
        ys = [row + i * height for row in range(len(reports)) if reports[row].has(mode)]
        values = [r.result(mode)["per_token_ms_median"] for r in reports if r.has(mode)]
        ax.barh(ys, values, height=height, color=MODE_STYLES[mode]["color"], label=mode)
    labels = [f"{_bench_label(r)}\n{r.prompt_len}+{r.new_tokens} tokens" for r in reports]
    ax.set_yticks([row + height for row in range(len(reports))], labels, fontsize=8)
    ax.invert_yaxis()
    ax.set_xscale("log")
    ax.xaxis.set_major_formatter(FormatStrFormatter("%g"))
    ax.xaxis.set_minor_formatter(FormatStrFormatter(""))
    ax.set_xlabel("ms per token, median (log scale)")
    ax.set_title("Runs compared: per-token time of each mode", fontsize=11)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return figure


def _bench_label(report) -> str:
    from .results import run_label

    return run_label(report)
