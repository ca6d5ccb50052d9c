"""Points and visibility, declared once: beside each check.

A check in `checks/` declares everything a course states about it:

    @check("attention_gradients", NOTEBOOK, points=5, grades="attention", shown_by="test_attention",
           family="attention")

`points` are what its hidden cell is worth, `grades` the student's functions (or values) it calls,
and `shown_by` the public test cells (0 points, earlier in the notebook) that show its rule first.
Everything else that states them is written from the declarations by `make release` (`sync`), or
held against them (`problems`, which tests/test_points.py runs on the repository):

  written  the hidden-check cell: its nbgrader metadata (grade id, points, locked; the `gpu` tag) and
           its first line, "# Hidden check (N points): ...". A new hidden cell may hold just the
           call, `hidden_check("name")`: sync writes the rest of the cell around it.
  written  README.md's points table (between the two `points table` markers)
  written  a sentence of a notebook that states a family's points (FAMILY_SENTENCES)
  held     every hidden cell names a registered check, and every check has exactly one hidden cell
  held     each `shown_by` cell is a 0-point public test before the check that calls or reads one of
           the names in `grades` (a test of something else does not show this rule)
  held     each name in `grades` is defined in a cell the student fills in
  held     in an instructor's kernel, a check that passes called a name in its `grades`
           (autograder.hidden_check)
"""
import ast
import re
from pathlib import Path

import nbformat
from nbgrader.utils import is_grade, is_solution

import course_config

from .pipeline import HIDDEN_CHECK_CALL

README_BEGIN = "<!-- points table: written by `make release` from the checks' declarations; edit those -->"
README_END = "<!-- end of the points table -->"
COMMENT = re.compile(r"^# Hidden check \((\d+(?:\.\d+)?) points?\)")
GPU_TAG = "gpu"
# A notebook's sentences that state the points of a family of checks: (notebook, pattern whose one
# group is the number, family). sync rewrites the number.
FAMILY_SENTENCES = (
    ("01_attention_from_scratch", re.compile(r"every attention check\s+fails \((\d+) points"), "attention"),
)


def number(points):
    """12 for 12.0, 0.5 for 0.5: as the notebooks write points."""
    return int(points) if float(points).is_integer() else float(points)


def registry():
    from .checks import REGISTRY

    return REGISTRY


def source_notebooks(root):
    """{notebook name: (assignment, path)} for every source notebook of the course."""
    return {path.stem: (assignment, path) for assignment in course_config.ASSIGNMENTS
            for path in sorted((Path(root) / "source" / assignment).glob("*.ipynb"))}


def hidden_cell_source(check, old_source):
    """The hidden cell's text: its first line states the declared points; a cell holding only the call
    gets the whole frame (comment, nbgrader's hidden-tests markers)."""
    lines = old_source.splitlines()
    if lines and COMMENT.match(lines[0]):
        lines[0] = COMMENT.sub(f"# Hidden check ({number(check.points)} points)", lines[0])
        return "\n".join(lines)
    summary = (check.run.__doc__ or check.name).strip().splitlines()[0]
    return (f"# Hidden check ({number(check.points)} points): {summary}\n"
            "# It runs after you submit, in the autograder, against your functions.\n"
            "### BEGIN HIDDEN TESTS\n"
            f'from autograder import hidden_check; hidden_check("{check.name}")\n'
            "### END HIDDEN TESTS")


def hidden_cell_metadata(check, old):
    metadata = dict(old)
    metadata["nbgrader"] = {"grade": True, "grade_id": f"check_{check.name}", "locked": True,
                            "points": number(check.points), "schema_version": 3, "solution": False,
                            "task": False}
    tags = [t for t in metadata.get("tags", []) if t != GPU_TAG] + ([GPU_TAG] if check.gpu else [])
    if tags:
        metadata["tags"] = tags
    else:
        metadata.pop("tags", None)
    return metadata


def is_hidden_cell(cell):
    """A code cell that calls hidden_check(...), whatever its metadata says yet."""
    return cell.cell_type == "code" and bool(HIDDEN_CHECK_CALL.search(cell.source))


def _named_check(cell):
    """The check a hidden cell calls (is_hidden_cell), read from its source: its metadata may not say yet."""
    return HIDDEN_CHECK_CALL.search(cell.source).group(1)


def family_points(checks, notebook, family):
    return sum(c.points for c in checks.values() if c.notebook == notebook and c.family == family)


def sync_notebook(nb, name, checks):
    """Write the declarations into notebook `nb` (in place); [what changed]."""
    changes = []
    for index, cell in enumerate(nb.cells):
        check = checks.get(_named_check(cell)) if is_hidden_cell(cell) else None
        if check is None:
            continue
        source, metadata = hidden_cell_source(check, cell.source), hidden_cell_metadata(check, cell.metadata)
        if source != cell.source or metadata != cell.metadata:
            old = cell.metadata.get("nbgrader", {}).get("points")
            said = COMMENT.match(cell.source)
            changes.append(f"{name}: the hidden cell of {check.name} (cell {index}) now says {number(check.points)} "
                           f"points, as the check declares (its metadata said {old}, its comment "
                           f"{said.group(1) if said else 'nothing'})")
            cell.source, cell.metadata = source, nbformat.from_dict(metadata)
    for notebook, pattern, family in FAMILY_SENTENCES:
        if notebook != name:
            continue
        total = number(family_points(checks, name, family))
        for index, cell in enumerate(nb.cells):
            if cell.cell_type != "markdown":
                continue
            updated = pattern.sub(lambda m: m.group(0)[:m.start(1) - m.start(0)] + str(total)
                                  + m.group(0)[m.end(1) - m.start(0):], cell.source)
            if updated != cell.source:
                changes.append(f"{name}: cell {index} now states {total} points for the {family} checks")
                cell.source = updated
    return changes


def written_answers(nb):
    """[(grade id, points)] of the cells a TA grades: nbgrader's manually graded answers and tasks."""
    answers = [(c.metadata.nbgrader["grade_id"], float(c.metadata.nbgrader.get("points", 0))) for c in nb.cells
               if (is_grade(c) and is_solution(c)) or c.metadata.get("nbgrader", {}).get("task")]
    return [(grade_id, points) for grade_id, points in answers if points > 0]


def readme_table(root, checks):
    """README.md's points table, from the declarations and the notebooks' written answers."""
    rows = ["| assignment | notebook | hidden checks | GPU checks (decided on a CUDA host) | "
            "written answers (a TA grades them) | points |", "| --- | --- | --- | --- | --- | --- |"]
    totals = {}
    for name, (assignment, path) in source_notebooks(root).items():
        mine = [c for c in checks.values() if c.notebook == name]
        cpu = [c.points for c in mine if not c.gpu]
        gpu = [c.points for c in mine if c.gpu]
        written = [p for _, p in written_answers(nbformat.read(path, as_version=4))]
        total = sum(cpu) + sum(gpu) + sum(written)
        totals[assignment] = totals.get(assignment, 0) + total

        def cell(points, what="checks"):
            return f"{len(points)} {what} ({number(sum(points))} points)" if points else "none"

        rows.append(f"| `{assignment}` | `{name}` | {cell(cpu)} | {cell(gpu)} | {cell(written, 'answers')} "
                    f"| {number(total)} |")
    for assignment, total in totals.items():
        rows.append(f"| `{assignment}` | **in all** | | | | **{number(total)}** |")
    rows.append("")
    for name in source_notebooks(root):  # what each part is worth: the checks' points by what they grade
        split = {}
        for c in checks.values():
            if c.notebook == name:
                what = " / ".join(f"`{g}`" for g in c.grades)
                split[what] = split.get(what, 0) + c.points
        rows.append(f"- `{name}`, every check (GPU checks too) by what it grades: "
                    + ", ".join(f"{what} {number(points)}" for what, points in split.items()) + ".")
    return "\n".join(rows)


def sync_readme(text, table):
    """README text with its points table replaced; ValueError when the markers are missing."""
    start, end = text.find(README_BEGIN), text.find(README_END)
    if start < 0 or end < start:
        raise ValueError(f"README.md has no points table: put the lines {README_BEGIN!r} and "
                         f"{README_END!r} where it goes")
    return text[:start + len(README_BEGIN)] + "\n" + table + "\n" + text[end:]


def defined_names(source):
    """Functions, classes and module-level names a cell defines."""
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return set()
    names = set()
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.ClassDef, ast.AsyncFunctionDef)):
            names.add(node.name)
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            for target in node.targets if isinstance(node, ast.Assign) else [node.target]:
                names |= {n.id for n in ast.walk(target) if isinstance(n, ast.Name)}
    return names


def used_names(source):
    """Every name a cell calls or reads."""
    try:
        return {n.id for n in ast.walk(ast.parse(source)) if isinstance(n, ast.Name)}
    except SyntaxError:
        return set()


def structure_problems(nb, name, checks):
    """What no sync can write: each a sentence that says what to fix."""
    problems = []
    public, student_names, seen = {}, set(), {}
    for index, cell in enumerate(nb.cells):
        if is_hidden_cell(cell):
            check = _named_check(cell)
            if check not in checks:
                problems.append(f"{name}: cell {index} calls hidden_check({check!r}), and no check in "
                                f"autograder/checks/ has that name")
            elif checks[check].notebook != name:
                problems.append(f"{name}: cell {index} calls {check}, which is declared for notebook "
                                f"{checks[check].notebook}")
            seen.setdefault(check, []).append(index)
        elif is_grade(cell) and not is_solution(cell) and cell.cell_type == "code":
            public[cell.metadata.nbgrader["grade_id"]] = index
            if float(cell.metadata.nbgrader.get("points", 0)):
                problems.append(f"{name}: the public test {cell.metadata.nbgrader['grade_id']} has points; "
                                f"public tests carry 0 (the points belong to hidden checks)")
        if is_solution(cell) and cell.cell_type == "code":
            student_names |= defined_names(cell.source)
    for check in (c for c in checks.values() if c.notebook == name):
        where = f"{name}: {check.name} (declared in {check.run.__module__.replace('.', '/')}.py)"
        if len(seen.get(check.name, [])) != 1:
            problems.append(f"{where} needs exactly one hidden cell; the notebook has "
                            f"{len(seen.get(check.name, []))}: add `hidden_check({check.name!r})` in its own cell")
            continue
        index = seen[check.name][0]
        missing = [g for g in check.grades if g not in student_names]
        if not check.grades or missing:
            problems.append(f"{where}: grades={check.grades!r}, and no cell the student fills in defines "
                            f"{', '.join(missing) or 'it'}: name the function or value the check calls")
        if not check.shown_by:
            problems.append(f"{where} names no public test that shows its rule first: write one and name "
                            f"it in shown_by=")
        for test in check.shown_by:
            if test not in public:
                problems.append(f"{where}: shown_by names {test!r}, which is not a public test cell of "
                                f"{name}")
            elif public[test] > index:
                problems.append(f"{where}: its public test {test} comes after its hidden cell: move the test "
                                f"before it")
        shown = [t for t in check.shown_by if t in public]
        if shown and not any(used_names(nb.cells[public[t]].source) & set(check.grades) for t in shown):
            problems.append(f"{where}: none of its public tests ({', '.join(shown)}) calls "
                            f"{' or '.join(check.grades)}, so none shows this rule: name the public test "
                            f"that exercises it in shown_by=")
    return problems


def sync(root=None, checks=None, write=True):
    """Bring the notebooks and README.md in line with the declarations; [(file, what changed)].
    With write=False nothing is written: the list says what is out of date."""
    root = Path(root or course_config.COURSE_ROOT)
    checks = checks if checks is not None else registry()
    changes = []
    for name, (_, path) in source_notebooks(root).items():
        nb = nbformat.read(path, as_version=4)
        done = sync_notebook(nb, name, checks)
        if done and write:
            nbformat.write(nb, path)
        changes += [(path, change) for change in done]
    readme = root / "README.md"
    if not readme.exists():  # a course deployed without the repository's README (a test's copy)
        return changes
    text = readme.read_text()
    updated = sync_readme(text, readme_table(root, checks))
    if updated != text:
        changes.append((readme, "the points table now holds the checks' declared points"))
        if write:
            readme.write_text(updated)
    return changes


def problems(root=None, checks=None):
    """Every way the course disagrees with its checks' declarations, as sentences that say what to fix."""
    root = Path(root or course_config.COURSE_ROOT)
    checks = checks if checks is not None else registry()
    try:
        found = [f"{path.relative_to(root)} is out of date ({change}): run `make release`"
                 for path, change in sync(root, checks, write=False)]
    except ValueError as missing:
        found = [str(missing)]
    notebooks = source_notebooks(root)
    for name, (_, path) in notebooks.items():
        found += structure_problems(nbformat.read(path, as_version=4), name, checks)
    found += [f"{check.name} is declared for notebook {check.notebook}, which the course does not have"
              for check in checks.values() if check.notebook not in notebooks]
    return found
