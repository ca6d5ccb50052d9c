"""Nothing a student writes runs in anyone's browser (the "script in formgrader" attack).

A student's code cell displays HTML, JavaScript, SVG, Markdown and a forged PNG, and their
written answers in Notebook 3 hold <script>, <img onerror> and a javascript: link. Each
payload, if it ran, would mark the page (window.PWNED), write a file into the course folder
through the server's API and give the student 1000 points through formgrader's API.

In a real browser (Debian's chromium, driven by Playwright) we open the student's feedback
pages and formgrader's view of each notebook, as the TA would, and assert that no payload ran,
the gradebook and the course folder are unchanged. A control shows that the test can fail:
the same payload in a page that was not made inert runs, and writes into the course.
"""
import json
import os
import re
import secrets
import shutil
import socket
import sqlite3
import subprocess
import time
import urllib.request
from pathlib import Path

import nbformat
import pytest

from tests.conftest import copy_course, make, tree_digest, user_env
from tests.students import NB1, NB3, NOTEBOOKS, reference_answers, student_notebook, write_submission

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
pytestmark = pytest.mark.skipif(not os.access(CHROMIUM, os.X_OK),
                                reason="Debian's chromium is not installed (.ci/run installs it)")
# Chromium as root in a container, with no background traffic (this machine has no network).
SCREENSHOTS = Path(__file__).resolve().parents[1] / ".figures" / "browser"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-sync",
                 "--disable-background-networking", "--disable-component-update"]


def payload(tag):
    """JavaScript that, if it runs, marks the page and attacks the course through the TA's session."""
    return ("(function(){window.PWNED=(window.PWNED||[]).concat(['%s']);"
            "var x=(document.cookie.match(/_xsrf=([^;]+)/)||[])[1]||'';"
            "var h={'Content-Type':'application/json','X-XSRFToken':x};"
            "fetch('/api/contents/pwned-%s.txt',{method:'PUT',headers:h,"
            "body:JSON.stringify({type:'file',format:'text',content:'pwned'})});"
            "var s=(location.pathname.split('/submissions/')[1]||'').split('/')[0];"
            "if(s){fetch('/formgrader/api/grades?submission_id='+s).then(function(r){return r.json()})"
            ".then(function(gs){gs.forEach(function(g){fetch('/formgrader/api/grade/'+g.id,{method:'PUT',"
            "headers:h,body:JSON.stringify({id:g.id,manual_score:1000,extra_credit:1000})})})})}})()"
            % (tag, tag))


def hostile_code_cell():
    on = lambda tag: "onerror=" + json.dumps(payload(tag))  # noqa: E731 - an HTML event attribute
    displays = [
        ("HTML", "<script>" + payload("html") + "</script>"),
        ("HTML", "<img src=x " + on("img") + ">"),
        ("Javascript", payload("js")),
        ("SVG", '<svg xmlns="http://www.w3.org/2000/svg" onload=' + json.dumps(payload("svg")) + "/>"),
        ("Markdown", "<img src=x " + on("md") + ">"),
    ]
    lines = ["from IPython.display import HTML, Javascript, SVG, Markdown, display"]
    lines += [f"display({kind}({text!r}))" for kind, text in displays]
    forged_png = 'x" ' + on("png") + ' x="'  # breaks out of <img src="data:image/png;base64,...">
    lines.append(f"display({{'image/png': {forged_png!r}, 'text/plain': 'png'}}, raw=True)")
    return "\n".join(lines)


HOSTILE_ANSWERS = {
    "answer_why_scores_grow": f"Variance grows with d_k. <script>{payload('answer_script')}</script>",
    "answer_why_minus_inf": f"exp(-inf) = 0 <img src=x onerror={json.dumps(payload('answer_img'))}>",
    "answer_why_d_v_columns": "[see here](javascript:void(window.PWNED=['answer_link']))",  # needs a click
}


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def grades_table(course):
    """Every grade row of the gradebook, read without writing."""
    with sqlite3.connect(f"file:{course / 'gradebook.db'}?mode=ro", uri=True) as db:
        return sorted(db.execute("SELECT id, auto_score, manual_score, extra_credit FROM grade").fetchall())


def course_files(course):
    """The course folder as a TA's browser could change it (the gradebook is compared by its rows)."""
    return {path: stamp for path, stamp in tree_digest(course).items()
            if not path.startswith((".venv", ".jupyter", "gradebook.db")) and "__pycache__" not in path}


class Formgrader:
    """The grader account's Jupyter server with nbgrader's formgrader, on 127.0.0.1, token login."""

    def __init__(self, course, home):
        self.port, self.token = free_port(), secrets.token_hex(16)
        env = {**user_env(), "HOME": str(home), "JUPYTER_CONFIG_DIR": str(home / "config"),
               "JUPYTER_DATA_DIR": str(home / "data"), "JUPYTER_RUNTIME_DIR": str(home / "runtime"),
               "PYTHONPATH": str(course)}
        self.log = open(home / "server.log", "w")
        self.process = subprocess.Popen(
            [str(course / ".venv" / "bin" / "jupyter"), "server", "--allow-root", "--no-browser",
             "--ServerApp.ip=127.0.0.1", f"--ServerApp.port={self.port}", f"--IdentityProvider.token={self.token}",
             f"--ServerApp.root_dir={course}"],
            cwd=course, env=env, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)
        self.url = f"http://127.0.0.1:{self.port}"
        deadline = time.monotonic() + 60
        while True:
            try:
                urllib.request.urlopen(f"{self.url}/api/status?token={self.token}", timeout=2)
                return
            except OSError:
                if time.monotonic() > deadline or self.process.poll() is not None:
                    self.close()
                    raise AssertionError(f"jupyter server did not start: {(home / 'server.log').read_text()[-3000:]}")
                time.sleep(0.3)

    def close(self):
        if self.process.poll() is None:
            os.killpg(self.process.pid, 15)
            self.process.wait(timeout=30)
        self.log.close()


class Browser:
    """Headless chromium; `visit` opens a page and reports what ran there."""

    def __init__(self):
        from playwright.sync_api import sync_playwright

        self._playwright = sync_playwright().start()
        self._browser = self._playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        self.context = self._browser.new_context()

    def visit(self, url, settle_s=3.0, screenshot=None):
        page = self.context.new_page()
        dialogs = []
        page.on("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.dismiss()))
        page.goto(url, wait_until="load")
        page.wait_for_timeout(settle_s * 1000)  # let any onerror, onload or fetch that was going to run, run
        seen = {"pwned": page.evaluate("window.PWNED || []"), "dialogs": dialogs, "text": page.inner_text("body")}
        if screenshot:  # for people to look at
            SCREENSHOTS.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=SCREENSHOTS / screenshot, full_page=False)
        page.close()
        return seen

    def close(self):
        self._browser.close()
        self._playwright.stop()


@pytest.fixture(scope="module")
def hostile_course(tmp_path_factory):
    course = copy_course(tmp_path_factory.mktemp("xss"))
    make(course, "release")
    masks = {k: v for k, v in reference_answers().items() if k in ("create_causal_mask", "create_reverse_mask")}
    write_submission(course, "mallory", {
        NB1: student_notebook(masks, extra_cells=[("setup", hostile_code_cell())]),
        NB3: student_notebook(HOSTILE_ANSWERS, name=NB3),
    })
    make(course, "autograde")
    return course


@pytest.fixture(scope="module")
def browser():
    b = Browser()
    yield b
    b.close()


def test_autograded_notebooks_hold_nothing_that_runs(hostile_course):
    nb1 = nbformat.read(hostile_course / "autograded" / "mallory" / "attention_surgeon" / f"{NB1}.ipynb", 4)
    kinds = {mime for cell in nb1.cells for out in cell.get("outputs", []) for mime in out.get("data", {})}
    assert kinds <= {"text/plain", "image/png", "image/jpeg"}
    attack = next(c for c in nb1.cells if "display(HTML(" in c.source)
    assert "removed output of kind application/javascript, image/png, image/svg+xml, text/html, text/markdown" \
        in attack.outputs[-1]["text"]
    nb3 = nbformat.read(hostile_course / "autograded" / "mallory" / "attention_surgeon" / f"{NB3}.ipynb", 4)
    answers = {c.metadata.get("nbgrader", {}).get("grade_id"): c.source for c in nb3.cells}
    for grade_id, written in HOSTILE_ANSWERS.items():
        assert "shows this answer as plain text" in answers[grade_id]
        assert written in answers[grade_id], "the TA still reads every word the student wrote"


def test_feedback_pages_run_nothing(hostile_course, browser):
    folder = hostile_course / "feedback" / "mallory" / "attention_surgeon"
    for name in NOTEBOOKS:
        html = (folder / f"{name}.html").read_text()
        assert 'http-equiv="Content-Security-Policy"' in html
        seen = browser.visit((folder / f"{name}.html").as_uri(), settle_s=1.0, screenshot=f"feedback-{name}.png")
        assert seen["pwned"] == [] and seen["dialogs"] == [], (name, seen["pwned"])
    seen = browser.visit((folder / f"{NB3}.html").as_uri(), settle_s=0.5)
    assert "<script>" in seen["text"], "the written answer is shown, as text"


def test_the_feedback_policy_alone_stops_a_script(hostile_course, browser, tmp_path):
    """The Content-Security-Policy is a wall of its own: markup that got past everything else still
    does not run. Control: without the policy, the same markup runs (so this check can fail)."""
    html = (hostile_course / "feedback" / "mallory" / "attention_surgeon" / f"{NB1}.html").read_text()
    injected = f"<img src=x onerror={json.dumps(payload('feedback'))}>"
    with_policy, without_policy = tmp_path / "with.html", tmp_path / "without.html"
    with_policy.write_text(html.replace("</body>", injected + "</body>"))
    without_policy.write_text(re.sub(r"<meta[^>]*Content-Security-Policy[^>]*>", "", html)
                              .replace("</body>", injected + "</body>"))
    assert browser.visit(with_policy.as_uri(), settle_s=1.0)["pwned"] == []
    assert set(browser.visit(without_policy.as_uri(), settle_s=1.0)["pwned"]) == {"feedback"}


def test_formgrader_runs_nothing_and_changes_nothing(hostile_course, browser, tmp_path):
    from nbgrader.api import Gradebook

    with Gradebook(f"sqlite:///{hostile_course / 'gradebook.db'}") as gradebook:
        ids = {name: gradebook.find_submission_notebook(name, "attention_surgeon", "mallory").id
               for name in (NB1, NB3)}
    grades, files = grades_table(hostile_course), course_files(hostile_course)
    server = Formgrader(hostile_course, tmp_path)
    try:
        browser.visit(f"{server.url}/formgrader?token={server.token}", settle_s=0.5)  # the TA logs in
        for name, submission_id in ids.items():
            seen = browser.visit(f"{server.url}/formgrader/submissions/{submission_id}/",
                                 screenshot=f"formgrader-{name}.png")
            assert seen["pwned"] == [] and seen["dialogs"] == [], (name, seen["pwned"])
            # It is formgrader's grading view of this notebook, with the student's work made inert.
            assert "Submission 1 / 1" in seen["text"]
            assert ("shows this answer as plain text" if name == NB3 else "the grader removed output") in seen["text"]

        assert grades_table(hostile_course) == grades
        assert course_files(hostile_course) == files
        assert not list(hostile_course.glob("pwned-*"))

        # Control: the same payload, in an autograded notebook that was not made inert, runs in this
        # browser and writes into the course. So the assertions above can fail.
        path = hostile_course / "autograded" / "mallory" / "attention_surgeon" / f"{NB1}.ipynb"
        nb = nbformat.read(path, 4)
        cell = next(c for c in nb.cells if "display(HTML(" in c.source)
        cell.outputs.append(nbformat.v4.new_output("display_data", data={
            "text/html": f"<img src=x onerror={json.dumps(payload('control'))}>", "text/plain": "x"}))
        nbformat.write(nb, path)
        seen = browser.visit(f"{server.url}/formgrader/submissions/{ids[NB1]}/")
        assert set(seen["pwned"]) == {"control"}
        deadline = time.monotonic() + 10
        while not (hostile_course / "pwned-control.txt").exists() and time.monotonic() < deadline:
            time.sleep(0.2)
        assert (hostile_course / "pwned-control.txt").exists()
        assert grades_table(hostile_course) != grades
    finally:
        server.close()
