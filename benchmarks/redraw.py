"""How long the attention explorer takes to compute a text's maps and to redraw on a slider move.

Run: PYTHONPATH=. python benchmarks/redraw.py [model] [n_tokens]
(defaults: smollm2-135m, 64 tokens). Prints the time of one model run, of building every
view, and the median of several head-slider moves per view (each view redrawn alone), then
one real slider move with all five views open.
"""

from __future__ import annotations

import statistics
import sys
import time

import kvlab
from kvlab.attention import attention_maps
from kvlab.widgets import AttentionExplorer

TEXT = ("The quick brown fox jumps over the lazy dog while the cat watches from the mat, "
        "and then the dog runs after the fox into the woods behind the old red barn. ") * 40


def text_of(lm, n_tokens: int) -> str:
    """A text of exactly n_tokens tokens."""
    return lm.decode(lm.encode(TEXT)[:n_tokens])


def median_ms(action, repeats: int = 7) -> float:
    times = []
    for index in range(repeats):
        start = time.perf_counter()
        action(index)
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def main() -> None:
    name = sys.argv[1] if len(sys.argv) > 1 else "smollm2-135m"
    n_tokens = int(sys.argv[2]) if len(sys.argv) > 2 else 64
    lm = kvlab.load(name)
    text = text_of(lm, n_tokens)
    attention_maps(lm, "warm up")  # the first run of a model pages its weights in
    start = time.perf_counter()
    attention_maps(lm, text)
    print(f"maps of {n_tokens} tokens (one model run): {time.perf_counter() - start:.2f} s")
    start = time.perf_counter()
    explorer = AttentionExplorer(lm, text)
    for make in (explorer.head_view, explorer.focus_view, explorer.layer_view,
                 explorer.model_view, explorer.summary_view):
        make()
    print(f"{explorer.maps.n_tokens} tokens: maps + first render of all five views: "
          f"{time.perf_counter() - start:.2f} s (model runs: {explorer.model_runs})")
    for view_name in ("head", "focus", "layer", "model", "summary"):
        view = explorer._views[view_name]

        def move(index, view=view):
            explorer._quiet = True
            explorer.head.value = index % lm.n_heads
            explorer._quiet = False
            view.redraw()

        print(f"  {view_name:8s} view: slider redraw {median_ms(move):6.1f} ms (median of 7)")
    start = time.perf_counter()
    explorer.head.value = (explorer.head.value + 1) % lm.n_heads  # all five views redraw
    print(f"  one head-slider move, all five views open: "
          f"{(time.perf_counter() - start) * 1000:.0f} ms; model runs still "
          f"{explorer.model_runs}")


if __name__ == "__main__":
    main()
