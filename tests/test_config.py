"""Every policy value lives in course_config.py, read by its one reader under the environment name
ATTENTION_SURGEON_<CONSTANT>, and README.md's table of overrides is walked: each name in it is such
a constant, setting its variable changes the value, and the grader's code reads it."""
import ast
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import nbformat

from autograder.pipeline import SandboxedExecute

ROOT = Path(__file__).resolve().parent.parent


def policy_constants():
    """{constant: default expression} of every `NAME = _policy("NAME", default, ...)` in course_config.py."""
    found = {}
    for node in ast.parse((ROOT / "course_config.py").read_text()).body:
        if not isinstance(node, ast.Assign):
            continue
        calls = [n for n in ast.walk(node.value) if isinstance(n, ast.Call) and getattr(n.func, "id", "") == "_policy"]
        if calls:
            target = node.targets[0].id
            found[target] = (calls[0].args[0].value, eval(ast.unparse(calls[0].args[1])))  # noqa: S307 - our file
    return found


def readme_overrides():
    """The names in the first column of README.md's table of overrides (`A` / `B`: both)."""
    text = (ROOT / "README.md").read_text()
    table = text[text.index("| limit | default |"):].split("\n\n")[0]
    return [name for row in table.splitlines()[2:] for name in re.findall(r"`([A-Z_]+)`", row.split(":")[0])]


def values_in_a_fresh_process(names, env):
    script = f"import json, course_config; print(json.dumps({{n: getattr(course_config, n) for n in {names!r}}}))"
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT,
                            env={**os.environ, **env})
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def another_value(default):
    return {int: lambda d: d + 7, str: lambda d: d + "-other", bool: lambda d: not d}[type(default)](default)


def test_every_policy_value_is_read_under_its_own_name():
    constants = policy_constants()
    assert len(constants) > 20
    wrong = {name: variable for name, (variable, _) in constants.items() if variable != name}
    assert wrong == {}, "each is read as ATTENTION_SURGEON_<CONSTANT>: pass the constant's own name to _policy"


def test_the_readme_table_of_overrides_is_walked():
    constants = policy_constants()
    names = readme_overrides()
    assert "OUTPUT_MAX_LINES" in names and "GRADING_PARALLELISM" in names and "WIRE_MAX_ITEMS" in names
    assert [n for n in names if n not in constants] == [], "the README names a limit course_config does not read"
    changed = {name: another_value(constants[name][1]) for name in names if name != "STUDENT_GROUP"}
    overridden = values_in_a_fresh_process(list(changed), {f"ATTENTION_SURGEON_{n}": str(v) for n, v in changed.items()})
    assert overridden == changed
    grader_code = "\n".join(p.read_text() for p in (ROOT / "autograder").rglob("*.py"))
    unread = [n for n in names if f"course_config.{n}" not in grader_code]
    assert unread == [], f"documented, but no code of the grader reads them: {unread}"


def test_every_policy_value_is_documented():
    readme = (ROOT / "README.md").read_text()
    undocumented = [n for n in policy_constants() if n not in readme_overrides() and f"ATTENTION_SURGEON_{n}" not in readme]
    assert undocumented == []


def test_output_past_its_line_cap_is_dropped_with_a_note():
    """Before (issue 19): ATTENTION_SURGEON_OUTPUT_MAX_LINES=5 still let 1000 lines through."""
    execute = SandboxedExecute(max_output_lines=5)
    execute.reset_execution_trackers()
    execute.clear_before_next_output = False  # what nbclient sets when a cell starts
    outs = []
    for i in range(20):
        message = {"msg_type": "stream", "header": {"msg_type": "stream"}, "parent_header": {},
                   "content": {"name": "stdout", "text": f"line {i}\n"}}
        execute.output(outs, message, None, 0)
    text = "".join(o.get("text", "") for o in outs)
    assert text.count("line ") == 5 and text.count("[output truncated") == 1, text
    assert "more than 10000 characters or 5 lines" in text
    assert all(isinstance(o, nbformat.NotebookNode) for o in outs)


def test_the_worker_keeps_the_wire_caps_the_course_sets():
    script = ("from autograder.student import SandboxedStudent\n"
              "with SandboxedStudent(['def f():\\n    raise ValueError(\"x\" * 500)']) as s:\n"
              "    print(len(s.call('f').raised[1]))")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT,
                            env={**os.environ, "ATTENTION_SURGEON_WIRE_MAX_TEXT_CHARS": "40"})
    assert result.returncode == 0, result.stderr
    assert int(result.stdout.split()[-1]) <= 40 + len(" ...")
