"""Run nbgrader's own command-line apps with the course configuration; check nbgrader's cell metadata
at the cost of checking it once (`validate_metadata_against_a_checked_schema`)."""
import json
import os
import subprocess
import sys
import types
from pathlib import Path

import course_config

VENV_BIN = Path(sys.executable).parent


def nbgrader_env():
    env = dict(os.environ)
    # nbgrader runs `alembic` as a subprocess: the venv's bin must be on PATH.
    env["PATH"] = f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}"
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(course_config.COURSE_ROOT), env.get("PYTHONPATH")]))
    env.setdefault("MPLBACKEND", "Agg")
    return env


def nbgrader_command(*args):
    # Run in the course root, nbgrader loads nbgrader_config.py, which includes course_config.py.
    return [str(VENV_BIN / "nbgrader"), *args]


def run_nbgrader(*args, check=True, **kwargs):
    """`nbgrader <args>` in the course root, so it reads course_config.py."""
    return subprocess.run(nbgrader_command(*args), cwd=course_config.COURSE_ROOT, env=nbgrader_env(),
                          check=check, **kwargs)


def validate_metadata_against_a_checked_schema():
    """nbgrader checks every nbgrader cell's metadata of every notebook it reads, converts or writes with
    `jsonschema.validate(metadata, schema)` (nbgrader.nbgraderformat.common), and jsonschema.validate
    first checks the schema itself against its metaschema, at every call. The schema is nbgrader's own
    file, the same at each call: here, in this process, it is checked once and one validator then checks
    each cell's metadata, raising the same ValidationError (jsonschema.validate's own steps, without the
    repeated one). Measured: benchmarks/metadata_validation.py; one grading process spent 4.4 s of its
    CPU in the repeated check for 6 submissions, under cProfile."""
    import jsonschema
    from nbgrader.nbgraderformat import common

    validators = {}

    def validate(instance, schema):
        key = json.dumps(schema, sort_keys=True)
        if key not in validators:
            kind = jsonschema.validators.validator_for(schema)
            kind.check_schema(schema)
            validators[key] = kind(schema)
        error = jsonschema.exceptions.best_match(validators[key].iter_errors(instance))
        if error is not None:
            raise error

    common.jsonschema = types.SimpleNamespace(**{**vars(jsonschema), "validate": validate})  # the rest as it was
