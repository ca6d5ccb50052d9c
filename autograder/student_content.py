"""Whatever a student wrote is data, never markup or code, once it leaves the sandbox.

Trusted code. A graded notebook is rendered to HTML where a TA's browser opens it:
formgrader's submission view (with the TA's logged-in session, which can write the
gradebook and the course folder) and the feedback files. nbgrader's templates put
outputs and markdown into the page as they are, so a student's
`display(HTML("<script>..."))` or an `<img onerror=...>` in a written answer would run
there. `InertStudentContent` makes every notebook inert before it is written to
autograded/ and again before feedback is made from it:

* outputs keep only inert kinds: text, errors, PNG and JPEG images (checked to be
  base64). HTML, JavaScript, SVG, LaTeX, Markdown and widget outputs become one line of
  text that says what was removed; output metadata (image sizes go into attributes) is
  dropped;
* a markdown cell that would render to anything but plain formatting (raw HTML, a link
  that is not http(s) or mailto, an image, a MathJax macro that makes links, styles or
  loads code) is shown as its source text in a code block, so a TA still reads every
  word, and a note says why;
* attachments are dropped, and cell tags that are not plain names (they become CSS
  classes in the page) are dropped.
"""
import base64
import binascii
import re
import uuid
from urllib.parse import urlsplit

from nbconvert.filters.markdown_mistune import MarkdownWithMath
from nbformat.v4 import new_output
from nbgrader.preprocessors import NbGraderPreprocessor
from traitlets import List, Unicode

# Output kinds a browser shows without running anything (stream and error outputs are text).
INERT_MIME_TYPES = ("text/plain", "image/png", "image/jpeg")
BASE64_IMAGE_TYPES = ("image/png", "image/jpeg")
# Markdown (mistune's syntax tree, as nbconvert parses it) that renders to plain formatting.
INERT_MARKDOWN_TOKENS = {
    "text", "paragraph", "heading", "blank_line", "list", "list_item", "block_text", "emphasis", "strong",
    "codespan", "block_code", "block_quote", "thematic_break", "linebreak", "softbreak", "inline_math",
    "block_math", "multiline_math", "strikethrough", "table", "table_head", "table_body", "table_row",
    "table_cell", "task_list_item", "def_list", "def_list_head", "def_list_item", "link",
}
SAFE_LINK_SCHEMES = ("", "http", "https", "mailto")
# MathJax macros that make a link, set HTML attributes or styles, or load an extension.
ACTIVE_MATHJAX = re.compile(r"\\(href|class|cssId|style|unicode|require|html|data|attr|mmlToken)\b")
TAG_NAME = re.compile(r"^[A-Za-z0-9_\-]{1,64}$")  # also nbformat's rule for cell ids


def removed_output_note(kinds):
    return (f"[the grader removed output of kind {', '.join(sorted(kinds))}: it could run in a reader's "
            f"browser. Print text or draw a matplotlib figure instead.]\n")


def is_base64(text):
    if not isinstance(text, str):
        return False
    try:
        base64.b64decode("".join(text.split()), validate=True)
    except (binascii.Error, ValueError):
        return False
    return True


def inert_output(output, allowed=INERT_MIME_TYPES):
    """The output with only its inert parts (of the `allowed` kinds), and the kinds removed:
    (output, or None when nothing inert is left of it; [kind, ...])."""
    kind = output.get("output_type")
    if kind == "stream":
        text = output.get("text", "")
        name = output.get("name") if output.get("name") in ("stdout", "stderr") else "stdout"
        return new_output("stream", name=name, text=text if isinstance(text, str) else "".join(map(str, text))), []
    if kind == "error":
        traceback = output.get("traceback", [])
        return new_output("error", ename=str(output.get("ename", "")), evalue=str(output.get("evalue", "")),
                          traceback=[str(line) for line in traceback] if isinstance(traceback, list) else []), []
    if kind not in ("display_data", "execute_result"):
        return None, [f"{kind!s} output"]
    data = output.get("data", {})
    kept, removed = {}, []
    for mime, value in data.items():
        if mime not in allowed:
            removed.append(mime)
        elif mime in BASE64_IMAGE_TYPES and is_base64(value):
            kept[mime] = value
        elif mime == "text/plain" and isinstance(value, (str, list)):
            kept[mime] = value if isinstance(value, str) else "".join(map(str, value))
        else:
            removed.append(mime)
    if not kept:
        return None, removed
    if kind == "execute_result":
        count = output.get("execution_count")
        return new_output(kind, data=kept, execution_count=count if isinstance(count, int) else None), removed
    return new_output(kind, data=kept), removed


def _unsafe_tokens(tokens):
    """Why this markdown syntax tree is not plain formatting, one reason per offending token."""
    reasons = []
    for token in tokens:
        kind = token.get("type")
        if kind in ("inline_html", "block_html"):
            reasons.append("HTML")
        elif kind == "image":
            reasons.append("an image")
        elif kind not in INERT_MARKDOWN_TOKENS:
            reasons.append(f"markdown of kind {kind!r}")
        elif kind == "link":
            url = str(token.get("attrs", {}).get("url", ""))
            # Browsers drop tabs and newlines inside a scheme ("java\tscript:"); so do we before looking.
            scheme = urlsplit(re.sub(r"[\x00-\x20]", "", url)).scheme.lower()
            if scheme not in SAFE_LINK_SCHEMES:
                reasons.append(f"a {scheme}: link")
        reasons += _unsafe_tokens(token.get("children", []))
    return reasons


def markdown_hazards(source):
    """What in this markdown could act in a browser (an empty list: it renders as plain formatting)."""
    tokens, _ = MarkdownWithMath(renderer=None).parse(source)
    reasons = _unsafe_tokens(tokens)
    if ACTIVE_MATHJAX.search(source):
        reasons.append("a MathJax macro that acts in the browser")
    return sorted(set(reasons))


def markdown_as_text(source, reasons):
    """The cell's exact text in a code block (nothing in it renders), with a note saying why."""
    longest = max((len(run) for run in re.findall(r"`+", source)), default=0)
    fence = "`" * max(3, longest + 1)
    return (f"**[The grader shows this answer as plain text: it contained {', '.join(reasons)}, which could "
            f"run in a reader's browser.]**\n\n{fence}text\n{source}\n{fence}\n")


class InertStudentContent(NbGraderPreprocessor):
    """Make every output and markdown cell inert (see the module docstring)."""

    inert_mime_types = List(Unicode(), default_value=list(INERT_MIME_TYPES),
                            help="Output kinds kept as they are; every other kind is replaced by a note.").tag(config=True)

    def preprocess(self, nb, resources):
        for cell in nb.cells:
            cell.pop("attachments", None)
            if "id" in cell and not (isinstance(cell.id, str) and TAG_NAME.match(cell.id)):
                cell.id = uuid.uuid4().hex[:12]  # the page puts ids into attributes
            tags = cell.metadata.get("tags")
            if tags is not None:
                cell.metadata["tags"] = [t for t in tags if isinstance(t, str) and TAG_NAME.match(t)] \
                    if isinstance(tags, list) else []
            if cell.cell_type == "markdown":
                reasons = markdown_hazards(cell.source)
                if reasons:
                    self.log.warning("markdown cell shown as text: %s", ", ".join(reasons))
                    cell.source = markdown_as_text(cell.source, reasons)
            elif cell.cell_type == "code":
                cell.outputs = self._inert_outputs(cell.get("outputs", []))
            else:  # nbconvert passes raw cells into the page as they are: show them as text
                cell.cell_type, cell.source = "markdown", markdown_as_text(cell.source, ["a raw cell"])
                cell.pop("outputs", None)
                cell.pop("execution_count", None)
        return nb, resources

    def _inert_outputs(self, outputs):
        """Inert outputs; one note at the end names every kind that was removed."""
        kept, removed = [], set()
        for output in outputs:
            output, dropped = inert_output(output, self.inert_mime_types)
            removed.update(dropped)
            if output is not None:
                kept.append(output)
        if removed:
            self.log.warning("output removed from a student cell: %s", ", ".join(sorted(removed)))
            kept.append(new_output("stream", name="stdout", text=removed_output_note(removed)))
        return kept
