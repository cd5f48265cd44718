"""A throw-away JupyterLab server and a headless Chromium page driving it (for test_browser).

The server gets its own config, settings, workspace and runtime folders, a fixed token and
a free port, and serves a temporary copy of the notebooks, so the repository is never
written to and nothing of the user's own JupyterLab set-up leaks in.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path

# Debian's chromium; KVLAB_CHROMIUM names another build (e.g. chromium-browser, Chrome).
CHROMIUM = os.environ.get("KVLAB_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
INSTALL_HINT = ("install with `apt-get install -y chromium` and "
                "`pip install playwright` (never `playwright install`)")
TOKEN = "kvlab-browser-test"

# User settings for the temporary profile: no news or update checks (the "Jupyter news"
# pop-up), and every cell kept in the page (JupyterLab 4 otherwise drops cells that are
# scrolled out of view, and the test reads all of them).
LAB_SETTINGS = {
    "@jupyterlab/apputils-extension/notification.jupyterlab-settings":
        {"fetchNews": "false", "checkForUpdates": False},
    "@jupyterlab/notebook-extension/tracker.jupyterlab-settings": {"windowingMode": "none"},
}
DISABLED_EXTENSIONS = {"@jupyterlab/apputils-extension:announcements": True}


def missing_browser() -> str | None:
    """Why the browser test cannot run here, or None when Chromium and Playwright exist."""
    if not Path(CHROMIUM).exists():
        return f"Chromium not found at {CHROMIUM} (or set KVLAB_CHROMIUM): {INSTALL_HINT}"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return f"the Python package playwright is missing: {INSTALL_HINT}"
    return None


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _write_profile(root: Path) -> dict[str, str]:
    """Create the temporary Jupyter folders; return the environment variables naming them."""
    folders = {name: root / name for name in ("config", "settings", "workspaces", "runtime")}
    for folder in folders.values():
        folder.mkdir(parents=True)
    for name, values in LAB_SETTINGS.items():
        extension, file = name.rsplit("/", 1)
        target = folders["settings"] / extension / file
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(json.dumps(values))
    labconfig = folders["config"] / "labconfig"
    labconfig.mkdir()
    (labconfig / "page_config.json").write_text(
        json.dumps({"disabledExtensions": DISABLED_EXTENSIONS}))
    return {
        "JUPYTER_CONFIG_DIR": str(folders["config"]),
        "JUPYTERLAB_SETTINGS_DIR": str(folders["settings"]),
        "JUPYTERLAB_WORKSPACES_DIR": str(folders["workspaces"]),
        "JUPYTER_RUNTIME_DIR": str(folders["runtime"]),
    }


def _wait_until_up(url: str, server: subprocess.Popen, log: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"JupyterLab exited ({server.returncode}):\n{log.read_text()}")
        try:
            with urllib.request.urlopen(url, timeout=5):
                return
        except OSError:
            time.sleep(0.5)
    raise TimeoutError(f"JupyterLab did not answer {url} in {timeout:.0f} s:\n{log.read_text()}")


@contextmanager
def jupyter_lab(notebooks: list[Path], root: Path, env: dict[str, str], timeout: float = 120):
    """Serve copies of `notebooks` from `root`/notebooks; yield the server's base URL."""
    served = root / "notebooks"
    served.mkdir(parents=True)
    for notebook in notebooks:
        shutil.copy(notebook, served / notebook.name)
    port = free_port()
    server_env = {**os.environ, **_write_profile(root / "jupyter"), **env}
    log = root / "jupyterlab.log"
    command = [sys.executable, "-m", "jupyter", "lab", "--no-browser", f"--port={port}",
               "--ip=127.0.0.1", f"--ServerApp.root_dir={served}",
               f"--IdentityProvider.token={TOKEN}", "--LabApp.news_url=",
               "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
               "--LabApp.extension_manager=readonly", "--ServerApp.terminals_enabled=False",
               "--allow-root"]
    with log.open("w") as log_file:
        server = subprocess.Popen(command, env=server_env, stdout=log_file,
                                  stderr=subprocess.STDOUT, cwd=served)
    base = f"http://127.0.0.1:{port}"
    try:
        _wait_until_up(f"{base}/api/status?token={TOKEN}", server, log, timeout)
        yield base
    finally:
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


@contextmanager
def chromium_browser():
    """A headless Chromium (the system's, not a downloaded one) driven by Playwright."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True,
                                             args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


# -- driving a notebook ------------------------------------------------------------------------

# One poll of the notebook's state, read from the page: prompts say "[ ]:" (not run),
# "[*]:" (queued or running) or "[3]:" (its execution count).
_CELL_STATE_JS = """() => {
  const prompts = [...document.querySelectorAll('.jp-CodeCell .jp-InputPrompt')]
      .map(p => p.textContent.trim());
  const counts = prompts.map(p => p.match(/\\[(\\d+)\\]/)).filter(m => m).map(m => +m[1]);
  const status = [...document.querySelectorAll('.jp-StatusBar-TextItem')]
      .map(e => e.textContent.trim()).find(t => t.includes(' | ')) || '';
  return {
    total: prompts.length,
    running: prompts.filter(p => p.includes('*')).length,
    counts: counts.sort((a, b) => a - b),
    errors: document.querySelectorAll(
        '.jp-OutputArea-output[data-mime-type="application/vnd.jupyter.stderr"]').length,
    kernel: status.split(' | ').pop(),
  };
}"""


def notebook_state(page) -> dict:
    return page.evaluate(_CELL_STATE_JS)


def open_notebook(page, base: str, name: str, n_code_cells: int, timeout_s: float) -> None:
    """Open a notebook in a fresh workspace; wait for all its cells and an idle kernel."""
    page.goto(f"{base}/lab/tree/{name}?reset&token={TOKEN}")
    _wait_for(page, lambda state: state["total"] == n_code_cells and state["kernel"] == "Idle",
              timeout_s, f"{name} to open with an idle kernel")


def run_all_cells(page) -> None:
    """Run > Run All Cells, through the menu as a student would."""
    page.locator(".lm-MenuBar-itemLabel", has_text=re.compile(r"^Run$")).click()
    page.locator(".lm-Menu-itemLabel", has_text=re.compile(r"^Run All Cells$")).click()


def wait_until_run_finished(page, timeout_s: float) -> dict:
    """Wait until a Run All in a fresh kernel is over: cells numbered 1..N, or an error.

    JupyterLab stops a Run All at the first error and leaves later cells unrun, so an
    error output (with nothing still queued) ends the wait too.
    """
    def finished(state):
        everything_ran = state["counts"] == list(range(1, state["total"] + 1))
        return (state["running"] == 0 and state["kernel"] == "Idle"
                and (everything_ran or state["errors"] > 0))

    return _wait_for(page, finished, timeout_s, "Run All to finish")


def wait_for_kernel_idle(page, timeout_s: float) -> dict:
    return _wait_for(page, lambda state: state["kernel"] == "Idle", timeout_s, "an idle kernel")


def _wait_for(page, condition, timeout_s: float, what: str) -> dict:
    """Poll the notebook state once a second until `condition` holds twice in a row
    (the kernel can look idle for a moment between two cells)."""
    deadline = time.monotonic() + timeout_s
    settled, state = 0, {}
    while time.monotonic() < deadline:
        state = notebook_state(page)
        settled = settled + 1 if condition(state) else 0
        if settled >= 2:
            return state
        page.wait_for_timeout(1000)
    dialogs = page.locator(".jp-Dialog")
    dialog = f"; a dialog is open: {dialogs.first.inner_text()!r}" if dialogs.count() else ""
    raise TimeoutError(f"waited {timeout_s:.0f} s for {what}; last state: {state}{dialog}")


def code_cell(page, source_snippet: str):
    """The code cell whose input contains `source_snippet` (exactly one must)."""
    cells = page.locator(".jp-CodeCell").filter(
        has=page.locator(".jp-InputArea", has_text=source_snippet))
    count = cells.count()
    if count != 1:
        raise AssertionError(f"{count} code cells contain {source_snippet!r}, expected 1")
    return cells.first


def widget_slider(cell, description: str):
    """The ipywidgets slider of `cell` whose label is `description`."""
    return cell.locator(".widget-slider").filter(
        has=cell.page.locator(".widget-label", has_text=re.compile(f"^{description}$"))).first


def slider_value(slider) -> str:
    return slider.locator(".widget-readout").inner_text().strip()


def wait_for_text(locator, text: str, timeout_ms: float) -> None:
    """Wait until the element's whole text is `text`."""
    locator.page.wait_for_function("([el, text]) => el.textContent.trim() === text",
                                   arg=[locator.element_handle(), text], timeout=timeout_ms,
                                   polling=250)


def wait_until_enabled(locator, timeout_ms: float) -> None:
    locator.page.wait_for_function("el => !el.disabled", arg=locator.element_handle(),
                                   timeout=timeout_ms, polling=250)


def wait_for_images(locator, timeout_ms: float = 60_000) -> None:
    """Wait until every image inside the element has loaded (not half-painted)."""
    locator.page.wait_for_function(
        "el => [...el.querySelectorAll('img')].every(i => i.complete && i.naturalWidth > 0)",
        arg=locator.element_handle(), timeout=timeout_ms, polling=250)


def wait_for_new_image(image, old_src: str | None, timeout_ms: float) -> None:
    """Wait until an Image widget shows new data: ipywidgets gives every new value a new
    blob: URL, so a changed `src` that has loaded is a redrawn picture."""
    image.page.wait_for_function(
        "([img, old]) => img.src !== old && img.complete && img.naturalWidth > 0",
        arg=[image.element_handle(), old_src], timeout=timeout_ms, polling=250)


@contextmanager
def screenshot_on_failure(page, path: Path):
    """Save what the page showed when a check failed (the viewport), then re-raise."""
    try:
        yield
    except BaseException:
        page.screenshot(path=path)
        raise


def screenshot_panels(page, path_for) -> list:
    """Screenshot the output of every code cell that shows a widget or a picture;
    `path_for(label)` names the file. Returns the paths written."""
    written = []
    cells = page.locator(".jp-CodeCell")
    for index in range(cells.count()):
        output = cells.nth(index).locator(".jp-Cell-outputArea")
        if output.locator(".jupyter-widgets, img").count() == 0:
            continue
        wait_for_images(output)
        path = path_for(f"cell{index + 1:02d}")
        output.screenshot(path=path)
        written.append(path)
    return written


# -- what the page shows -----------------------------------------------------------------------

_PROBLEMS_JS = """() => {
  const problems = [];
  for (const out of document.querySelectorAll(
      '.jp-OutputArea-output[data-mime-type="application/vnd.jupyter.stderr"]')) {
    const text = out.textContent;
    if (/Traceback|Error/.test(text)) problems.push('error output: ' + text.slice(0, 800));
  }
  for (const out of document.querySelectorAll('.jp-OutputArea-output')) {
    const text = out.textContent;
    if (/Loading widget|Error displaying widget|model not found/.test(text))
      problems.push('widget not rendered: ' + text.slice(0, 200));
    if (out.getAttribute('data-mime-type') === 'text/plain' &&
        /^\\s*(VBox|HBox|Box|Tab|Output|Image|IntSlider|Button|HTML|[A-Z]\\w*(Panel|Explorer|Calculator))\\(/
            .test(text))
      problems.push('widget shown as text: ' + text.slice(0, 200));
  }
  for (const el of document.querySelectorAll('.jp-OutputArea-output div[style*="#b00020"]'))
    problems.push('panel error line: ' + el.textContent.slice(0, 300));
  return problems;
}"""


def page_problems(page) -> list[str]:
    """Error outputs, and widgets that did not render (placeholders or text reprs)."""
    return page.evaluate(_PROBLEMS_JS)


def widget_count(page) -> int:
    """How many ipywidgets views are on the page (rendered by the widget manager)."""
    return page.locator(".jp-OutputArea-output .jupyter-widgets.widget-container, "
                        ".jp-OutputArea-output .jupyter-widgets.widget-inline-hbox").count()
