"""Real-browser smoke test: each notebook in JupyterLab, in headless Chromium.

For every notebook: Run > Run All Cells, wait until every cell ran, check that no output
shows an error and that the widgets rendered, do one interaction through the page (as a
student would: keyboard or click) and check its effect, and save screenshots of every
panel under build/screenshots/. Skipped, with the reason, where Chromium or Playwright is
missing (KVLAB_REQUIRE_BROWSER=1 makes that a failure, for CI). The notebooks are served
from a temporary copy, never changed in place.

Adding a notebook: write an `interact_...(page, cell_named, shots)` function and add one
`Case` to CASES.
"""

from __future__ import annotations

import json
import os
import re
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import browser_lab as lab
import pytest

REPO = Path(__file__).resolve().parents[1]
NOTEBOOKS = REPO / "notebooks"
SCREENSHOTS = REPO / "build" / "screenshots"
RUN_TIMEOUT_S = 1800  # a whole notebook on 2 busy cores; generous, never asserted on
STEP_TIMEOUT_MS = 300_000  # one interaction (a model call, a redraw)
VIEWPORT = {"width": 1400, "height": 1800}


@dataclass
class Case:
    notebook: str
    interact: Callable  # (page, cell_named, shots) -> None; asserts the interaction's effect


# -- the interactions, one per notebook ---------------------------------------------------------

def interact_01(page, cell_named, shots) -> None:
    """Move the layer slider with the keyboard: the head heatmap must be redrawn."""
    cell = cell_named("explorer.head_view()")
    slider = lab.widget_slider(cell, "layer")
    heatmap = cell.locator(".widget-image").first
    lab.wait_for_images(cell)
    before = heatmap.screenshot(path=shots("head-view-layer0"))
    old_src = heatmap.get_attribute("src")
    assert lab.slider_value(slider) == "0"
    slider.locator(".noUi-handle").focus()
    page.keyboard.press("ArrowRight")
    lab.wait_for_text(slider.locator(".widget-readout"), "1", STEP_TIMEOUT_MS)
    lab.wait_for_new_image(heatmap, old_src, STEP_TIMEOUT_MS)
    after = heatmap.screenshot(path=shots("head-view-layer1"))
    assert after != before, "the heatmap did not change when the layer slider moved"


def interact_02(page, cell_named, shots) -> None:
    """Click 'next token': the step slider moves to 1 and the info shows a decode step."""
    cell = cell_named("widgets.StepperPanel(")
    step = lab.widget_slider(cell, "step")
    assert lab.slider_value(step) == "0"
    cell.get_by_role("button", name="next token").click()
    lab.wait_for_text(step.locator(".widget-readout"), "1", STEP_TIMEOUT_MS)
    cell.get_by_text(re.compile(r"decode: 1 position\(s\) computed")).wait_for(
        timeout=STEP_TIMEOUT_MS)
    lab.wait_for_kernel_idle(page, STEP_TIMEOUT_MS / 1000)
    lab.wait_for_images(cell)
    cell.locator(".jp-Cell-outputArea").screenshot(path=shots("stepper-step1"))


def interact_03(page, cell_named, shots) -> None:
    """Run the panel's benchmark (tiny sizes under KVLAB_QUICK): its status ends "done"
    and a latency plot appears. It runs in a background thread, so the kernel stays idle:
    wait on the panel, not the kernel."""
    cell = cell_named("widgets.BenchmarkPanel(")
    cell.get_by_role("button", name="Run").click()
    status = cell.locator(".widget-html-content", has_text=re.compile(r"^(done|failed|stop)"))
    # On a slow machine the panel may estimate over a minute and ask first: say yes.
    run_anyway = cell.get_by_role("button", name=re.compile(r"^Run anyway"))
    status.or_(run_anyway).first.wait_for(timeout=STEP_TIMEOUT_MS)
    if run_anyway.is_visible():
        run_anyway.click()
    status.wait_for(timeout=STEP_TIMEOUT_MS)
    assert status.inner_text().strip() == "done", f"benchmark status: {status.inner_text()!r}"
    output = cell.locator(".widget-output img")
    output.first.wait_for(timeout=STEP_TIMEOUT_MS)
    lab.wait_for_images(cell)
    assert cell.get_by_role("button", name="Stop").is_disabled()
    cell.locator(".jp-Cell-outputArea").screenshot(path=shots("benchmark-panel-after-run"))


CASES = [
    Case("01_attention.ipynb", interact_01),
    Case("02_cache_mechanics.ipynb", interact_02),
    Case("03_benchmark.ipynb", interact_03),
]


# -- fixtures ---------------------------------------------------------------------------------

# A notebook that must fail: proves the checks can see an error and a stopped Run All.
BROKEN_NOTEBOOK = "zz_broken.ipynb"
BROKEN_CELLS = ["import ipywidgets\nipywidgets.IntSlider(description='fine')",
                "1 / 0", "print('never reached')"]


def write_broken_notebook(folder: Path) -> Path:
    cells = [{"cell_type": "code", "metadata": {}, "source": source, "outputs": [],
              "execution_count": None} for source in BROKEN_CELLS]
    kernelspec = {"name": "python3", "display_name": "Python 3", "language": "python"}
    notebook = {"cells": cells, "metadata": {"kernelspec": kernelspec}, "nbformat": 4,
                "nbformat_minor": 5}
    path = folder / BROKEN_NOTEBOOK
    path.write_text(json.dumps(notebook))
    return path


@pytest.fixture(scope="module")
def lab_url(tmp_path_factory):
    why = lab.missing_browser()
    if why and os.environ.get("KVLAB_REQUIRE_BROWSER") == "1":  # CI: never skip silently
        pytest.fail(f"KVLAB_REQUIRE_BROWSER=1 but {why}")
    if why:
        pytest.skip(f"browser test skipped: {why}")
    env = {
        "KVLAB_MODEL": os.environ.get("KVLAB_MODEL", "smollm2-135m"),
        "KVLAB_QUICK": "1",
        "HF_HUB_OFFLINE": "1",
        # the kernel imports this checkout's kvlab, whatever is installed
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
    }
    present = [NOTEBOOKS / case.notebook for case in CASES
               if (NOTEBOOKS / case.notebook).exists()]
    present.append(write_broken_notebook(tmp_path_factory.mktemp("broken")))
    with lab.jupyter_lab(present, tmp_path_factory.mktemp("lab"), env) as url:
        yield url


@pytest.fixture(scope="module")
def browser(lab_url):
    with lab.chromium_browser() as chromium:
        yield chromium


@pytest.fixture
def page(browser, lab_url):
    page = browser.new_page(viewport=VIEWPORT)
    page.set_default_timeout(STEP_TIMEOUT_MS)
    page.uncaught_errors = []
    page.on("pageerror", lambda error: page.uncaught_errors.append(str(error)))
    yield page
    page.close()
    shut_down_kernels(lab_url)  # one model in memory at a time


def shut_down_kernels(url: str) -> None:
    def call(method, path):
        request = urllib.request.Request(f"{url}{path}?token={lab.TOKEN}", method=method)
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.read()

    for session in json.loads(call("GET", "/api/sessions")):
        call("DELETE", f"/api/sessions/{session['id']}")


# -- the test ---------------------------------------------------------------------------------

@pytest.mark.parametrize("case", CASES, ids=[case.notebook.split("_")[0] for case in CASES])
def test_notebook_in_browser(case, page, lab_url):
    path = NOTEBOOKS / case.notebook
    if not path.exists():
        pytest.skip(f"{case.notebook} is not in notebooks/ yet")
    stem = path.stem
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    for old in SCREENSHOTS.glob(f"{stem}-*.png"):
        old.unlink()

    def shots(label):
        return SCREENSHOTS / f"{stem}-{label}.png"

    with lab.screenshot_on_failure(page, shots("FAILED")):
        run_and_interact(case, page, lab_url, path, shots)


def run_and_interact(case, page, lab_url, path, shots) -> None:
    def cell_named(snippet):
        return lab.code_cell(page, snippet)

    lab.open_notebook(page, lab_url, case.notebook, count_code_cells(path), RUN_TIMEOUT_S)
    lab.run_all_cells(page)
    state = lab.wait_until_run_finished(page, RUN_TIMEOUT_S)
    page.screenshot(path=shots("after-run-all"))
    assert_clean(page, f"after Run All (state {state})")
    assert lab.widget_count(page) > 0, "no ipywidgets view rendered on the page"
    lab.screenshot_panels(page, shots)

    case.interact(page, cell_named, shots)
    assert_clean(page, "after the interaction")


def test_browser_checks_see_an_error(page, lab_url):
    """The harness itself: a raising cell ends the wait and is reported as a problem."""
    lab.open_notebook(page, lab_url, BROKEN_NOTEBOOK, len(BROKEN_CELLS), RUN_TIMEOUT_S)
    lab.run_all_cells(page)
    state = lab.wait_until_run_finished(page, RUN_TIMEOUT_S)
    assert state["errors"] > 0
    assert lab.widget_count(page) > 0
    problems = lab.page_problems(page)
    assert any("ZeroDivisionError" in problem for problem in problems), problems


def assert_clean(page, when: str) -> None:
    problems = lab.page_problems(page) + [f"page error: {e}" for e in page.uncaught_errors]
    assert not problems, f"{when}:\n" + "\n".join(problems)


def count_code_cells(path: Path) -> int:
    cells = json.loads(path.read_text())["cells"]
    return sum(cell["cell_type"] == "code" for cell in cells)
