"""`make validate NB=...`: nbgrader's own validation of one notebook, with an exit status.

`nbgrader validate` prints which public tests failed but exits 0 either way, so a script (or a
student's pre-submit check) cannot tell. This runs the same Validator with the course
configuration, prints the same report, and exits 1 when a test failed, a read-only cell was
changed or a cell changed type.
"""
import logging
import sys

from nbgrader.apps import ValidateApp
from nbgrader.validator import Validator

log = logging.getLogger("attention_surgeon.validate")


class RecordingValidator(Validator):
    """nbgrader's Validator that keeps the last results it printed."""

    results = None

    def validate(self, filename):
        self.results = super().validate(filename)
        return self.results


def problems(results):
    """How many public tests failed, cells were changed or changed type (0: the notebook is fine)."""
    return sum(len(results.get(key, [])) for key in ("failed", "changed", "type_changed"))


def main(paths):
    if not paths:
        print("usage: make validate NB=path/to/notebook.ipynb", file=sys.stderr)
        return 2
    app = ValidateApp()
    app.initialize(paths)  # reads nbgrader_config.py, which includes course_config.py
    worst = 0
    for path in paths:
        validator = RecordingValidator(parent=app)
        try:
            validator.validate_and_print(path)
        except Exception as err:  # noqa: BLE001 - a broken notebook is a failed validation, said plainly
            print(f"{path}: could not be validated ({type(err).__name__}: {err})")
            worst = 1
            continue
        if problems(validator.results or {}):
            print(f"{path}: VALIDATION FAILED")
            worst = 1
    return worst


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
