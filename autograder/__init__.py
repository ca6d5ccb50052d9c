"""The Attention Surgeon's trusted autograder. See autograder/README.md for the map.

`hidden_check(name)` is what a hidden-check cell of a *source* notebook calls.
In an instructor's kernel it runs the named check against that kernel's own
functions and prints the verdict. At grading time the call is never run in
the student's kernel: autograder/pipeline.py decides it outside, against the
student's code in the sandboxed worker.
"""


def hidden_check(name):
    """Run the hidden check `name` against the functions of the calling (instructor's) notebook."""
    import inspect

    from IPython import get_ipython

    from .checks import run_check
    from .student import InProcessStudent

    namespace = get_ipython().user_ns
    sources = []
    for value in list(namespace.values()):
        if inspect.isfunction(value) and value.__module__ == "__main__":
            try:
                sources.append(inspect.getsource(value))
            except (OSError, TypeError):
                pass
    verdict = run_check(name, InProcessStudent(namespace, sources))
    if verdict.status == "failed":
        raise AssertionError(f"hidden check {name} failed:\n{verdict.message}")
    print(f"hidden check {name}: {verdict.status}" + (f" ({verdict.message})" if verdict.message else ""))
