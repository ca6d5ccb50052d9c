"""GPU-tagged cells and checks (README.md, "GPU-tagged cells").

Without CUDA (CI): GPU checks are pending, never passed or failed, `make gpu-check` and
`make autograde-gpu` say so and change nothing, the public GPU cell prints its skip message.
With CUDA (tests marked `gpu`, skipped cleanly elsewhere): the checks pass on the reference
solution, and a CPU tensor built inside attention() fails with a message that says so.
"""
import nbformat
import pytest
import torch

from autograder.checks import REGISTRY, run_check
from tests.conftest import make, tree_digest
from tests.grading import grade_checks, gpu_checks, replace_in
from tests.students import ASSIGNMENT, NB1, NB4, ROOT, reference_answers, source_notebook, student_notebook

CUDA = torch.cuda.is_available()
needs_cuda = pytest.mark.skipif(not CUDA, reason="needs a CUDA device")


def test_gpu_cells_are_tagged_and_their_checks_registered_as_gpu():
    tagged = [c for name in (NB1, NB4) for c in source_notebook(name).cells if "gpu" in c.metadata.get("tags", [])]
    assert len(tagged) >= 6
    for cell in tagged:
        if "hidden_check(" in cell.source:
            name = cell.source.split('hidden_check("')[1].split('"')[0]
            assert REGISTRY[name].gpu
    assert gpu_checks() == {"cuda_attention_matches", "cuda_causal_mask",  # Notebook 1
                            "cuda_tiled_attention_matches", "cuda_multi_head_attention_matches"}  # Notebook 4


@pytest.mark.skipif(CUDA, reason="the pending path is for hosts without CUDA")
def test_without_cuda_gpu_checks_are_pending_with_the_reason():
    for name in gpu_checks():
        verdict = run_check(name, student=None)
        assert verdict.status == "pending" and "CUDA" in verdict.message


@pytest.mark.skipif(CUDA, reason="the skip message is for hosts without CUDA")
def test_gpu_check_without_cuda_says_what_ran_where(course):
    result = make(course, "gpu-check")
    assert "available: False" in result.stdout
    assert "not run (no CUDA here)" in result.stdout and "pending" in result.stdout


@pytest.mark.skipif(CUDA, reason="filling in is a no-op only without CUDA")
def test_autograde_gpu_without_cuda_changes_nothing(course):
    def state():
        return {k: v for k, v in tree_digest(course).items() if "__pycache__" not in k and ".hypothesis" not in k}

    before = state()
    result = make(course, "autograde-gpu")
    assert "nothing was changed" in result.stdout
    assert state() == before


@pytest.mark.skipif(CUDA, reason="the skip message is for hosts without CUDA")
def test_public_gpu_cell_skips_with_a_message(monkeypatch):
    from nbclient import NotebookClient

    monkeypatch.setenv("PYTHONPATH", str(ROOT))
    nb = nbformat.read(ROOT / "solutions" / ASSIGNMENT / f"{NB1}.ipynb", as_version=4)
    gpu_cell = next(i for i, c in enumerate(nb.cells) if c.metadata.get("nbgrader", {}).get("grade_id") == "test_on_gpu")
    nb.cells = [c for i, c in enumerate(nb.cells) if c.cell_type == "code" and i <= gpu_cell
                and "hidden_check(" not in c.source]
    NotebookClient(nb, timeout=300, kernel_name="python3").execute()
    assert "CUDA is not available here, so this GPU test is skipped" in nb.cells[-1].outputs[0]["text"]


@pytest.mark.gpu
@needs_cuda
def test_gpu_checks_pass_on_the_reference_solution():
    for name in (NB1, NB4):
        verdicts = grade_checks(student_notebook(reference_answers(name), name=name), name)
        assert {n: v.message for n, v in verdicts.items() if n in gpu_checks() and v.status != "passed"} == {}


@pytest.mark.gpu
@needs_cuda
def test_a_cpu_tensor_inside_attention_fails_on_cuda_with_a_hint():
    mutate = replace_in("apply_mask", "return scores.masked_fill(~mask, NEG_INF)",
                        "return scores.masked_fill(~mask.cpu(), torch.tensor(NEG_INF))")
    verdicts = grade_checks(student_notebook(mutate(reference_answers())))
    assert verdicts["cuda_attention_matches"].status == "failed"
    assert "on the CPU" in verdicts["cuda_attention_matches"].message


@pytest.mark.gpu
@needs_cuda
def test_gpu_check_runs_there(course):
    result = make(course, "gpu-check")
    assert "available: True" in result.stdout and "ran on cuda:0" in result.stdout


# `make autograde-gpu`, with CUDA as far as the grader can tell and the GPU checks' inputs on the CPU
# stand-in: everything else of the command is what a CUDA host runs (issue 19: it crashed, and it
# deleted the grading notes).
AUTOGRADE_GPU_ON_A_STAND_IN = """
import logging, sys
import torch
torch.cuda.is_available = lambda: True
from autograder.checks import attention_on_cuda
attention_on_cuda.GPU_DEVICE = "cpu"
from autograder import fill_gpu_checks
logging.basicConfig(level=logging.INFO, format="%(message)s")
sys.exit(fill_gpu_checks.main())
"""


def gradebook_grades(course, student):
    from nbgrader.api import Gradebook

    with Gradebook(f"sqlite:///{course / 'gradebook.db'}") as gb:
        notebook = gb.find_submission_notebook(NB1, ASSIGNMENT, student)
        return {g.name: (g.auto_score, g.manual_score, g.needs_manual_grade) for g in notebook.grades}


def test_autograde_gpu_decides_the_pending_gpu_checks_and_keeps_everything_else(course):
    import subprocess

    from tests.conftest import read_grades, user_env
    from tests.grading import check_points
    from tests.students import write_submission

    make(course, "release")
    no_scale = replace_in("compute_scores", "scores = scores / math.sqrt(Q.shape[-1])", "scores = scores")
    write_submission(course, "correct", {NB1: student_notebook(reference_answers())})
    write_submission(course, "no_scale", {NB1: student_notebook(no_scale(reference_answers()))})
    make(course, "autograde")
    before = {s: gradebook_grades(course, s) for s in ("correct", "no_scale")}
    pending = {f"check_{n}" for n in gpu_checks(NB1)}
    assert all(before[s][g] == (None, None, True) for s in before for g in pending)
    notes = course / "feedback" / "correct" / ASSIGNMENT / "grading_notes.html"
    assert notes.exists()
    scores = read_grades(course)

    result = subprocess.run([str(course / ".venv" / "bin" / "python"), "-c", AUTOGRADE_GPU_ON_A_STAND_IN],
                            cwd=course, capture_output=True, text=True, timeout=900,
                            env={**user_env(), "PYTHONPATH": str(course), "MPLBACKEND": "Agg",
                                 "PATH": f"{course / '.venv' / 'bin'}:/usr/bin:/bin"})
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"filled in {2 * len(pending)} pending GPU check(s)" in result.stdout

    after = {s: gradebook_grades(course, s) for s in before}
    points = check_points(NB1)
    for student in before:
        assert {g: v for g, v in after[student].items() if g not in pending} == \
            {g: v for g, v in before[student].items() if g not in pending}, "no other grade moves"
        assert all(after[student][g][2] is False for g in pending), "decided: no longer waiting for a TA"
    assert {g: after["correct"][g][0] for g in pending} == {f"check_{n}": points[n] for n in gpu_checks(NB1)}
    assert after["no_scale"]["check_cuda_attention_matches"][0] == 0  # the missing scale fails there too
    assert after["no_scale"]["check_cuda_causal_mask"][0] == points["cuda_causal_mask"]
    assert read_grades(course) == {"correct": scores["correct"] + sum(points[n] for n in gpu_checks(NB1)),
                                   "no_scale": scores["no_scale"] + points["cuda_causal_mask"]}
    assert notes.exists(), "the grading notes are written back with the feedback"
    feedback = (course / "feedback" / "correct" / ASSIGNMENT / f"{NB1}.html").read_text()
    assert "hidden check cuda_attention_matches: passed" in feedback  # the feedback page is new too


# torch in the grader sees CUDA, a sandboxed worker cannot use it (measured on an H200 host: the address-space
# cap stopped CUDA from starting, and every GPU check failed on the reference solution). Here: the checks'
# device is one no host has, so the sandbox's probe fails on a CUDA host too.
AUTOGRADE_GPU_WITH_CUDA_OUTSIDE_THE_SANDBOX_ONLY = """
import logging, sys
import torch
torch.cuda.is_available = lambda: True
from autograder.checks import attention_on_cuda
attention_on_cuda.GPU_DEVICE = "cuda:99"
from autograder import fill_gpu_checks
logging.basicConfig(level=logging.INFO, format="%(message)s")
sys.exit(fill_gpu_checks.main())
"""


def test_autograde_gpu_changes_nothing_where_cuda_does_not_work_in_the_sandbox(course):
    import subprocess

    from tests.conftest import user_env
    from tests.students import write_submission

    make(course, "release")
    write_submission(course, "correct", {NB1: student_notebook(reference_answers())})
    make(course, "autograde")

    def state():
        return {k: v for k, v in tree_digest(course).items() if "__pycache__" not in k and ".hypothesis" not in k}

    before = state()
    result = subprocess.run([str(course / ".venv" / "bin" / "python"), "-c", AUTOGRADE_GPU_WITH_CUDA_OUTSIDE_THE_SANDBOX_ONLY],
                            cwd=course, capture_output=True, text=True, timeout=900,
                            env={**user_env(), "PYTHONPATH": str(course), "MPLBACKEND": "Agg",
                                 "PATH": f"{course / '.venv' / 'bin'}:/usr/bin:/bin"})
    assert result.returncode == 2, result.stdout + result.stderr
    assert "GPU CHECKS NOT DECIDED" in result.stdout and "CUDA does not work in the sandbox" in result.stdout
    assert state() == before, "no grade, notebook or feedback page moves"
