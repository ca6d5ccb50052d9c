"""The Attention Surgeon's trusted autograder. See autograder/README.md for the map.

`hidden_check(name)` is what a hidden-check cell of a *source* notebook calls.
In an instructor's kernel it runs the named check against that kernel's own
functions and prints the verdict. At grading time the call is never run in
the student's kernel: autograder/pipeline.py decides it outside, against the
student's code in the sandboxed worker.
"""
import functools


@functools.lru_cache(maxsize=1)
def _instructor_cells():
    """The text of every locked cell of the course's source notebooks: the instructor's own helpers
    (largest_new_tensor watches memory through a TorchDispatchMode), which the static scan must not
    read as the student's code."""
    from pathlib import Path

    import nbformat
    from nbgrader.utils import is_locked

    source = Path(__file__).resolve().parents[1] / "source"
    return [cell.source for path in sorted(source.glob("*/*.ipynb"))
            for cell in nbformat.read(path, as_version=4).cells if is_locked(cell)]


def hidden_check(name):
    """Run the hidden check `name` against the functions of the calling (instructor's) notebook.
    The static scan reads the functions the notebook defines in the cells a student writes in."""
    import inspect

    from IPython import get_ipython

    from .checks import REGISTRY, run_check
    from .student import InProcessStudent

    namespace = get_ipython().user_ns
    instructors = _instructor_cells()
    sources = []
    for value in list(namespace.values()):
        if inspect.isfunction(value) and value.__module__ == "__main__":
            try:
                text = inspect.getsource(value)
            except (OSError, TypeError):
                continue
            if not any(text.strip() in cell for cell in instructors):
                sources.append(text)
    student = InProcessStudent(namespace, sources)
    verdict = run_check(name, student)
    declared = REGISTRY[name].grades if name in REGISTRY else ()
    if verdict.status == "passed" and not set(declared) & getattr(student, "used", set()):
        raise AssertionError(f"hidden check {name} declares grades={declared!r} but called "
                             f"{sorted(getattr(student, 'used', set())) or 'nothing of the notebook'}: "
                             f"fix grades= in its @check")
    if verdict.status == "failed":
        raise AssertionError(f"hidden check {name} failed:\n{verdict.message}")
    print(f"hidden check {name}: {verdict.status}" + (f" ({verdict.message})" if verdict.message else ""))
