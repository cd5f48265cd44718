"""ipywidgets panels used by the notebooks.

Every panel follows one rule: a bad value shows an error line in the panel's own output
area, the panel keeps working, and nothing the student typed is lost.

The attention explorer computes a text's maps once (one model run per text and model) and
every control after that only redraws: figures are built once and updated in place, then
rendered into `Image` widgets.
"""

from __future__ import annotations

import contextlib
import inspect
import io
import os
import socket
import threading
from contextlib import contextmanager
from dataclasses import dataclass
from html import escape, unescape

import ipywidgets as widgets
import matplotlib.pyplot as plt
from IPython.display import HTML, Markdown, clear_output, display

from . import bench as _bench
from . import plots
from .attention import (
    SUMMARY_COLUMNS,
    AttentionMaps,
    GeneratedAttention,
    attention_maps,
    generated_attention,
    token_labels,
)
from .bench import DTYPE_BYTES, PRESETS, ModelSpec, spec_of
from .memory import cache_size, dtype_bytes, human_bytes, reshaped
from .models import LoadedModel, available, load, load_once, loaded_names, remember
from .plots import cache_step_figure
from .stepper import DecodeStepper

LABEL_STYLE = {"description_width": "initial"}  # show a control's whole label, never cut


def error_html(message: str) -> HTML:
    return HTML(f'<div style="color:#b00020;font-weight:600">{escape(message)}</div>')


@contextmanager
def errors_shown_in(output: widgets.Output):
    """Run a panel callback; a ValueError (bad input) is shown in `output`, not raised."""
    try:
        yield
    except ValueError as err:  # the kit raises ValueError (or a subclass) for bad input
        # append_display_data works with or without a running kernel (tests drive panels too)
        output.append_display_data(error_html(f"{type(err).__name__}: {err}"))


def clear(output: widgets.Output) -> None:
    """Empty an Output widget (works with or without a running kernel)."""
    output.outputs = ()


def output_text(output: widgets.Output) -> str:
    """Everything shown in an Output widget, as plain text (for tests and for debugging)."""
    parts = []
    for item in output.outputs:
        if "text" in item:
            parts.append(item["text"])
        data = item.get("data", {})
        parts.append(unescape(data.get("text/html") or data.get("text/plain", "")))
    return "\n".join(parts)


# ---------------------------------------------------------------------------------------------
# Models, loaded once per name (kvlab.models.load_once)


def cached_model(name: str, output: widgets.Output | None = None) -> LoadedModel:
    """The model of that name, loaded on first use; its model line goes to `output`."""
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        lm = load_once(name)
    if output is not None and printed.getvalue():
        output.append_stdout(printed.getvalue())
    return lm


def model_choices(current: str) -> list[str]:
    """Names a panel may offer: the current model, loaded ones, and those available here."""
    names = [current, *loaded_names()]
    names += [name for name, _kind, here, _note in available() if here]
    return list(dict.fromkeys(names))


# ---------------------------------------------------------------------------------------------
# The attention explorer

DEFAULT_TEXT = ("The cat sat on the mat. The dog sat on the rug.\n"
                "Then the cat saw the dog, and the cat ran away.")


def _image() -> widgets.Image:
    return widgets.Image(format="png", layout=widgets.Layout(max_width="100%", height="auto",
                                                             flex="0 0 auto"))


def show(image: widgets.Image, figure: plots.BlitFigure) -> None:
    """Put a figure into an Image widget at its own pixel size (not stretched to the cell)."""
    image.value = figure.png()
    image.layout.width = f"{round(figure.figure.get_figwidth() * figure.figure.dpi)}px"


class AttentionExplorer:
    """Text box + model picker; maps computed once per (model, text); views only redraw.

    Views (each a widget; all share the text, the model and the layer/head sliders):
    `head_view()`, `focus_view()`, `layer_view()`, `model_view()`, `summary_view()`.
    Displaying the explorer itself shows the controls and every view in tabs.
    """

    def __init__(self, lm: LoadedModel | None = None, text=DEFAULT_TEXT):
        self.messages = widgets.Output()
        lm = remember(lm if lm is not None else load())
        self.lm = lm
        self.text_box = widgets.Textarea(value=text if isinstance(text, str) else "",
                                         description="Text", rows=3,
                                         layout=widgets.Layout(width="95%"))
        self.model_picker = widgets.Dropdown(options=model_choices(lm.name), value=lm.name,
                                             description="Model")
        self.show_button = widgets.Button(description="Show attention", button_style="primary")
        self.status = widgets.HTML()
        self.layer = widgets.IntSlider(0, 0, lm.n_layers - 1, description="layer")
        self.head = widgets.IntSlider(0, 0, lm.n_heads - 1, description="head")
        self.maps: AttentionMaps | None = None
        self.model_runs = 0  # how many times the model was run (once per text and model)
        self._views: dict[str, _View] = {}
        self._quiet = False  # True while slider ranges are being changed

        self.show_button.on_click(lambda _button: self.show_text(self.text_box.value))
        self.model_picker.observe(self._model_picked, names="value")
        self.layer.observe(self._selection_moved, names="value")
        self.head.observe(self._selection_moved, names="value")
        self.show_text(text)

    # -- computing ------------------------------------------------------------------------

    def show_text(self, text) -> None:
        """Compute the maps of a text (one model run) and redraw every view."""
        clear(self.messages)
        self._compute(text)

    def use_model(self, name: str) -> None:
        """Switch model (loaded once per name) and recompute the current text."""
        clear(self.messages)
        lm = None
        with errors_shown_in(self.messages):
            lm = cached_model(name, self.messages)
        if lm is None:  # could not load: keep the model in use
            self._reset_picker()
            return
        self.lm = lm
        if self.model_picker.value != name:
            self.model_picker.options = model_choices(name)
            self._reset_picker()
        self._compute(self.text_box.value)

    def _compute(self, text) -> None:
        status, self.status.value = self.status.value, f"<i>running {self.lm.name}…</i>"
        self.show_button.disabled = True
        try:
            with errors_shown_in(self.messages):
                maps = attention_maps(self.lm, text)
                self.model_runs += 1
                if isinstance(text, str) and self.text_box.value != text:
                    self.text_box.value = text
                self._use(maps)
                status = self.status.value
        finally:
            self.status.value = status
            self.show_button.disabled = False

    def _model_picked(self, change) -> None:
        if change["new"] != self.lm.name:
            self.use_model(change["new"])

    def _reset_picker(self) -> None:
        self.model_picker.unobserve(self._model_picked, names="value")
        self.model_picker.value = self.lm.name
        self.model_picker.observe(self._model_picked, names="value")

    def _use(self, maps: AttentionMaps) -> None:
        self.maps = maps
        self._quiet = True  # changing a slider's max may move its value: redraw once, below
        try:
            self.layer.max = maps.n_layers - 1
            self.head.max = maps.n_heads - 1
        finally:
            self._quiet = False
        text = self.text_box.value.replace("\n", " ↵ ")
        preview = escape(text if len(text) <= 60 else text[:60] + "…")
        self.status.value = (f"<b>{escape(maps.model_name)}</b>: {maps.n_tokens} tokens, "
                             f"{maps.n_layers} layers x {maps.n_heads} heads "
                             f"<span style='color:#666'>({preview})</span>")
        for view in self._views.values():
            view.new_maps()
        self._redraw()

    # -- redrawing --------------------------------------------------------------------------

    def _selection_moved(self, _change) -> None:
        if not self._quiet:
            self._redraw()

    def _redraw(self) -> None:
        if self.maps is None:
            return
        with errors_shown_in(self.messages):
            for view in self._views.values():
                view.redraw()

    # -- widgets ----------------------------------------------------------------------------

    @property
    def controls(self) -> widgets.VBox:
        """Text box, model picker, button, status line and the message area."""
        return widgets.VBox([self.text_box, widgets.HBox([self.model_picker, self.show_button]),
                             self.status, self.messages])

    def _view(self, name: str, kind) -> widgets.Widget:
        if name not in self._views:
            self._views[name] = kind(self)
            if self.maps is not None:
                self._views[name].new_maps()
                self._views[name].redraw()
        return self._views[name].widget

    def head_view(self) -> widgets.Widget:
        """One head large: layer/head sliders, a colour scale choice."""
        return self._view("head", HeadView)

    def focus_view(self) -> widgets.Widget:
        """Where one query token looks, as bars with the top keys named."""
        return self._view("focus", FocusView)

    def layer_view(self) -> widgets.Widget:
        """Every head of one layer as small multiples."""
        return self._view("layer", LayerView)

    def model_view(self) -> widgets.Widget:
        """Every head of the model as thumbnails; the selected one opens large."""
        return self._view("model", ModelView)

    def summary_view(self) -> widgets.Widget:
        """A sortable table of head summaries and a scatter plot of every head."""
        return self._view("summary", SummaryView)

    def panel(self) -> widgets.VBox:
        """Controls plus every view, in tabs."""
        views = [("Head", self.head_view()), ("Token focus", self.focus_view()),
                 ("Layer", self.layer_view()), ("Model", self.model_view()),
                 ("Head summaries", self.summary_view())]
        tabs = widgets.Tab(children=[view for _title, view in views],
                           titles=[title for title, _view in views])
        return widgets.VBox([self.controls, tabs])

    def _ipython_display_(self) -> None:
        from IPython.display import display

        display(self.panel())


class _View:
    """A view of the explorer: builds its figures for the model's shape, then redraws."""

    def __init__(self, explorer: AttentionExplorer):
        self.explorer = explorer
        self.widget = widgets.VBox()

    def new_maps(self) -> None:
        """New text or model: rebuild what depends on the shape (default: nothing)."""

    def redraw(self) -> None:
        raise NotImplementedError

    @property
    def maps(self) -> AttentionMaps:
        return self.explorer.maps

    @property
    def selection(self) -> tuple[int, int]:
        return self.explorer.layer.value, self.explorer.head.value


class HeadView(_View):
    def __init__(self, explorer):
        super().__init__(explorer)
        self.heatmap = plots.HeadHeatmap()
        self.image = _image()
        self.scale = widgets.ToggleButtons(options=["0 to 1", "fit to this head"],
                                           description="colours")
        self.scale.observe(lambda _change: self.redraw(), names="value")
        self.widget.children = [explorer.status, widgets.HBox([explorer.layer, explorer.head]),
                                self.scale, self.image]

    def redraw(self) -> None:
        layer, head = self.selection
        matrix = self.maps.head(layer, head)  # [n, n]
        vmax = 1.0 if self.scale.value == "0 to 1" else max(float(matrix.max()), 1e-6)
        self.heatmap.draw(matrix, self.maps.labels,
                          f"{self.maps.model_name}: layer {layer}, head {head} "
                          f"(hatched: future tokens, masked)", vmax=vmax)
        show(self.image, self.heatmap)


class FocusView(_View):
    def __init__(self, explorer):
        super().__init__(explorer)
        self.bars = plots.FocusBars()
        self.image = _image()
        self.query = widgets.IntSlider(0, 0, 0, description="query")
        self.query_label = widgets.HTML()
        self.top_line = widgets.HTML()
        self.query.observe(self._query_moved, names="value")
        self.widget.children = [explorer.status, widgets.HBox([explorer.layer, explorer.head]),
                                widgets.HBox([self.query, self.query_label]), self.top_line,
                                self.image]

    def new_maps(self) -> None:
        n = self.maps.n_tokens
        self.query.unobserve(self._query_moved, names="value")
        self.query.max = n - 1
        self.query.value = n - 1  # the last token sees the whole text
        self.query.observe(self._query_moved, names="value")

    def _query_moved(self, _change) -> None:
        with errors_shown_in(self.explorer.messages):
            self.redraw()

    def redraw(self) -> None:
        layer, head = self.selection
        query = self.query.value
        labels = self.maps.labels
        weights = self.maps.head(layer, head)[query, : query + 1]  # [query+1]: visible keys
        self.bars.draw(weights, labels, f"query {query} '{labels[query]}': layer {layer}, "
                                        f"head {head}")
        self.query_label.value = f"<code>{escape(labels[query])}</code>"
        top = ", ".join(f"<code>{escape(label)}</code> (position {index}, {value:.2f})"
                        for index, label, value in self.bars.top_keys)
        self.top_line.value = f"Top keys: {top}"
        show(self.image, self.bars)


class LayerView(_View):
    def __init__(self, explorer):
        super().__init__(explorer)
        self.grid: plots.HeadGrid | None = None
        self.image = _image()
        note = widgets.HTML("The outlined head is the one the <i>head</i> slider selects "
                            "(shown large in the Head view).")
        self.widget.children = [explorer.status, widgets.HBox([explorer.layer, explorer.head]),
                                note, self.image]

    def new_maps(self) -> None:
        if self.grid is None or self.grid.n_heads != self.maps.n_heads:
            self.grid = plots.HeadGrid(self.maps.n_heads)

    def redraw(self) -> None:
        layer, head = self.selection
        self.grid.draw(self.maps.weights[layer], f"{self.maps.model_name}: every head of "
                                                 f"layer {layer}", selected=head)
        show(self.image, self.grid)


class ModelView(_View):
    def __init__(self, explorer):
        super().__init__(explorer)
        self.mosaic: plots.ModelMosaic | None = None
        self.heatmap = plots.HeadHeatmap(size=5.0)
        self.overview = _image()
        self.large = _image()
        note = widgets.HTML("Each tile is one head (shrunk, each scaled to its own maximum). "
                            "Pick a head with the sliders: it is outlined and opens large.")
        self.widget.children = [explorer.status, note,
                                widgets.HBox([explorer.layer, explorer.head]),
                                widgets.HBox([self.overview, self.large],  # side by side,
                                             layout=widgets.Layout(  # each at its own size
                                                 align_items="flex-start", flex_flow="row wrap"))]

    def new_maps(self) -> None:
        maps = self.maps
        self.mosaic = plots.ModelMosaic(maps.n_layers, maps.n_heads)
        self.mosaic.draw(maps.weights, f"{maps.model_name}: all {maps.n_layers * maps.n_heads} "
                                       f"heads")

    def redraw(self) -> None:
        layer, head = self.selection
        self.mosaic.select(layer, head)
        show(self.overview, self.mosaic)
        self.heatmap.draw(self.maps.head(layer, head), self.maps.labels,
                          f"layer {layer}, head {head}")
        show(self.large, self.heatmap)


class SummaryView(_View):
    def __init__(self, explorer):
        super().__init__(explorer)
        self.sort_by = widgets.Dropdown(options=list(SUMMARY_COLUMNS), value="previous",
                                        description="sort by")
        self.order = widgets.ToggleButtons(options=["highest first", "lowest first"])
        self.table = widgets.HTML(layout=widgets.Layout(max_height="360px", overflow="auto",
                                                        width="52%"))
        self.scatter = plots.SummaryScatter()
        self.image = _image()
        for control in (self.sort_by, self.order):
            control.observe(lambda _change: self.redraw(), names="value")
        legend = "<br>".join(f"<b>{name}</b>: {escape(text)}"
                             for name, text in SUMMARY_COLUMNS.items())
        self.widget.children = [explorer.status, widgets.HTML(legend),
                                widgets.HBox([self.sort_by, self.order]),
                                widgets.HBox([explorer.layer, explorer.head]),
                                widgets.HBox([self.table, self.image])]

    def rows(self) -> list[dict]:
        """The table's rows, in the order shown."""
        return self.maps.summaries().rows(self.sort_by.value,
                                          descending=self.order.value == "highest first")

    def redraw(self) -> None:
        summaries = self.maps.summaries()
        selected = self.selection
        self.table.value = summary_table_html(self.rows(), selected)
        self.scatter.draw(summaries.previous, summaries.first,
                          f"{self.maps.model_name}: every head (ringed: selected)", selected)
        show(self.image, self.scatter)


def summary_table_html(rows: list[dict], selected: tuple[int, int] | None = None) -> str:
    """Head summaries as an HTML table; the selected head's row highlighted."""
    columns = ["layer", "head", *SUMMARY_COLUMNS, "kind"]
    head = "".join(f"<th style='padding:2px 8px'>{name}</th>" for name in columns)
    body = []
    for row in rows:
        style = " style='background:#ffe0e0'" if (row["layer"], row["head"]) == selected else ""
        cells = "".join(f"<td style='padding:1px 8px;text-align:right'>{_cell(row[name])}</td>"
                        for name in columns)
        body.append(f"<tr{style}>{cells}</tr>")
    return (f"<table style='border-collapse:collapse;font-size:12px'><thead><tr>{head}</tr>"
            f"</thead><tbody>{''.join(body)}</tbody></table>")


def _cell(value) -> str:
    return f"{value:.3f}" if isinstance(value, float) else escape(str(value))


# ---------------------------------------------------------------------------------------------
# Attention of generated tokens


class GeneratedAttentionPanel:
    """Generate N tokens with the KV cache; a step slider shows each step's attention row."""

    def __init__(self, lm: LoadedModel, prompt: str = "The capital of France is",
                 max_new_tokens: int = 10):
        self.lm = lm
        self.messages = widgets.Output()
        self.prompt_box = widgets.Text(value=prompt, description="Prompt",
                                       layout=widgets.Layout(width="70%"))
        self.n_new = widgets.IntSlider(max_new_tokens, 1, 40, description="new tokens")
        self.generate_button = widgets.Button(description="Generate", button_style="primary")
        self.step = widgets.IntSlider(0, 0, 0, description="step")
        self.layer = widgets.IntSlider(0, 0, lm.n_layers - 1, description="layer")
        self.head = widgets.IntSlider(0, 0, lm.n_heads - 1, description="head")
        self.text_line = widgets.HTML()
        self.heatmap = plots.HeadHeatmap(size=5.0)
        self.bars = plots.FocusBars(height=3.0)
        self.rows_image, self.bars_image = _image(), _image()
        self.result: GeneratedAttention | None = None
        self._quiet = False
        self.generate_button.on_click(lambda _button: self.run())
        for slider in (self.step, self.layer, self.head):
            slider.observe(self._moved, names="value")
        self.widget = widgets.VBox([
            widgets.HBox([self.prompt_box, self.n_new, self.generate_button]), self.messages,
            self.text_line, widgets.HBox([self.step, self.layer, self.head]),
            self.bars_image, self.rows_image])
        self.run()

    def run(self) -> None:
        """Generate (one cached decode, attention recorded), then redraw."""
        clear(self.messages)
        with errors_shown_in(self.messages):
            result = generated_attention(self.lm, self.prompt_box.value, self.n_new.value)
            self.result = result
            self._quiet = True
            try:
                self.step.max = result.n_steps - 1
                self.step.value = result.n_steps - 1
            finally:
                self._quiet = False
            self.redraw()

    def _moved(self, _change) -> None:
        if not self._quiet and self.result is not None:
            with errors_shown_in(self.messages):
                self.redraw()

    def redraw(self) -> None:
        result, step = self.result, self.step.value
        layer, head = self.layer.value, self.head.value
        query = result.query_position(step)
        labels = result.labels
        self.text_line.value = _generated_text_html(result, step)
        self.bars.draw(result.row(step, layer, head), labels,
                       f"step {step}: query '{labels[query]}' (position {query}) predicts "
                       f"'{labels[query + 1]}'; layer {layer}, head {head}")
        show(self.bars_image, self.bars)
        steps_labels = [f"{s}: {labels[result.query_position(s)]}"
                        for s in range(result.n_steps)]
        self.heatmap.draw(result.matrix(layer, head), labels[: result.rows[-1].shape[-1]],
                          "every step's row (query = newest token)", query_labels=steps_labels)
        self.heatmap.mark_row(step)
        show(self.rows_image, self.heatmap)

    def _ipython_display_(self) -> None:
        from IPython.display import display

        display(self.widget)


def _generated_text_html(result: GeneratedAttention, step: int) -> str:
    query = result.query_position(step)
    pieces = []
    for position, label in enumerate(result.labels):
        style = "color:#1f4e99" if position >= result.n_prompt else "color:#444"
        if position == query:
            style += ";background:#ffd6d6;font-weight:700"
        elif position == query + 1:
            style += ";text-decoration:underline"
        pieces.append(f"<span style='{style}'>{escape(label)}</span>")
    return ("<div style='font-family:monospace'>" + " ".join(pieces) + "</div>"
            "<div style='color:#666;font-size:90%'>grey: prompt, blue: generated; "
            "red: this step's query, underlined: the token it predicted</div>")


# ---------------------------------------------------------------------------------------------
# bertviz, which needs scripts from a CDN

CDN_HOST = "cdnjs.cloudflare.com"  # where bertviz loads require.js, d3 and jQuery from
BERTVIZ_MAX_TOKENS = 64


class Notice(str):
    """A one-line message that displays as itself (plain text and HTML)."""

    def __repr__(self) -> str:
        return str(self)

    def _repr_html_(self) -> str:
        return f'<div style="color:#8a5a00">{escape(self)}</div>'


def cdn_reachable(timeout: float = 1.5) -> tuple[bool, str]:
    """Whether bertviz's CDN answers, and why not. KVLAB_OFFLINE=1 says no without trying."""
    if os.environ.get("KVLAB_OFFLINE", "").lower() in ("1", "true", "yes", "on"):
        return False, "KVLAB_OFFLINE is set"
    try:
        socket.create_connection((CDN_HOST, 443), timeout=timeout).close()
        return True, ""
    except OSError as err:
        return False, f"{CDN_HOST} cannot be reached ({err.strerror or err})"


def bertviz_view(maps: AttentionMaps, kind: str = "head",
                 max_tokens: int = BERTVIZ_MAX_TOKENS):
    """bertviz's head_view or model_view of the maps as HTML, or one line saying why not."""
    if kind not in ("head", "model"):
        raise ValueError(f"kind must be 'head' or 'model', got {kind!r}")
    ok, why = cdn_reachable()
    if not ok:
        return Notice(f"bertviz {kind}_view is not shown: it loads its scripts from {CDN_HOST}, "
                      f"and {why}. The kvlab views above show the same maps offline.")
    from bertviz import head_view, model_view

    n = min(maps.n_tokens, max_tokens)
    attention = [maps.weights[layer, :, :n, :n][None] for layer in range(maps.n_layers)]
    view = head_view if kind == "head" else model_view
    return view(attention, maps.labels[:n], prettify_tokens=False, html_action="return")


# =============================================================================================
# Notebook 02 (cache mechanics): the decode stepper panel and the cache size calculator
# =============================================================================================





def _table_html(rows, header=None) -> str:
    """A small HTML table; every cell escaped."""
    cell = 'style="text-align:left;padding:1px 10px 1px 0"'
    head = "".join(f"<th {cell}>{escape(str(h))}</th>" for h in header) if header else ""
    body = "".join("<tr>" + "".join(f"<td {cell}>{escape(str(c))}</td>" for c in row)
                   + "</tr>" for row in rows)
    return f"<table>{'<tr>' + head + '</tr>' if head else ''}{body}</table>"


def code_block(obj) -> Markdown:
    """The source of a kvlab function or class, read from the installed file (never a copy)."""
    return Markdown(f"```python\n{inspect.getsource(obj)}```")


def shapes_html(stepper, steps: list[int]) -> HTML:
    """The tensor shapes of several steps side by side (e.g. the prefill and a decode step)."""
    tables = [stepper.shapes(step) for step in steps]
    header = ["tensor"] + [f"step {s} ({stepper.record(s).kind})" for s in steps]
    rows = [[name] + ["[" + ", ".join(map(str, table[i][1])) + "]" for table in tables]
            for i, (name, _, _) in enumerate(tables[0])]
    return HTML(_table_html(rows, header))


def comparison_html(comparison, lm) -> HTML:
    """An exactness.RunComparison as a table: step, both tokens, largest logit difference."""
    header = ["step", comparison.label_a, comparison.label_b, "largest |logit difference|"]
    return HTML(_table_html(comparison.table(lm.decode), header))


def gqa_html(specs: list[ModelSpec], n_tokens: int, dtype: str = "float32") -> HTML:
    """Cache bytes of each model as built vs with one KV head per query head."""
    rows = []
    for spec in specs:
        size = cache_size(spec, n_tokens, 1, dtype)
        rows.append([spec.name, spec.n_heads, spec.n_kv_heads, human_bytes(size.cache_bytes),
                     human_bytes(size.multi_head_cache_bytes),
                     f"{size.multi_head_cache_bytes / size.cache_bytes:.0f}x"])
    header = ["model", "query heads", "KV heads", f"cache, {n_tokens:,} tokens ({dtype})",
              "with full multi-head", "multi-head / actual"]
    return HTML(_table_html(rows, header))


class StepperPanel(widgets.VBox):
    """Step through greedy decoding: 'next token' advances the real decode state one step;
    the step slider looks back at any step taken; layer/head choose what is drawn."""

    def __init__(self, lm, prompt: str, max_new_tokens: int = 24):
        self.stepper = DecodeStepper(lm, prompt, max_new_tokens)
        self.prompt = widgets.Text(value=prompt, description="prompt",
                                   layout=widgets.Layout(width="60%"))
        self.restart = widgets.Button(description="start over with this prompt",
                                      layout=widgets.Layout(width="auto"))
        self.next_token = widgets.Button(description="next token", button_style="primary")
        self.step_slider = widgets.IntSlider(0, 0, 0, description="step")
        self.layer = widgets.IntSlider(0, 0, lm.n_layers - 1, description="layer")
        self.head = widgets.IntSlider(0, 0, lm.n_heads - 1, description="head")
        self.errors = widgets.Output()
        self.info = widgets.HTML()
        self.figure = widgets.Output()
        super().__init__([
            widgets.HBox([self.prompt, self.restart]),
            widgets.HBox([self.next_token, self.step_slider]),
            widgets.HBox([self.layer, self.head]),
            self.errors, self.info, self.figure])

        self.restart.on_click(lambda _: self.start_over())
        self.next_token.on_click(lambda _: self.advance())
        for control in (self.step_slider, self.layer, self.head):
            control.observe(lambda _: self.redraw(), names="value")
        self.stepper.step()  # the prefill, so there is something to show
        self._show_latest()

    def advance(self) -> None:
        """One more decode step (one forward pass of one token), then show it."""
        with errors_shown_in(self.errors):
            clear(self.errors)
            self.stepper.step()
            self._show_latest()

    def start_over(self) -> None:
        """Reset the cache with the prompt in the text box and run its prefill."""
        with errors_shown_in(self.errors):
            clear(self.errors)
            self.stepper.reset(self.prompt.value)
            self.stepper.step()
            self._show_latest()

    def _show_latest(self) -> None:
        latest = len(self.stepper.steps) - 1
        with self.step_slider.hold_trait_notifications():
            self.step_slider.max = latest
            self.step_slider.value = latest
        self.next_token.disabled = self.stepper.done
        self.redraw()

    def redraw(self) -> None:
        """Draw the chosen step, layer and head from what is stored (no model call)."""
        step = self.step_slider.value
        self.info.value = self._info_html(step)
        with self.figure:
            clear_output(wait=True)
            fig = cache_step_figure(self.stepper, self.layer.value, self.head.value, step)
            display(fig)
            plt.close(fig)

    def _info_html(self, step: int) -> str:
        stepper = self.stepper
        record = stepper.record(step)
        totals = stepper.totals(step)
        saved = 1 - totals["flops"] / totals["flops_recomputing"]
        text = _tokens_html(stepper, record)
        work = [
            ("this step", f"{record.kind}: {record.n_new} position(s) computed, "
                          f"{record.n_cached} reused from the cache"),
            ("so far, with the cache", f"{totals['positions_computed']} positions computed, "
                                       f"{totals['positions_reused']} reused; "
                                       f"{totals['flops'] / 1e9:.3f} GFLOPs"),
            ("so far, recomputing", f"{totals['positions_recomputing']} positions computed; "
                                    f"{totals['flops_recomputing'] / 1e9:.3f} GFLOPs"),
            ("saved by the cache", f"{saved:.0%} of the FLOPs"),
            ("cache now holds", f"{stepper.cache.length} positions, "
                                f"{stepper.cache.nbytes:,} bytes"),
        ]
        shapes = [(name, "[" + ", ".join(map(str, shape)) + "]", meaning)
                  for name, shape, meaning in stepper.shapes(step)]
        return (f"<div>{text}</div>{_table_html(work)}"
                f"<details><summary>shapes at step {record.index} (one layer)</summary>"
                f"{_table_html(shapes, ['tensor', 'shape', 'holds'])}</details>")


def _tokens_html(stepper, record) -> str:
    """Prompt tokens grey, tokens fed at this step outlined, the chosen next token green."""
    parts = []
    labels = token_labels(stepper.lm.tokenizer, [*stepper.ids[:record.n_total], record.next_id])
    for position, label in enumerate(labels[:-1]):
        label = escape(label)
        if position >= record.n_cached:
            style = "outline:2px solid #e66100"
        elif position < len(stepper.prompt_ids):
            style = "color:#777"
        else:
            style = ""
        parts.append(f'<span style="{style};margin-right:2px">{label}</span>')
    chosen = escape(labels[-1])
    parts.append(f'&nbsp;&rarr;&nbsp;<b style="color:#1a7f37">{chosen}</b>')
    return "".join(parts)


class CacheCalculator(widgets.VBox):
    """KV cache bytes for any shape, with presets from public configs, beside weight bytes."""

    def __init__(self, lm=None, preset: str = "Llama-3-8B", context: int = 8192):
        self.presets = dict(PRESETS)
        if lm is not None:
            self.presets[f"loaded: {lm.name}"] = spec_of(lm)
        if preset not in self.presets:
            raise ValueError(f"unknown preset {preset!r}; presets: {', '.join(self.presets)}")
        self.preset = widgets.Dropdown(options=list(self.presets), value=preset,
                                       description="preset")
        self.n_layers = widgets.IntText(description="layers")
        self.n_heads = widgets.IntText(description="query heads", style=LABEL_STYLE)
        self.n_kv_heads = widgets.IntText(description="KV heads", style=LABEL_STYLE)
        self.head_dim = widgets.IntText(description="head_dim")
        self.context = widgets.IntText(value=context, description="context")
        self.batch = widgets.IntText(value=1, description="batch")
        self.dtype = widgets.Dropdown(options=list(DTYPE_BYTES), value="float16",
                                      description="dtype")
        self.errors = widgets.Output()
        self.result = widgets.HTML()
        super().__init__([
            self.preset,
            widgets.HBox([self.n_layers, self.n_heads]),
            widgets.HBox([self.n_kv_heads, self.head_dim]),
            widgets.HBox([self.context, self.batch, self.dtype]),
            self.errors, self.result])
        self._loading = False
        self.preset.observe(lambda _: self.load_preset(), names="value")
        for control in (self.n_layers, self.n_heads, self.n_kv_heads, self.head_dim,
                        self.context, self.batch, self.dtype):
            control.observe(lambda _: self.recompute(), names="value")
        self.load_preset()

    def load_preset(self) -> None:
        """Fill the shape fields from the chosen preset."""
        spec = self.presets[self.preset.value]
        self._loading = True
        self.n_layers.value, self.n_heads.value = spec.n_layers, spec.n_heads
        self.n_kv_heads.value, self.head_dim.value = spec.n_kv_heads, spec.head_dim
        self._loading = False
        self.recompute()

    def recompute(self) -> None:
        """Recompute and show the sizes; a bad field shows an error line instead."""
        if self._loading:
            return
        clear(self.errors)
        with errors_shown_in(self.errors):
            self.result.value = ""
            spec = reshaped(self.presets[self.preset.value], n_layers=self.n_layers.value,
                            n_heads=self.n_heads.value, n_kv_heads=self.n_kv_heads.value,
                            head_dim=self.head_dim.value)
            size = cache_size(spec, self.context.value, self.batch.value, self.dtype.value)
            self.result.value = _size_html(size)


def size_table(size) -> HTML:
    """A memory.CacheSize as a table: cache, per token, weights, multi-head equivalent."""
    return HTML(_size_html(size))


def _size_html(size) -> str:
    spec = size.spec
    rows = [
        ("KV cache", f"{human_bytes(size.cache_bytes)} ({size.cache_bytes:,} bytes)"),
        ("per token (whole batch)", f"{human_bytes(size.per_token_bytes)} "
                                    f"({size.per_token_bytes:,} bytes)"),
        ("weights", f"{human_bytes(size.weight_bytes)} ({spec.n_params / 1e6:,.0f}M "
                    f"parameters in {size.dtype})"),
        ("cache / weights", f"{size.cache_to_weights:.2f}"),
        ("with full multi-head attention", f"{human_bytes(size.multi_head_cache_bytes)} "
                                           f"({spec.n_heads} KV heads instead of "
                                           f"{spec.n_kv_heads})"),
    ]
    formula = (f"2 (keys and values) x {spec.n_layers} layers x {size.batch} batch x "
               f"{spec.n_kv_heads} KV heads x {spec.head_dim} head_dim x {size.n_tokens:,} "
               f"tokens x {dtype_bytes(size.dtype)} bytes = {size.cache_bytes:,} bytes")
    return f"{_table_html(rows)}<div style='color:#555'>{escape(formula)}</div>"


# =============================================================================================
# Notebook 03 (benchmark): the benchmark panel (runs in a background thread, Stop keeps results)
# =============================================================================================




@dataclass(frozen=True)
class BenchRequest:
    """What the panel was asked to run."""

    model: str
    prompt_len: int
    new_tokens: int
    repeats: int
    modes: tuple[str, ...]
    device: str


def _bench_model_names(current: str) -> list[str]:
    from .models import REGISTRY

    return list(dict.fromkeys([current, *REGISTRY]))


class BenchmarkPanel:
    """Model, sizes and modes; Run (with a tqdm bar) and Stop, which keeps what finished.

    The benchmark runs in a background thread, because a running cell would block the Stop
    button's click. A run estimated to take longer than `long_run_s` asks first: the Run
    button turns into "Run anyway". The last report is `panel.report`.
    """

    def __init__(self, lm, prompt_len: int | None = None, new_tokens: int | None = None,
                 repeats: int | None = None, modes=_bench.MODES,
                 long_run_s: float = _bench.LONG_RUN_S):
        import torch

        sizes = _bench.lesson_sizes()
        self.models = {lm.name: lm}
        self.long_run_s = long_run_s
        self.report: _bench.BenchReport | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._confirmed: BenchRequest | None = None
        self._rates: dict[tuple[str, str], _bench.Rates] = {}

        self.model = widgets.Combobox(value=lm.name, options=_bench_model_names(lm.name),
                                      description="model", ensure_option=False)
        self.prompt_len = widgets.BoundedIntText(prompt_len or sizes["prompt_len"], min=1,
                                                 max=1_000_000, description="prompt tokens",
                                                 style=LABEL_STYLE)
        self.new_tokens = widgets.BoundedIntText(new_tokens or sizes["new_tokens"], min=1,
                                                 max=1_000_000, description="new tokens",
                                                 style=LABEL_STYLE)
        self.repeats = widgets.BoundedIntText(repeats or sizes["repeats"], min=1, max=50,
                                              description="repeats")
        self.mode_boxes = {mode: widgets.Checkbox(value=mode in modes, description=mode,
                                                  indent=False)
                           for mode in _bench.MODES}
        devices = ["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"]
        self.device = widgets.Dropdown(options=devices, value="cpu", description="device")
        self.device.layout.display = None if len(devices) > 1 else "none"  # GPU column: optional
        self.run_button = widgets.Button(description="Run", button_style="primary", icon="play")
        self.stop_button = widgets.Button(description="Stop", icon="stop", disabled=True)
        self.status = widgets.HTML()
        self.bar_area = widgets.Box()
        self.output = widgets.Output()
        self.run_button.on_click(self._on_run)
        self.stop_button.on_click(self._on_stop)
        self.widget = widgets.VBox([
            widgets.HBox([self.model, self.device]),
            widgets.HBox([self.prompt_len, self.new_tokens, self.repeats]),
            widgets.HBox(list(self.mode_boxes.values())),
            widgets.HBox([self.run_button, self.stop_button, self.status]),
            self.bar_area, self.output])

    def _ipython_display_(self):
        display(self.widget)

    # --- what to run --------------------------------------------------------------------------

    def request(self) -> BenchRequest:
        """The panel's values, checked; a ValueError names what is wrong."""
        modes = tuple(mode for mode, box in self.mode_boxes.items() if box.value)
        if not modes:
            raise ValueError(f"tick at least one mode: {', '.join(_bench.MODES)}")
        name = self.model.value.strip()
        if not name:
            raise ValueError(f"type a model name, e.g. {', '.join(self.model.options[:3])}")
        return BenchRequest(name, self.prompt_len.value, self.new_tokens.value,
                            self.repeats.value, modes, self.device.value)

    def loaded(self, name: str):
        """The model called `name`, loaded once and kept."""
        from .models import load

        if name not in self.models:
            self.models[name] = load(name, verbose=False)
        return self.models[name]

    def estimate_s(self, lm, request: BenchRequest) -> float:
        """Seconds the request would take here: cost model x rates measured once per model."""
        key = (lm.name, str(_bench.model_device(lm)))
        if key not in self._rates:
            self._rates[key] = _bench.measure_rates(lm, repeats=2)
        return _bench.estimate_run_s(_bench.spec_of(lm), request.prompt_len,
                                     request.new_tokens, request.repeats, request.modes,
                                     self._rates[key])

    # --- buttons ------------------------------------------------------------------------------

    def _on_run(self, _button=None) -> None:
        if self.running:
            return
        self.output.outputs = ()  # works with or without a running kernel
        with errors_shown_in(self.output):
            request = self.request()
            self.status.value = f"loading {request.model}..."
            lm = self.loaded(request.model)
            from .generate import check_length

            check_length(lm, request.prompt_len, request.new_tokens)
            self.status.value = "estimating..."
            seconds = self.estimate_s(lm, request)
            if seconds > self.long_run_s and self._confirmed != request:
                self._ask_first(request, seconds)
                return
            self.start(lm, request, seconds)
        if not self.running:
            self.status.value = ""

    def _ask_first(self, request: BenchRequest, seconds: float) -> None:
        self._confirmed = request
        duration = _bench.format_duration(seconds)
        self.run_button.description = f"Run anyway (~{duration})"
        self.run_button.button_style = "warning"
        self.status.value = ""
        self.output.append_display_data(HTML(
            f'<div style="color:#8a5a00">This run would take about {escape(duration)} on this '
            f"machine (estimated from the cost model and the rates measured here). Click "
            f"<b>Run anyway</b> to start it, or lower the new tokens, repeats or modes.</div>"))

    def start(self, lm, request: BenchRequest, estimate_s: float | None = None) -> None:
        """Run the request in a background thread; the panel stays responsive."""
        self._confirmed = None
        self._stop.clear()
        self.run_button.description, self.run_button.button_style = "Run", "primary"
        self.run_button.disabled, self.stop_button.disabled = True, False
        expected = f" (about {_bench.format_duration(estimate_s)})" if estimate_s else ""
        self.status.value = f"running {request.model} on {request.device}{expected}"
        self._thread = threading.Thread(target=self._run, args=(lm, request), daemon=True)
        self._thread.start()

    def _on_stop(self, _button=None) -> None:
        self._stop.set()
        self.stop_button.disabled = True
        self.status.value = "stopping after the current run (finished runs are kept)..."

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def wait(self, timeout: float | None = None) -> _bench.BenchReport | None:
        """Block until the background run ends (for scripts and tests); the report."""
        if self._thread is not None:
            self._thread.join(timeout)
        return self.report

    # --- the background run -------------------------------------------------------------------

    def _progress(self, **options):
        from tqdm.notebook import tqdm

        bar = tqdm(display=False, **options)
        self.bar_area.children = (bar.container,)
        return bar

    def _run(self, lm, request: BenchRequest) -> None:
        try:
            report = _bench.benchmark(lm, request.prompt_len, request.new_tokens,
                                      request.repeats, modes=request.modes,
                                      stop=self._stop.is_set, progress=self._progress,
                                      device=request.device)
        except Exception as err:  # any failure is shown in the panel, which keeps working
            self.output.append_display_data(error_html(f"{type(err).__name__}: {err}"))
            self.status.value = "failed"
        else:
            self.report = report
            self._show(report)
            self.status.value = "stopped: kept what finished" if report.stopped_early else "done"
        finally:
            self.run_button.disabled, self.stop_button.disabled = False, True

    def _show(self, report: _bench.BenchReport) -> None:
        from IPython.display import Image

        from . import plots

        self.output.append_stdout(_bench.report_summary(report) + "\n")
        if report.results:
            figure = plots.latency_plot(report)
            self.output.append_display_data(Image(data=plots.png_bytes(figure)))

