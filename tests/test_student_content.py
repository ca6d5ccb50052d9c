"""InertStudentContent: what survives of a student's outputs and markdown (the browser test is test_browser_safety.py)."""
import base64

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook, new_output, new_raw_cell

from autograder.student_content import InertStudentContent, markdown_hazards
from tests.students import NOTEBOOKS, source_notebook

PNG = base64.b64encode(b"\x89PNG\r\n\x1a\n not really a png, but base64").decode()


@pytest.mark.parametrize("source, hazard", [
    ("<script>alert(1)</script>", "HTML"),
    ("text <img src=x onerror=alert(1)> text", "HTML"),
    ("<details open ontoggle=alert(1)>", "HTML"),
    ("[x](javascript:alert(1))", "a javascript: link"),
    ("[x](JaVaScRiPt&#58;alert(1))", "a javascript: link"),
    ("[a]: javascript:alert(1)\n\n[x][a]", "a javascript: link"),
    ("<javascript:alert(1)>", "a javascript: link"),
    ("[x](data:text/html;base64,PHNjcmlwdD4=)", "a data: link"),
    ("![pixel](http://tracker.example/p.png)", "an image"),
    ("$\\href{javascript:alert(1)}{x}$", "a MathJax macro that acts in the browser"),
])
def test_markdown_that_could_act_is_found(source, hazard):
    assert hazard in markdown_hazards(source)


@pytest.mark.parametrize("source", [
    "Scores grow like $\\sqrt{d_k}$, so $a<b$ and `x<y` and a < b; **bold**, *it*, ~~no~~",
    "# Heading\n\n- a list\n- [x] a task\n\n> a quote\n\n| a | b |\n|:-|-:|\n| 1 | 2 |",
    "```python\n<script>in a code block is text</script>\n```",
    "[the docs](https://pytorch.org/docs) and <https://example.org> and [mail](mailto:ta@example.org)",
])
def test_plain_markdown_is_left_as_written(source):
    assert markdown_hazards(source) == []


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_the_instructors_prose_is_plain_markdown(name):
    """Otherwise the grader would show the course's own text as code in feedback."""
    for cell in source_notebook(name).cells:
        if cell.cell_type == "markdown":
            assert markdown_hazards(cell.source) == [], cell.source[:200]


def inert(*cells):
    nb, _ = InertStudentContent().preprocess(new_notebook(cells=list(cells)), {})
    nbformat.validate(nb)
    return nb.cells


def test_outputs_keep_text_errors_and_real_images_only():
    cell = new_code_cell("x", outputs=[
        new_output("stream", name="stdout", text="<b>printed</b>"),
        new_output("display_data", data={"image/png": PNG, "text/plain": "<Figure>"}, metadata={"width": "1 onload=x"}),
        new_output("display_data", data={"text/html": "<script>x</script>", "text/plain": "<HTML object>"}),
        new_output("display_data", data={"application/javascript": "x"}),
        new_output("display_data", data={"image/png": 'x" onerror="alert(1)'}),
        new_output("execute_result", data={"text/latex": "\\href{javascript:x}{y}", "text/plain": "y"},
                   execution_count=3),
        new_output("error", ename="E", evalue="<img onerror>", traceback=["<script>"]),
    ])
    (out,) = inert(cell)
    kinds = [(o.output_type, sorted(o.get("data", {}))) for o in out.outputs]
    assert kinds == [("stream", []), ("display_data", ["image/png", "text/plain"]), ("display_data", ["text/plain"]),
                     ("execute_result", ["text/plain"]), ("error", []), ("stream", [])]
    assert out.outputs[1].metadata == {}
    assert out.outputs[0].text == "<b>printed</b>", "text stays text (the page escapes it)"
    assert "application/javascript, image/png, text/html, text/latex" in out.outputs[-1].text


def test_a_hostile_answer_is_kept_word_for_word_as_text():
    written = "My answer <script>steal()</script> with ``` fences ````"
    (cell,) = inert(new_markdown_cell(written))
    assert written in cell.source
    assert markdown_hazards(cell.source) == []
    assert "shows this answer as plain text: it contained HTML" in cell.source


def test_raw_cells_and_attachments_do_not_reach_the_page():
    raw = new_raw_cell("<script>x</script>", metadata={"raw_mimetype": "text/html"})
    md = new_markdown_cell("![a](attachment:a.svg)", attachments={"a.svg": {"image/svg+xml": "<svg onload=x>"}})
    md.metadata["tags"] = ['ok-tag', 'x" onmouseover="alert(1)']
    raw_out, md_out = inert(raw, md)
    assert raw_out.cell_type == "markdown" and markdown_hazards(raw_out.source) == []
    assert "attachments" not in md_out and md_out.metadata["tags"] == ["ok-tag"]


def test_a_forged_cell_id_does_not_reach_the_page():
    nb = new_notebook(cells=[new_markdown_cell("plain text")])
    nb.cells[0]["id"] = 'x"><script>alert(1)</script>'  # as a hand-edited file would hold it
    nb, _ = InertStudentContent().preprocess(nb, {})
    nbformat.validate(nb)
    assert nb.cells[0].id.isalnum()
