"""Points and visibility are declared once, beside each check (`@check(points=, grades=, shown_by=)`),
and the course agrees with the declarations: autograder/points.py writes them into the hidden cells
and README.md at `make release`, and finds what it cannot write.

The last tests plant the mistakes a TA adding an exercise made (issue 19) in a copy of the course
and show that each is caught with a sentence that says what to fix."""
import dataclasses
import shutil

import nbformat
import pytest

from autograder import points
from autograder.checks import REGISTRY
from tests.students import NB1, ROOT


def test_the_course_agrees_with_its_checks():
    assert points.problems() == []


def test_the_readme_table_adds_up_to_the_declared_points():
    table = points.readme_table(ROOT, REGISTRY)
    main = sum(c.points for c in REGISTRY.values() if c.notebook != "04_beyond_one_head") + 15  # 5 answers x 3
    assert f"| `attention_surgeon` | **in all** | | | | **{points.number(main)}** |" in table
    assert table in (ROOT / "README.md").read_text()


@pytest.fixture
def course(tmp_path):
    """A copy of the course's source notebooks and README.md."""
    shutil.copytree(ROOT / "source", tmp_path / "source")
    shutil.copy(ROOT / "README.md", tmp_path / "README.md")
    return tmp_path


def notebook(course, name=NB1):
    return course / "source" / "attention_surgeon" / f"{name}.ipynb"


def edit_cell(course, grade_id, edit):
    path = notebook(course)
    nb = nbformat.read(path, as_version=4)
    kept = []
    for cell in nb.cells:
        if cell.metadata.get("nbgrader", {}).get("grade_id") == grade_id:
            cell = edit(cell)
        if cell is not None:
            kept.append(cell)
    nb.cells = kept
    nbformat.write(nb, path)


def declared(**changes):
    """The registry with one check's declaration changed: {check: {field: value}}."""
    return {name: dataclasses.replace(c, **changes.get(name, {})) for name, c in REGISTRY.items()}


def test_a_public_test_that_does_not_call_the_graded_function_is_not_shown_first(course):
    """Planted: the public test deleted, and shown_by pointed at an unrelated earlier test."""
    edit_cell(course, "test_masks", lambda cell: None)
    checks = declared(causal_mask={"shown_by": ("test_check_attention_inputs",)})
    found = [p for p in points.problems(course, checks) if "causal_mask (declared" in p]
    assert found == [f"{NB1}: causal_mask (declared in autograder/checks/attention.py): none of its public "
                     f"tests (test_check_attention_inputs) calls create_causal_mask, so none shows this rule: "
                     f"name the public test that exercises it in shown_by="]


def test_a_hidden_cell_whose_comment_and_metadata_disagree_is_rewritten_from_the_check(course):
    """Planted: the hidden cell's comment says 3 points, its metadata 5; the check declares 4."""
    def plant(cell):
        cell.source = cell.source.replace("(4 points)", "(3 points)")
        cell.metadata.nbgrader.points = 5
        return cell

    edit_cell(course, "check_causal_mask", plant)
    found = points.problems(course)
    assert len(found) == 1 and "the hidden cell of causal_mask" in found[0] and "says 4 points" in found[0]
    assert "metadata said 5, its comment 3" in found[0] and found[0].endswith("run `make release`")
    points.sync(course)
    assert points.problems(course) == []
    cell = next(c for c in nbformat.read(notebook(course), as_version=4).cells
                if c.metadata.get("nbgrader", {}).get("grade_id") == "check_causal_mask")
    assert cell.metadata.nbgrader.points == 4 and cell.source.startswith("# Hidden check (4 points): ")


def test_totals_follow_a_changed_declaration(course):
    """Planted: a check's points changed, and the README's and the notebook's totals left as they were."""
    checks = declared(attention_gradients={"points": 8.0})
    found = points.problems(course, checks)
    assert any(p.startswith("README.md is out of date") for p in found)
    assert any("now states 70 points for the attention checks" in p for p in found)
    points.sync(course, checks)
    assert points.problems(course, checks) == []
    assert "| `attention_surgeon` | **in all** | | | | **134** |" in (course / "README.md").read_text()
    assert "fails (70 points)" in notebook(course).read_text()


def test_a_check_that_names_no_public_test_is_caught(course):
    """Planted: the check's shown_by removed."""
    found = points.problems(course, declared(reverse_mask={"shown_by": ()}))
    assert found == [f"{NB1}: reverse_mask (declared in autograder/checks/attention.py) names no public test "
                     f"that shows its rule first: write one and name it in shown_by="]


def test_a_new_hidden_cell_needs_only_the_call(course):
    """Adding an exercise: the TA writes `hidden_check("...")` in a new cell; make release writes the rest."""
    def bare(cell):
        return nbformat.v4.new_code_cell('hidden_check("reverse_mask")')

    edit_cell(course, "check_reverse_mask", bare)
    points.sync(course)
    assert points.problems(course) == []
    cell = next(c for c in nbformat.read(notebook(course), as_version=4).cells if 'hidden_check("reverse_mask")' in c.source)
    assert cell.metadata.nbgrader == {"grade": True, "grade_id": "check_reverse_mask", "locked": True, "points": 3,
                                      "schema_version": 3, "solution": False, "task": False}
    assert cell.source.startswith("# Hidden check (3 points): ") and "### BEGIN HIDDEN TESTS" in cell.source


def test_a_declared_name_the_student_never_writes_is_caught(course):
    found = points.problems(course, declared(causal_mask={"grades": ("create_casual_mask",)}))
    assert f"{NB1}: causal_mask (declared in autograder/checks/attention.py): grades=('create_casual_mask',), " \
           f"and no cell the student fills in defines create_casual_mask: name the function or value the check " \
           f"calls" in found
