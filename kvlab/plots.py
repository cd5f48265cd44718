"""matplotlib figures used by the notebooks."""

from __future__ import annotations

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

import io  # noqa: E402  (imports kept in this section: easy merges)

from matplotlib.figure import Figure  # noqa: E402
from matplotlib.ticker import FormatStrFormatter  # noqa: E402

from . import bench as _bench  # noqa: E402


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
