"""Make student submissions the way students do: start from the release notebook, fill in cells.

Used by the tests and by benchmarks/. A "student" is a dict grade_id -> code for
solution cells (and optionally extra cells appended after a given cell).
"""
import copy
import re
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parent.parent
ASSIGNMENT = "attention_surgeon"
BONUS = "attention_surgeon_bonus"
NB1 = "01_attention_from_scratch"
NB2 = "02_seeing_attention"
NB3 = "03_breaking_attention"
NB4 = "04_beyond_one_head"
NOTEBOOKS = (NB1, NB2, NB3)  # the main assignment
ASSIGNMENT_OF = {NB1: ASSIGNMENT, NB2: ASSIGNMENT, NB3: ASSIGNMENT, NB4: BONUS}


def release_notebook(name=NB1):
    return nbformat.read(ROOT / "release" / ASSIGNMENT_OF[name] / f"{name}.ipynb", as_version=4)


def source_notebook(name=NB1):
    return nbformat.read(ROOT / "source" / ASSIGNMENT_OF[name] / f"{name}.ipynb", as_version=4)


def strip_solution_markers(source):
    return "\n".join(line for line in source.splitlines()
                     if not re.match(r"\s*### (BEGIN|END) SOLUTION", line))


def reference_answers(name=NB1):
    """grade_id -> the instructor's solution code, for every solution cell."""
    answers = {}
    for cell in source_notebook(name).cells:
        meta = cell.metadata.get("nbgrader", {})
        if meta.get("solution") and cell.cell_type == "code":
            answers[meta["grade_id"]] = strip_solution_markers(cell.source)
    return answers


def student_notebook(answers=None, name=NB1, mutate=None, extra_cells=(), base=None):
    """The release notebook (or `base`, e.g. the one a student fetched) with solution cells filled
    from `answers` (grade_id -> code).

    `mutate(code) -> code` is applied to every answer (a bug a student might write);
    `extra_cells` are (after_grade_id, code) pairs: cells a student adds.
    """
    nb = nbformat.from_dict(copy.deepcopy(base)) if base is not None else copy.deepcopy(release_notebook(name))
    answers = dict(answers or {})
    for cell in nb.cells:
        grade_id = cell.metadata.get("nbgrader", {}).get("grade_id")
        if grade_id in answers:
            code = answers[grade_id]
            cell.source = mutate(code) if mutate else code
    for after, code in extra_cells:
        index = next(i for i, c in enumerate(nb.cells) if c.metadata.get("nbgrader", {}).get("grade_id") == after)
        nb.cells.insert(index + 1, nbformat.v4.new_code_cell(code))
    return nb


def write_submission(course_root, student, notebooks, assignment=ASSIGNMENT):
    """notebooks: {notebook name: NotebookNode or raw str/bytes} -> submitted/<student>/<assignment>/."""
    folder = Path(course_root) / "submitted" / student / assignment
    folder.mkdir(parents=True, exist_ok=True)
    for name, nb in notebooks.items():
        path = folder / f"{name}.ipynb"
        if isinstance(nb, (str, bytes)):
            path.write_bytes(nb.encode() if isinstance(nb, str) else nb)
        else:
            nbformat.write(nb, path)
    (folder / "timestamp.txt").write_text("2026-11-20 12:00:00.000000 UTC")
    return folder
