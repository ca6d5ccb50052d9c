"""Run nbgrader's own command-line apps with the course configuration."""
import os
import subprocess
import sys
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
