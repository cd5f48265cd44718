"""ipywidgets panels used by the notebooks.

Every panel follows one rule: a bad value shows an error line in the panel's own output
area, the panel keeps working, and nothing the student typed is lost.

The attention explorer computes a text's maps once (one model run per text and model) and
every control after that only redraws: figures are built once and updated in place, then
rendered into `Image` widgets.
"""

from __future__ import annotations

import contextlib
import io
import os
import socket
from contextlib import contextmanager
from html import escape

import ipywidgets as widgets
from IPython.display import HTML

from . import plots
from .attention import (
    SUMMARY_COLUMNS,
    AttentionMaps,
    GeneratedAttention,
    attention_maps,
    generated_attention,
)
from .models import LoadedModel, available, load


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
        parts.append(data.get("text/html") or data.get("text/plain", ""))
    return "\n".join(parts)


# ---------------------------------------------------------------------------------------------
# Models, loaded once per name

_LOADED: dict[str, LoadedModel] = {}


def remember(lm: LoadedModel) -> LoadedModel:
    """Keep a loaded model so that picking it again in a panel does not reload it."""
    _LOADED.setdefault(lm.name, lm)
    return _LOADED[lm.name]


def cached_model(name: str, output: widgets.Output | None = None) -> LoadedModel:
    """The model of that name, loaded on first use; its model line goes to `output`."""
    if name not in _LOADED:
        printed = io.StringIO()
        with contextlib.redirect_stdout(printed):
            lm = load(name)
        if output is not None:
            output.append_stdout(printed.getvalue())
        _LOADED[name] = lm
    return _LOADED[name]


def model_choices(current: str) -> list[str]:
    """Names a panel may offer: the current model, loaded ones, and those available here."""
    names = [current, *_LOADED]
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
                                widgets.HBox([self.overview, self.large])]

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
