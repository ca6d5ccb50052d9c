"""The student's and the instructor's screens on the course's real JupyterHub, in a real browser.

Debian's chromium, driven by Playwright for Python (its own browser download is not reachable).
A student logs in, opens the Assignment List, fetches, opens Notebook 1, fills in
create_causal_mask, runs the notebook and sees its public test pass, clicks Validate and
submits. The instructor (the grader account) opens formgrader and sees the submission with its
autograded score, and Notebook 3's written answers waiting for manual grading.
Screenshots of each screen go to .figures/hub/ for people to look at. Assertions are on what
the pages say; waits are for text to appear, never fixed sleeps.
"""
import os
import re
import shutil
from pathlib import Path

import pytest
import requests

from tests.conftest import grade_rows
from tests.grading import cuda_available
from tests.hub_host import ASSIGNMENT, requires_hub_host, setup_hub, teardown_hub
from tests.students import NB1, NB3, reference_answers, strip_solution_markers, source_notebook, student_notebook
from tests.test_autograde import WRITTEN_ANSWERS

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-sync",
                 "--disable-background-networking", "--disable-component-update"]
SCREENSHOTS = Path(__file__).resolve().parent.parent / ".figures" / "hub"
pytestmark = [requires_hub_host, pytest.mark.hub,
              pytest.mark.skipif(not os.access(CHROMIUM, os.X_OK), reason="needs Debian's chromium")]

# JupyterLab's own start-up, a kernel's torch import and a whole-notebook run are slow on a loaded
# 2-core host: waits for text allow this much. (They end as soon as the text is there.)
PAGE_WAIT_MS = 180_000
MASK_TEST_PASSED = "✓ the masks honour device='meta'"
VALIDATE_PASSED = "Success! Your notebook passes all the tests."


def causal_mask_answer():
    (cell,) = [c for c in source_notebook(NB1).cells
               if c.metadata.get("nbgrader", {}).get("grade_id") == "create_causal_mask"]
    return strip_solution_markers(cell.source)


@pytest.fixture(scope="module")
def hub():
    tag = f"hb{os.getpid() % 100000}"
    hub = setup_hub(tag, students=[f"{tag}-alice", f"{tag}-bob"])
    try:
        hub.run_as(hub.grader, "make", "release", cwd=hub.course)
        hub.run_as(hub.grader, "nbgrader", "release_assignment", ASSIGNMENT, cwd=hub.course)
        yield hub
    finally:
        teardown_hub(hub)


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


def shot(page, name):
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=SCREENSHOTS / name)


def log_in(browser, hub, user, password):
    page = browser.new_context(viewport={"width": 1400, "height": 900}).new_page()
    page.set_default_timeout(PAGE_WAIT_MS)
    page.goto(f"{hub.url}/hub/login")
    page.fill("#username_input", user)
    page.fill("#password_input", password)
    page.click("#login_submit")
    return page


def run_command(page, label):
    """Run a JupyterLab command by its label, through the command palette (as a user would)."""
    page.keyboard.press("Control+Shift+C")
    palette = page.locator(".lm-CommandPalette-input")
    palette.fill(label)
    page.locator(".lm-CommandPalette-item.lm-mod-active", has_text=label).wait_for()
    palette.press("Enter")


def save_until_on_disk(page, server, path, typed_line):
    """Ctrl+S, until the student's server has the notebook with `typed_line` in it. JupyterLab may ask
    whether to overwrite a file that changed on disk (her earlier work was saved there through the API
    moments before she opened it): the notebook open in the browser is hers, so Overwrite."""
    import time

    changed = page.locator(".jp-Dialog", has_text="File Changed")
    deadline = time.monotonic() + PAGE_WAIT_MS / 1000
    pressed, last_error = 0.0, None
    while time.monotonic() < deadline:
        if changed.count() and changed.is_visible():
            changed.get_by_role("button", name="Overwrite").click()
        elif time.monotonic() - pressed > 15:  # again: under load a key press can go nowhere (seen in a full run)
            page.keyboard.press("Escape")  # command mode: Ctrl+S saves the notebook, whatever has the focus
            page.keyboard.press("Control+S")
            pressed = time.monotonic()
        try:
            sources = ["".join(c["source"]) for c in server.read_notebook(path)["cells"]]
        except requests.HTTPError as err:  # read while the browser's save writes it (one 500 seen in a full run)
            last_error, sources = err, []
        if any("def create_causal_mask" in source and typed_line in source for source in sources):
            return
        page.wait_for_timeout(500)  # poll the server's copy; the assertion is on what it holds
    raise AssertionError(f"{path} was not saved with the typed answer ({typed_line!r}); last read error: {last_error}")


@pytest.fixture(scope="module")
def student_session(hub, browser):
    """Alice does Notebook 1 in the browser and submits; Bob submits Notebook 3 through the API."""
    alice = hub.students[0]
    page = log_in(browser, hub, alice, alice)
    try:
        return student_works(hub, page)
    except Exception:
        shot(page, "failed-student.png")  # what the screen showed when a step did not happen
        raise


def student_works(hub, page):
    alice, bob = hub.students
    page.wait_for_url(re.compile(r"/user/.*/lab"))
    page.locator(".jp-Launcher, .jp-LauncherBody").first.wait_for()
    shot(page, "01-student-lab.png")

    run_command(page, "Assignment List")
    page.get_by_text(ASSIGNMENT).first.wait_for()
    shot(page, "02-assignment-list-released.png")
    page.get_by_role("button", name="Fetch", exact=True).click()
    page.get_by_role("button", name="Submit", exact=True).wait_for()
    shot(page, "03-assignment-list-fetched.png")

    # Her earlier sessions: everything but the masks is done (saved in her own server, as JupyterLab saves).
    token = hub.api("POST", f"/users/{alice}/tokens", json={"expires_in": 3600})["token"]
    server = hub.server(alice, token)
    path = f"{ASSIGNMENT}/{NB1}.ipynb"
    earlier = {k: v for k, v in reference_answers().items() if k not in ("create_causal_mask",)}
    server.save_notebook(path, student_notebook(earlier, base=server.read_notebook(path)))

    assignments = page.locator("#nbgrader-assignment-list")
    assignments.get_by_role("button", name=ASSIGNMENT).first.click()  # unfolds the assignment: its notebooks
    assignments.get_by_text(NB1).first.click()  # the notebook's link opens it
    cell = page.locator(".jp-CodeCell", has_text="def create_causal_mask")
    cell.wait_for()
    editor = cell.locator(".cm-content")
    editor.click()
    page.keyboard.press("Control+A")
    page.keyboard.insert_text(causal_mask_answer())
    run_command(page, "Run All Cells")
    passed = page.locator(".jp-OutputArea-output", has_text=MASK_TEST_PASSED)  # its output, not its source
    passed.wait_for()
    passed.scroll_into_view_if_needed()
    shot(page, "04-notebook1-mask-test-passed.png")
    save_until_on_disk(page, server, path, causal_mask_answer().splitlines()[-1].strip())

    page.locator(".jp-NotebookPanel-toolbar").get_by_role("button", name="Validate").click()
    dialog = page.locator(".jp-Dialog")
    dialog.get_by_text(VALIDATE_PASSED).wait_for()
    validate_text = dialog.inner_text()
    shot(page, "05-validate.png")
    dialog.get_by_role("button").last.click()

    run_command(page, "Assignment List")
    page.get_by_role("button", name="Submit", exact=True).click()
    submitted = page.locator("text=/\\d{4}-\\d{2}-\\d{2} \\d{2}:\\d{2}:\\d{2}/").first
    submitted.wait_for()
    shot(page, "06-submitted.png")

    bob_token = hub.start_server(bob)
    bob_server = hub.server(bob, bob_token)
    bob_server.action("fetch")
    path3 = f"{ASSIGNMENT}/{NB3}.ipynb"
    answers3 = {**reference_answers(NB3), **WRITTEN_ANSWERS}
    bob_server.save_notebook(path3, student_notebook(answers3, name=NB3, base=bob_server.read_notebook(path3)))
    bob_server.action("submit")

    hub.run_as(hub.grader, "nbgrader", "collect", ASSIGNMENT, cwd=hub.course)
    hub.run_as(hub.grader, "make", "autograde", cwd=hub.course)
    grades = grade_rows(hub.course)
    return {"validate": validate_text, "grades": grades, "inbound": sorted(
        p.name for p in (hub.exchange / "attention-surgeon" / "inbound").iterdir())}


def test_student_fetches_fills_validates_and_submits(hub, student_session):
    alice = hub.students[0]
    assert VALIDATE_PASSED in student_session["validate"]
    assert any(name.startswith(f"{alice}+{ASSIGNMENT}+") for name in student_session["inbound"])
    # What she submitted is her notebook with the mask she typed: every Notebook 1 check passes.
    from tests.grading import decidable_points

    assert float(student_session["grades"][alice]["raw_score"]) == sum(decidable_points(NB1).values())


def formgrader_row(browser, hub, path, student):
    """The instructor logs in as the grader account and opens formgrader's `path`; the row of `student`."""
    page = log_in(browser, hub, hub.grader, hub.grader)
    page.wait_for_url(re.compile(r"/user/.*/lab"))
    page.goto(f"{hub.url}/user/{hub.grader}/formgrader/{path}")
    row = page.locator("tr", has_text=student)
    row.wait_for()
    return page, row


def test_instructor_sees_the_submission_and_its_score_in_formgrader(hub, browser, student_session):
    alice = hub.students[0]
    page, row = formgrader_row(browser, hub, f"manage_submissions/{ASSIGNMENT}", alice)
    score = float(student_session["grades"][alice]["raw_score"])
    assert f"\t{score:g} / " in row.inner_text(), row.inner_text()  # the Score column: autograded points
    if not cuda_available():
        assert "needs manual grading" in row.inner_text()  # its GPU checks wait for a CUDA host
    shot(page, "07-formgrader-submissions.png")


def test_instructor_sees_written_answers_waiting_for_manual_grading(hub, browser, student_session):
    page, row = formgrader_row(browser, hub, f"gradebook/{ASSIGNMENT}/{NB3}", hub.students[1])
    # Formgrader's columns: the written answers' 15 points not yet given, and the needs-manual-grade mark.
    assert row.locator("td.written-score").inner_text().strip() == "0 / 15", row.inner_html()
    assert row.locator("td.needs-manual-grade .glyphicon-ok").count() == 1, row.inner_html()
    shot(page, "08-formgrader-needs-manual-grade.png")
