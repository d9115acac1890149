"""The notebooks: each runs top to bottom in fast mode, and the committed files are clean.

Execution uses nbclient with a kernel started from *this* interpreter (a kernel
spec written to a temporary directory), so the notebooks run in the same
environment as the tests whatever kernels the machine has installed. The kernel
gets ``OTVIZ_FAST=1`` (small budgets), ``PLOTLY_RENDERER=json`` (figures become
plain JSON outputs: nothing is fetched, nothing needs a browser) and an
``OTVIZ_STORE`` pointing at a file that must never be created: the notebooks use
run stores of their own in temporary directories.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

from jupyter_client.kernelspec import KernelSpecManager  # noqa: E402
from jupyter_client.manager import KernelManager  # noqa: E402
from nbclient import NotebookClient  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK_DIR = ROOT / "notebooks"
NOTEBOOKS = sorted(NOTEBOOK_DIR.glob("*.ipynb"))
CELL_TIMEOUT = 600  # seconds per cell; fast mode needs well under a minute for any cell
KERNEL_NAME = "otviz-test-python"
CHECK_CELL = "import sys; print(sys.executable)"


def test_the_nine_notebooks_exist():
    """The four walkthroughs, then the OT lab's five (one per method of otviz.lab)."""
    assert [p.name for p in NOTEBOOKS] == ["01_explore_alignments.ipynb",
                                           "02_teach_ot_distillation.ipynb",
                                           "03_paper_settings.ipynb",
                                           "04_your_own_loop.ipynb",
                                           "05_lab_document_distances.ipynb",
                                           "06_lab_adversarial_maps.ipynb",
                                           "07_lab_inverse_ot.ipynb",
                                           "08_lab_soft_topk.ipynb",
                                           "09_lab_latent_transport.ipynb"]


@pytest.fixture
def kernel_manager(tmp_path):
    """A kernel manager whose only kernel runs ipykernel with this test's interpreter."""
    spec_dir = tmp_path / "kernels" / KERNEL_NAME
    spec_dir.mkdir(parents=True)
    (spec_dir / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "otviz test kernel",
        "language": "python",
    }))
    ksm = KernelSpecManager(kernel_dirs=[str(tmp_path / "kernels")])
    return KernelManager(kernel_name=KERNEL_NAME, kernel_spec_manager=ksm)


def _errors(nb) -> list[str]:
    out = []
    for i, cell in enumerate(nb.cells):
        for o in cell.get("outputs", []):
            if o.get("output_type") == "error":
                out.append(f"cell {i}: {o.get('ename')}: {o.get('evalue')}")
    return out


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs_in_fast_mode(path, kernel_manager, tmp_path, monkeypatch):
    forbidden_store = tmp_path / "default-store" / "runs.db"
    monkeypatch.setenv("OTVIZ_FAST", "1")
    monkeypatch.setenv("PLOTLY_RENDERER", "json")
    monkeypatch.setenv("OTVIZ_STORE", str(forbidden_store))
    monkeypatch.setenv("MPLBACKEND", "Agg")

    nb = nbformat.read(path, as_version=4)
    nb.cells.append(nbformat.v4.new_code_cell(CHECK_CELL))
    client = NotebookClient(nb, km=kernel_manager, timeout=CELL_TIMEOUT, allow_errors=False,
                            resources={"metadata": {"path": str(NOTEBOOK_DIR)}})
    started = time.perf_counter()
    try:
        client.execute()
    except Exception as exc:  # CellExecutionError, CellTimeoutError, DeadKernelError
        pytest.fail(f"{path.name} failed after {time.perf_counter() - started:.0f} s:\n{exc}")
    assert not _errors(nb)

    # the kernel ran with the interpreter (and so the environment) of the tests
    printed = "".join(o.get("text", "") for o in nb.cells[-1].outputs if o.get("name") == "stdout")
    assert Path(printed.strip()).resolve() == Path(sys.executable).resolve()
    # every code cell ran, and figures were shown
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(c.execution_count for c in code)
    figures = [o for c in code for o in c.outputs
               if o.get("output_type") == "display_data" and "application/json" in o.get("data", {})]
    assert figures, "no plotly figure was shown"
    # nothing went to the user's run store
    assert not forbidden_store.exists()


# ----------------------------------------------------------------------------
# the committed files
# ----------------------------------------------------------------------------
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_committed_notebook_is_clean(path):
    raw = path.read_text(encoding="utf-8")
    nb = nbformat.reads(raw, as_version=4)
    nbformat.validate(nb)
    assert len(raw) < 100_000, f"{path.name} is {len(raw)} bytes: outputs or bulky metadata?"
    assert set(nb.metadata) <= {"kernelspec", "language_info"}, f"notebook metadata {sorted(nb.metadata)}"
    for i, cell in enumerate(nb.cells):
        assert cell.metadata == {}, f"{path.name} cell {i} has metadata {dict(cell.metadata)}"
        assert "attachments" not in cell, f"{path.name} cell {i} has attachments"
        if cell.cell_type == "code":
            assert cell.outputs == [], f"{path.name} cell {i} has outputs"
            assert cell.execution_count is None, f"{path.name} cell {i} has an execution count"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_reads_fast_mode_in_its_first_code_cell(path):
    nb = nbformat.read(path, as_version=4)
    first = next(c for c in nb.cells if c.cell_type == "code")
    assert 'os.environ.get("OTVIZ_FAST")' in first.source


def test_notebooks_match_their_generator():
    """The .ipynb files are what notebooks/make_notebooks.py writes (edit the script, then rerun it)."""
    proc = subprocess.run([sys.executable, str(NOTEBOOK_DIR / "make_notebooks.py"), "--check"],
                          capture_output=True, text=True, cwd=ROOT,
                          env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"})
    assert proc.returncode == 0, proc.stderr


# ----------------------------------------------------------------------------
# notebook 01's entropic cells converge
# ----------------------------------------------------------------------------
def test_notebook_01_entropic_cells_converge(monkeypatch):
    """The cells of notebook 01 up to its eps tables, run in a namespace (fast mode: the cell
    that aligns the teacher's layer with itself depends on the shipped teacher only, and the
    eps table converges at both budgets): every entropic alignment converges, its score too,
    and no "did not converge" warning is raised (at eps=0.05 the self-alignment stopped at
    its iteration cap)."""
    import warnings

    monkeypatch.setenv("OTVIZ_FAST", "1")
    nb = nbformat.read(NOTEBOOK_DIR / "01_explore_alignments.ipynb", as_version=4)
    code = [c.source for c in nb.cells if c.cell_type == "code"]
    wanted = ('os.environ.get("OTVIZ_FAST")', 'load_teacher("cnn-mnist5k")', "for epoch in range(STUDENT_EPOCHS)",
              "acts_teacher = otviz.capture", 'LAYER = "features.conv3"', "Tm = otviz.neurons(",
              "self_al = otviz.align(Tm, Tm", "EPS = [")
    cells = [next(src for src in code if marker in src) for marker in wanted]
    ns: dict = {}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for src in cells:
            exec(compile(src, "<notebook 01>", "exec"), ns)  # noqa: S102 - the repository's own notebook
        self_eps = [row["eps"] for row in ns["rows"]]
        selfs = {eps: ns["otviz"].align(ns["Tm"], ns["Tm"], method="sinkhorn", eps=eps) for eps in self_eps}
    assert len(selfs) >= 3 and len(ns["entropic"]) >= 3
    alignments = {**{("self", e): al for e, al in selfs.items()},
                  **{("T, S", e): al for e, al in ns["entropic"].items()}}
    not_converged = {k: (al.converged, al.score_details["converged"]) for k, al in alignments.items()
                     if not (al.converged and al.score_details["converged"])}
    assert not not_converged, not_converged
    assert not [w for w in caught if "converge" in str(w.message)], [str(w.message) for w in caught]
