"""The walkthrough notebooks: each runs top to bottom in smoke mode, and the committed copies
carry their outputs.

Execution uses a kernel started from this very interpreter (``sys.executable``), described by a
kernelspec written to a temporary folder: nothing is registered globally, and a ``python3``
kernelspec installed elsewhere on the machine (user or system wide, possibly another Python)
cannot take over. Notebooks are executed in memory; the committed files are never written.
"""

import json
import re
import sys
from pathlib import Path

import nbformat
import pytest
from jupyter_client.kernelspec import KernelSpecManager
from jupyter_client.manager import AsyncKernelManager
from nbclient import NotebookClient

REPO = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((REPO / "notebooks").glob("*.ipynb"))
KERNEL = "rmkd-tests"
CELL_TIMEOUT_S = 900
MAX_BYTES = 5 * 2**20


@pytest.fixture(scope="module")
def kernel_dir(tmp_path_factory) -> Path:
    """A folder holding one kernelspec that starts ipykernel with this interpreter."""
    root = tmp_path_factory.mktemp("kernels")
    (root / KERNEL).mkdir()
    spec = {
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "rmkd tests",
        "language": "python",
    }
    (root / KERNEL / "kernel.json").write_text(json.dumps(spec), encoding="utf-8")
    return root


def execute(nb, kernel_dir: Path, timeout: int = CELL_TIMEOUT_S):
    """Run ``nb`` in place (in memory) with the repository root as working directory."""
    km = AsyncKernelManager(kernel_name=KERNEL, kernel_spec_manager=KernelSpecManager(kernel_dirs=[str(kernel_dir)]))
    client = NotebookClient(nb, km=km, kernel_name=KERNEL, timeout=timeout, resources={"metadata": {"path": str(REPO)}})
    client.execute()  # raises CellExecutionError on the first failing cell
    return nb


def outputs(nb):
    return [out for cell in nb.cells if cell.cell_type == "code" for out in cell.outputs]


def text_of(nb) -> str:
    return "".join(out.get("text", "") for out in outputs(nb))


def test_kernel_runs_this_interpreter(kernel_dir):
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("import os, sys; print(sys.executable); print(os.getcwd())")])
    executable, cwd = text_of(execute(nb, kernel_dir, timeout=120)).split()
    assert Path(executable) == Path(sys.executable)
    assert Path(cwd).resolve() == REPO


def test_all_notebooks_are_found():
    assert len(NOTEBOOKS) >= 5, f"expected at least 5 notebooks in notebooks/, found {[p.name for p in NOTEBOOKS]}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_notebook_runs_in_smoke_mode(path, kernel_dir, monkeypatch):
    monkeypatch.setenv("RMKD_SMOKE", "1")  # the kernel inherits the environment
    before = path.read_bytes()
    nb = execute(nbformat.read(path, as_version=4), kernel_dir)
    errors = [f"{out.ename}: {out.evalue}" for out in outputs(nb) if out.output_type == "error"]
    assert not errors, f"{path.name}: {errors}"
    assert path.read_bytes() == before, f"{path.name} was modified by its execution"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_committed_notebook_has_outputs(path):
    size = path.stat().st_size
    assert size < MAX_BYTES, f"{path.name} is {size / 2**20:.1f} MiB; keep figures small (png, modest figsize)"
    nb = nbformat.read(path, as_version=4)
    code = [cell for cell in nb.cells if cell.cell_type == "code" and cell.source.strip()]
    assert code, f"{path.name} has no code cells"
    counts = [cell.execution_count for cell in code]
    assert None not in counts, f"{path.name}: {counts.count(None)} code cell(s) were never executed"
    assert counts == list(range(1, len(code) + 1)), f"{path.name}: not executed top to bottom in one run ({counts})"
    outs = outputs(nb)
    assert not [o for o in outs if o.output_type == "error"], f"{path.name} is committed with error outputs"
    assert any("image/png" in o.get("data", {}) for o in outs), f"{path.name} has no image/png output"


def _seconds(cell) -> float:
    """Wall time of a committed code cell, from the timing nbclient records in its metadata."""
    from datetime import datetime

    ex = cell.metadata.get("execution", {})
    start, end = ex.get("iopub.execute_input"), ex.get("shell.execute_reply")
    if not (start and end):
        return float("nan")
    parse = lambda s: datetime.fromisoformat(s.replace("Z", "+00:00"))  # noqa: E731
    return (parse(end) - parse(start)).total_seconds()


SLOW_S = 30
TIME_WORDS = re.compile(r"\d+(\.\d+)?\s*(s\b|sec|seconds?|min\b|minutes?)", re.IGNORECASE)
MAX_CODE_LINES = 20


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_committed_notebook_reads_as_a_lesson(path):
    """Each lesson: slow cells announced with their time, short code cells, no citation of a file the
    repository lacks, and an ending with what the paper says beside what we measured."""
    nb = nbformat.read(path, as_version=4)
    problems = []
    last_markdown = ""
    for index, cell in enumerate(nb.cells):
        if cell.cell_type == "markdown":
            last_markdown = cell.source
            for cited in re.findall(r"(?<![\w/.])((?:docs|notebooks|configs|benchmarks|rmkd)/[\w./-]+\.\w+)", cell.source):
                if not (REPO / cited).exists():
                    problems.append(f"cell {index} cites {cited}, which is not in the repository")
            if re.search(r"\bDESIGN\.md\b", cell.source):
                problems.append(f"cell {index} cites DESIGN.md (not in the repository; cite docs/METHOD.md)")
            continue
        lines = len(cell.source.strip().splitlines())
        if lines > MAX_CODE_LINES:
            problems.append(f"cell {index} has {lines} lines of code (at most {MAX_CODE_LINES}: move code into rmkd)")
        seconds = _seconds(cell)
        if seconds > SLOW_S and not TIME_WORDS.search(last_markdown):
            problems.append(f"cell {index} ran {seconds:.0f} s but the markdown before it gives no time")
    headings = [line for c in nb.cells[len(nb.cells) // 2 :] if c.cell_type == "markdown"
                for line in c.source.splitlines() if line.startswith("#")]
    if not any(re.search(r"paper says.*we measured", h, re.IGNORECASE) for h in headings):
        problems.append("no closing section headed 'the paper says / we measured'")
    assert not problems, f"{path.name}: " + "; ".join(problems)
