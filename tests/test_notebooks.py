"""The notebooks run in real Jupyter kernels: solutions pass everything, release versions stop at the first stub."""
import nbformat
import pytest
from nbclient import NotebookClient

from autograder.release import find_leaks
from tests.students import ASSIGNMENT, ASSIGNMENT_OF, ROOT

# Every notebook of both assignments: the main one and the bonus (Notebook 4).
NOTEBOOKS = sorted(ASSIGNMENT_OF)


FIGURES = ROOT / ".figures"  # PNGs of every figure the solutions draw, to look at (git-ignored)


def execute(path, monkeypatch, allow_errors=False, backend="Agg"):
    monkeypatch.setenv("PYTHONPATH", str(ROOT))  # hidden_check() in solutions imports autograder
    monkeypatch.setenv("MPLBACKEND", backend)
    nb = nbformat.read(path, as_version=4)
    client = NotebookClient(nb, timeout=300, kernel_name="python3", allow_errors=allow_errors,
                            resources={"metadata": {"path": str(path.parent)}})
    client.execute()
    return nb


@pytest.mark.smoke
@pytest.mark.parametrize("name", NOTEBOOKS)
def test_solution_runs_top_to_bottom_with_every_test_passing(name, monkeypatch):
    nb = execute(ROOT / "solutions" / ASSIGNMENT_OF[name] / f"{name}.ipynb", monkeypatch,  # raises on any error
                 backend="module://matplotlib_inline.backend_inline")  # figures become PNG outputs
    save_figures(name, nb)
    checked = [c for c in nb.cells if "hidden_check(" in c.source]
    assert checked, "the solution notebook runs its hidden checks in the instructor's kernel"
    import torch

    for cell in checked:
        text = "".join(o.get("text", "") for o in cell.outputs)
        waits_for_cuda = "gpu" in cell.metadata.get("tags", []) and not torch.cuda.is_available()
        assert (": pending" if waits_for_cuda else ": passed") in text, f"{cell.metadata.nbgrader.grade_id}: {text}"


def save_figures(name, nb):
    """Write the solution's figures to .figures/ (look at them); a notebook that plots must show them."""
    import base64

    FIGURES.mkdir(exist_ok=True)
    for old in FIGURES.glob(f"{name}-*.png"):
        old.unlink()
    count = 0
    for index, cell in enumerate(nb.cells):
        for output in cell.get("outputs", []):
            if "image/png" in output.get("data", {}):
                count += 1
                png = base64.b64decode(output["data"]["image/png"])
                assert png.startswith(b"\x89PNG") and len(png) > 5000, f"cell {index}: an empty figure?"
                (FIGURES / f"{name}-cell{index:02d}-{count}.png").write_bytes(png)
    draws = sum("plot_" in c.source and c.cell_type == "code" and not c.metadata.get("nbgrader", {}).get("grade")
                for c in nb.cells if "def plot_" not in c.source)
    assert count >= draws, f"{name}: {draws} cells draw a figure but only {count} PNGs came out"


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_release_runs_until_the_first_stub(name, monkeypatch):
    path = ROOT / "release" / ASSIGNMENT_OF[name] / f"{name}.ipynb"
    nb = execute(path, monkeypatch, allow_errors=True)  # every cell runs; the first error is what a student sees
    errors = [(i, o) for i, c in enumerate(nb.cells) if c.cell_type == "code"
              for o in c.outputs if o.output_type == "error"]
    first_cell, first_error = errors[0]
    assert first_error.ename == "NotImplementedError"
    first_stub = next(i for i, c in enumerate(nb.cells) if "raise NotImplementedError()" in c.source)
    first_call = next(i for i, c in enumerate(nb.cells) if i > first_stub and c.cell_type == "code")
    # A stub of definitions fails where it is first called; a whole-cell answer (HEAD_ROLES) fails in place.
    assert first_stub <= first_cell <= first_call, "nothing fails before the first stub is called"


@pytest.mark.smoke
@pytest.mark.parametrize("name", NOTEBOOKS)
def test_release_has_no_solution_and_no_hidden_check_code(name):
    assignment = ASSIGNMENT_OF[name]
    assert find_leaks(ROOT / "source" / assignment, ROOT / "release" / assignment) == []
    text = (ROOT / "release" / assignment / f"{name}.ipynb").read_text()
    for secret in ("BEGIN SOLUTION", "BEGIN HIDDEN TESTS", "hidden_check", "import autograder", "from autograder"):
        assert secret not in text


def test_leak_check_catches_a_leak(tmp_path):
    """The leak check can fail: plant a solution line in a copy of the release."""
    import shutil

    release = tmp_path / "release"
    shutil.copytree(ROOT / "release" / ASSIGNMENT, release)
    path = release / f"{NOTEBOOKS[0]}.ipynb"
    nb = nbformat.read(path, as_version=4)
    nb.cells[-1].source += "\nscores = Q @ K.transpose(-2, -1)  # [..., L, d_k] @ [..., d_k, S] -> [..., L, S]"
    nb.cells[-2].source += '\nfrom autograder import hidden_check; hidden_check("x")'
    nb.cells[0].source += "\n| 1 | `check_attention_inputs(Q, K, V, mask)` | a solution line inside prose |"
    nbformat.write(nb, path)
    leaks = find_leaks(ROOT / "source" / ASSIGNMENT, release)
    assert len(leaks) == 3


def test_make_validate_reports_failing_public_tests_and_passes_a_finished_notebook(course, tmp_path):
    from tests.conftest import make
    from tests.students import reference_answers, student_notebook

    blank = course / "release" / ASSIGNMENT / f"{NOTEBOOKS[0]}.ipynb"
    result = make(course, "validate", f"NB={blank}", check=False)
    assert "VALIDATION FAILED" in result.stdout + result.stderr
    assert result.returncode != 0, "a script (or a student's pre-submit hook) can tell it failed"
    finished = tmp_path / "finished.ipynb"
    nbformat.write(student_notebook(reference_answers()), finished)
    result = make(course, "validate", f"NB={finished}")
    assert "Success! Your notebook passes all the tests." in result.stdout + result.stderr
