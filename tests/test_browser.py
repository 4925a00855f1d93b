"""rmkd.widgets in a real browser: JupyterLab serves a notebook, headless Chromium runs it and
clicks the widgets' controls, and the pictures they show must change.

tests/test_widgets.py checks the browsers' Python side; this test checks what it cannot: that
JupyterLab's widget manager renders them (the ipywidgets lab extension is installed and its
version matches the kernel's), and that a control moved in the page reaches the kernel and the
new figure comes back into the page.

The notebook it runs is not notebooks/01_observations.ipynb itself (trained models, ~1 min of
analysis and two dozen cells would make a slow, fragile browser test). The test writes a small
notebook into a temporary folder: a first cell builds what that notebook's widget cells need
(``teacher``, ``student``, ``val``, ``col``) with the public rmkd API, on tiny untrained models and
a tiny synthetic data set, and the next two cells are *copied verbatim* from
01_observations.ipynb's cells that build ``InstanceBrowser`` and ``LevelSelector``, so a change to
how the notebook builds them is what gets tested.

JupyterLab (this interpreter, ``RMKD_SMOKE=1``) listens on 127.0.0.1 only, on a free port, with a
random token; its root folder, Jupyter config/data/runtime folders and kernelspec are all in the
temporary folder, so nothing in the repository or in ~/.jupyter is written. The server's process
group is killed at teardown, also on failure.

Chromium is Debian's (``/usr/bin/chromium``, or ``$RMKD_CHROMIUM``; ``make test`` installs it where
it can), driven by Playwright through ``executable_path`` (``playwright install`` is never needed);
without either the test is skipped, saying what to install. Screenshots of
both widgets go to ``$RMKD_SCREENSHOTS`` when set (docs/figures holds the committed ones), else to
the test's tmp_path.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import nbformat
import pytest

REPO = Path(__file__).resolve().parent.parent
NOTEBOOK = REPO / "notebooks" / "01_observations.ipynb"
CHROMIUM = Path(os.environ.get("RMKD_CHROMIUM", "/usr/bin/chromium"))
KERNEL = "rmkd-browser-test"

SERVER_START_S = 90  # JupyterLab answering /api/status
PAGE_LOAD_S = 90  # the notebook open and its kernel idle
RUN_ALL_S = 180  # the setup cell (imports torch, builds two models, analyses 8 images) and both widgets
REACT_S = 60  # one control moved -> the new figure in the page
SHUTDOWN_S = 20

try:
    from playwright.sync_api import expect, sync_playwright
except ImportError:  # pragma: no cover - the dev extras install it
    sync_playwright = None


def _requirements() -> str | None:
    if sync_playwright is None:
        return "playwright is not installed: pip install -e '.[dev]' (or pip install playwright)"
    if not (CHROMIUM.is_file() and os.access(CHROMIUM, os.X_OK)):
        return f"chromium not found at {CHROMIUM}: apt-get install chromium"
    return None


pytestmark = pytest.mark.skipif(_requirements() is not None, reason=str(_requirements()))


# --------------------------------------------------------------------------- the notebook


def widget_cells() -> tuple[str, str]:
    """The source of 01_observations.ipynb's cells that build the two widgets."""
    nb = nbformat.read(NOTEBOOK, as_version=4)
    code = [c.source for c in nb.cells if c.cell_type == "code"]
    instance = [s for s in code if "InstanceBrowser(" in s]
    level = [s for s in code if "LevelSelector(" in s]
    assert len(instance) == 1 and len(level) == 1, f"{NOTEBOOK.name}: expected one cell building each widget"
    return instance[0], level[0]


def setup_cell(images: Path, annotations: Path) -> str:
    """What the widget cells use, as 01_observations.ipynb names it: teacher, student, val, col."""
    return f"""\
%matplotlib inline
import torch
from rmkd.analysis import collect
from rmkd.data import CocoDetection
from rmkd.data.loader import eval_loader
from rmkd.models import build_detector

torch.manual_seed(0)
torch.set_num_threads(2)
val = CocoDetection({str(images)!r}, {str(annotations)!r})
kw = dict(anchor_sizes=(12, 24, 48, 96, 160), scales_per_octave=2, aspect_ratios=(1.0, 1.5), image_size=64)
teacher = build_detector("retinanet", "resnet18", 10, fpn_channels=64, head_convs=1, **kw)
student = build_detector("retinanet", "resnet18", 10, fpn_channels=32, head_convs=1, **kw)
col = collect(teacher, student, eval_loader(val, batch_size=8), details=4, progress=False)
print("ready:", len(val), "images,", len(col.details), "details")
"""


def write_notebook(root: Path) -> tuple[Path, list[int]]:
    """The test notebook in ``root`` and the GT count of each val image."""
    from rmkd.data import CocoDetection, make_synthetic

    paths = make_synthetic(root / "digits", num_train=8, num_val=8, seed=3, progress=False)
    images, annotations = paths["val"]["images"], paths["val"]["annotations"]
    ds = CocoDetection(images, annotations)
    gt_counts = [len(ds[i][1]["labels"]) for i in range(len(ds))]
    instance, level = widget_cells()
    nb = nbformat.v4.new_notebook(
        cells=[
            nbformat.v4.new_code_cell(setup_cell(Path(images), Path(annotations))),
            nbformat.v4.new_code_cell(instance),
            nbformat.v4.new_code_cell(level),
        ],
        metadata={
            "kernelspec": {"name": KERNEL, "display_name": "rmkd browser test", "language": "python"},
            "language_info": {"name": "python"},
        },
    )
    path = root / "widgets.ipynb"
    nbformat.write(nb, path)
    return path, gt_counts


# --------------------------------------------------------------------------- the server


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _isolated_env(base: Path) -> dict[str, str]:
    """Jupyter's config, data and runtime folders under ``base``, with a kernelspec for this interpreter."""
    config, data, runtime, share = base / "config", base / "data", base / "runtime", base / "share" / "jupyter"
    spec = share / "kernels" / KERNEL
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "rmkd browser test",
        "language": "python",
    }))
    # no "news" prompt or update check: nothing to overlay the page, nothing to fetch
    (config / "labconfig").mkdir(parents=True)
    (config / "labconfig" / "page_config.json").write_text(json.dumps({
        "disabledExtensions": {"@jupyterlab/apputils-extension:announcements": True},
    }))
    env = dict(os.environ)
    env.update({
        "RMKD_SMOKE": "1",
        "JUPYTER_CONFIG_DIR": str(config),
        "JUPYTER_DATA_DIR": str(data),
        "JUPYTER_RUNTIME_DIR": str(runtime),
        "JUPYTER_PATH": str(share),
        "IPYTHONDIR": str(base / "ipython"),
        "JUPYTER_PLATFORM_DIRS": "1",
        "MPLBACKEND": "Agg",
        "OMP_NUM_THREADS": "2",
    })
    env.pop("JUPYTER_TOKEN", None)
    return env


def _die_with_parent() -> None:
    """Linux: the server gets SIGKILL if pytest itself is killed (no teardown runs then); its kernel
    follows on its own (ipykernel exits when its parent, named in JPY_PARENT_PID, goes away)."""
    if sys.platform.startswith("linux"):
        import ctypes

        PR_SET_PDEATHSIG = 1
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def _status_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.status == 200
    except (urllib.error.URLError, OSError):
        return False


class Lab:
    def __init__(self, proc: subprocess.Popen, base_url: str, token: str, log: Path):
        self.proc, self.base_url, self.token, self.log = proc, base_url, token, log

    def url(self, path: str) -> str:
        return f"{self.base_url}{path}?token={self.token}"

    def log_tail(self, n: int = 4000) -> str:
        return self.log.read_text(errors="replace")[-n:] if self.log.exists() else "(no log)"


def _stop(proc: subprocess.Popen, lab_url: str | None) -> None:
    """Shut the server down (it stops its kernels), then kill its process group whatever is left."""
    if proc.poll() is None and lab_url is not None:
        try:
            req = urllib.request.Request(lab_url, method="POST", data=b"")
            urllib.request.urlopen(req, timeout=5).close()
            proc.wait(timeout=SHUTDOWN_S)
        except Exception:
            pass
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=10)
            return
        except subprocess.TimeoutExpired:
            continue


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    """JupyterLab on 127.0.0.1 in a temporary root: ``(Lab, notebook name, GT counts)``."""
    base = tmp_path_factory.mktemp("lab")
    root = base / "root"
    root.mkdir()
    notebook, gt_counts = write_notebook(root)
    env = _isolated_env(base)
    token = secrets.token_hex(24)
    port = _free_port()
    log = base / "jupyterlab.log"
    cmd = [
        sys.executable, "-m", "jupyterlab",
        "--no-browser",
        "--ServerApp.ip=127.0.0.1",
        f"--ServerApp.port={port}",
        "--ServerApp.port_retries=0",
        f"--IdentityProvider.token={token}",
        f"--ServerApp.root_dir={root}",
        "--ServerApp.terminals_enabled=False",
        f"--MappingKernelManager.default_kernel_name={KERNEL}",
        "--KernelSpecManager.ensure_native_kernel=False",
        "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
        "--LabApp.extension_manager=readonly",
        "--LabApp.news_url=",
        "--LabApp.expose_app_in_browser=True",  # window.jupyterapp: run all cells as the Run menu does
    ]
    if os.geteuid() == 0:  # containers and CI run as root; the server refuses without this
        cmd.append("--allow-root")
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, cwd=root, env=env, stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True, preexec_fn=_die_with_parent)
    base_url = f"http://127.0.0.1:{port}"
    server = Lab(proc, base_url, token, log)
    try:
        deadline = time.monotonic() + SERVER_START_S
        while not _status_ok(server.url("/api/status")):
            if proc.poll() is not None:
                pytest.fail(f"JupyterLab exited with {proc.returncode}:\n{server.log_tail()}")
            if time.monotonic() > deadline:
                pytest.fail(f"JupyterLab did not answer within {SERVER_START_S} s:\n{server.log_tail()}")
            time.sleep(0.5)
        yield server, notebook.name, gt_counts
    finally:
        _stop(proc, server.url("/api/shutdown"))


# --------------------------------------------------------------------------- the browser


@pytest.fixture(scope="module")
def page(lab):
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), headless=True, timeout=60_000)
        try:
            context = browser.new_context(viewport={"width": 1200, "height": 1000}, device_scale_factor=1)
            page = context.new_page()
            page.set_default_timeout(REACT_S * 1000)
            yield page
        finally:
            browser.close()


def _shots_dir(tmp_path: Path) -> Path:
    d = Path(os.environ.get("RMKD_SCREENSHOTS") or tmp_path)
    d.mkdir(parents=True, exist_ok=True)
    return d


# the open notebook's kernel is this test's kernelspec, connected and idle
KERNEL_READY = """() => {
    const panel = window.jupyterapp && window.jupyterapp.shell.currentWidget;
    const ctx = panel && panel.sessionContext;
    const kernel = ctx && ctx.session && ctx.session.kernel;
    return !!kernel && ctx.isReady && kernel.name === %r
        && kernel.connectionStatus === "connected" && kernel.status === "idle";
}""" % KERNEL


def _img_src(img) -> str:
    src = img.get_attribute("src") or ""
    assert src.startswith("data:image/png;base64,"), f"not an inline PNG figure: {src[:60]!r}"
    return src


def _new_src(img, old: str, what: str) -> str:
    """Wait until the figure (re-located: the Output widget replaces its <img>) differs from ``old``."""
    try:
        expect(img).not_to_have_attribute("src", old, timeout=REACT_S * 1000)
    except AssertionError:
        raise AssertionError(f"{what}: the widget's figure did not change within {REACT_S} s") from None
    return _img_src(img)


def _rendered_img(output):
    """The single, decoded figure in a widget's Output area."""
    img = output.locator("img")
    expect(img).to_have_count(1, timeout=REACT_S * 1000)
    expect(img).to_be_visible()
    size = img.evaluate("el => [el.naturalWidth, el.naturalHeight]")
    assert min(size) > 50, f"the figure did not decode: natural size {size}"
    return img


def _run_notebook(page, server, name):
    """Open the notebook, wait for its kernel, run all cells; the two widget cells' locators."""
    page.goto(server.url(f"/lab/tree/{name}"), timeout=PAGE_LOAD_S * 1000)
    panel = page.locator(".jp-NotebookPanel")
    expect(panel).to_be_visible(timeout=PAGE_LOAD_S * 1000)
    page.wait_for_function(KERNEL_READY, timeout=PAGE_LOAD_S * 1000)
    page.evaluate("() => window.jupyterapp.commands.execute('notebook:run-all-cells')")
    cells = panel.locator(".jp-Notebook .jp-CodeCell")
    expect(cells).to_have_count(3)
    ib, ls = cells.nth(1), cells.nth(2)
    try:  # the last cell's figure is the last thing run-all produces
        expect(ls.locator(".widget-output img")).to_be_visible(timeout=RUN_ALL_S * 1000)
    except AssertionError:
        errors = panel.locator(".jp-OutputArea-output").all_inner_texts()
        pytest.fail(f"the widgets did not render within {RUN_ALL_S} s; outputs in the page: {errors}\n"
                    f"server log:\n{server.log_tail()}")
    expect(panel.locator(".jp-OutputArea-output").filter(has_text="Error displaying widget")).to_have_count(0)
    return ib, ls


def _check_instance_browser(ib, gt_counts, shot: Path) -> None:
    """Slider -> another image (recomputed in the kernel), dropdown -> another GT: new figure each time."""
    img = _rendered_img(ib.locator(".widget-output"))
    status, table = ib.locator(".widget-html").nth(0), ib.locator(".widget-html").nth(1)
    readout = ib.locator(".widget-slider .widget-readout")
    dropdown = ib.locator(".widget-dropdown select")
    expect(status).to_contain_text("image index 0 ")
    expect(readout).to_have_text("0")
    expect(dropdown.locator("option")).to_have_count(gt_counts[0])

    target = next(i for i, n in enumerate(gt_counts) if i > 0 and n >= 2)  # an image with 2+ GTs
    first = _img_src(img)
    handle = ib.locator(".widget-slider .noUi-handle")
    handle.focus()
    for _ in range(target):  # noUiSlider's keyboard: one step per key
        handle.press("ArrowRight")
    expect(readout).to_have_text(str(target))
    image = _new_src(img, first, f"InstanceBrowser after moving the image slider to {target}")
    expect(status).to_contain_text(f"image index {target} ")
    expect(dropdown.locator("option")).to_have_count(gt_counts[target])
    expect(table).to_contain_text("GT #0")

    # another GT: the one with the most candidates (the more telling picture for the README)
    labels = dropdown.locator("option").all_inner_texts()[1:]  # ipywidgets writes spaces as U+00A0
    pick = 1 + max(range(len(labels)), key=lambda i: int(re.search(r"\((\d+)\s+candidate", labels[i]).group(1)))
    dropdown.select_option(index=pick)
    instance = _new_src(img, image, f"InstanceBrowser after picking instance #{pick}")
    expect(table).to_contain_text(f"GT #{pick} ")
    assert len({first, image, instance}) == 3
    ib.locator(".jupyter-widgets.widget-vbox").first.screenshot(path=str(shot), animations="disabled")


def _check_level_selector(ls, shot: Path) -> None:
    """Toggle button -> another FPN level, dropdown -> another image: new figure each time."""
    img = _rendered_img(ls.locator(".widget-output"))
    stats = ls.locator(".widget-html").first
    buttons = ls.locator(".widget-toggle-buttons button")
    images = ls.locator(".widget-dropdown select")
    expect(stats).to_contain_text("P3 (")
    assert buttons.count() >= 2 and images.locator("option").count() >= 2

    first = _img_src(img)
    buttons.nth(1).click()
    level = _new_src(img, first, "LevelSelector after clicking level P4")
    expect(stats).to_contain_text("P4 (")
    expect(buttons.nth(1)).to_have_class(re.compile(r"\bmod-active\b"))

    stats_before = stats.inner_text()
    images.select_option(index=1)
    other = _new_src(img, level, "LevelSelector after picking its second image")
    expect(stats).not_to_have_text(stats_before)
    expect(stats).to_contain_text("P4 (")  # the level is kept
    assert len({first, level, other}) == 3
    ls.locator(".jupyter-widgets.widget-vbox").first.screenshot(path=str(shot), animations="disabled")


def test_widgets_render_and_respond_in_jupyterlab(lab, page, tmp_path):
    server, name, gt_counts = lab
    shots = _shots_dir(tmp_path)
    t0 = time.monotonic()
    try:
        ib, ls = _run_notebook(page, server, name)
        t_run = time.monotonic() - t0
        _check_instance_browser(ib, gt_counts, shots / "widget_instance_browser.png")
        _check_level_selector(ls, shots / "widget_level_selector.png")
    except BaseException:
        page.screenshot(path=str(tmp_path / "failure.png"), full_page=True)
        print(f"page at the failure: {tmp_path / 'failure.png'}", file=sys.stderr)
        raise
    for png in ("widget_instance_browser.png", "widget_level_selector.png"):
        data = (shots / png).read_bytes()
        assert data.startswith(b"\x89PNG") and len(data) > 5000, png
    print(f"notebook run: {t_run:.1f} s; with the widget checks: {time.monotonic() - t0:.1f} s; screenshots: {shots}")
