"""`make report`: what the class got wrong, in one page for the instructor.

Trusted code. It reads what grading left (nothing is run again) and writes report/:

    gradebook (course_config.GRADEBOOK_URL)   scores of every grade cell, what is pending
    autograded/<student>/<assignment>/         each hidden check's verdict and the rule it found
                                               broken (pipeline.rule_line, hidden-check cells only)
    .grading/report.json, .grading/flags/      grading seconds, time limits, flags for a TA
        |
    report/index.html    per assignment: the score distribution; per hidden check its pass rate,
                         the points the class lost, a discrimination index, and the failures
                         grouped by rule (count, students, the shortest failing example); grading
                         time; what waits for a TA; pairs of submissions unusually alike
    report/*.png         the figures (also inside the page, as data: URIs)
    report/checks.csv    one row per check and rule; report/similarity.csv one row per pair

Every text a student chose (ids, code, messages that quote it) is escaped; the page carries the
feedback pages' Content-Security-Policy, so nothing in it can run. CSV cells are formula-safe.
"""
import base64
import csv
import io
import json
import logging
import statistics
import sys
from collections import defaultdict
from dataclasses import dataclass, field
from html import escape
from pathlib import Path

import nbformat
import numpy as np

import course_config

from .checks import REGISTRY
from .checks.rules import sentence
from .feedback import FLAGS, load_reports
from .pipeline import RULE_LINE, hidden_check_name
from .safe_text import csv_cell, one_line

log = logging.getLogger("attention_surgeon.report")
ROOT = course_config.COURSE_ROOT
OUT = ROOT / "report"
CSP = ("default-src 'none'; style-src 'unsafe-inline'; img-src data:; font-src data:; base-uri 'none'; "
       "form-action 'none'")
EXAMPLE_LINES = 8
PAIRS_SHOWN = 10  # pairs shown side by side (every pair is in the table and similarity.csv)


@dataclass
class Failure:
    student: str
    rule: str
    message: str


@dataclass
class CheckStats:
    name: str
    notebook: str
    points: float
    scores: dict = field(default_factory=dict)  # student -> points (decided checks only)
    failures: list = field(default_factory=list)
    pending: list = field(default_factory=list)  # students

    @property
    def passed(self):
        return sum(1 for s in self.scores.values() if s >= self.points)

    @property
    def pass_rate(self):
        return self.passed / len(self.scores) if self.scores else None

    @property
    def points_lost(self):
        return sum(self.points - s for s in self.scores.values())

    def rules(self):
        """[(rule, count, students, shortest example)], most broken first."""
        groups = defaultdict(list)
        for failure in self.failures:
            groups[failure.rule].append(failure)
        rows = []
        for rule, failures in groups.items():
            example = min(failures, key=lambda f: (not f.message, len(f.message), f.student))
            rows.append((rule, len(failures), sorted(f.student for f in failures), example))
        return sorted(rows, key=lambda r: (-r[1], r[0]))


def source_hidden_cells(assignment):
    """{notebook: {grade id: check name}} of the hidden-check cells in source/."""
    cells = {}
    for path in sorted((ROOT / "source" / assignment).glob("*.ipynb")):
        nb = nbformat.read(path, as_version=4)
        cells[path.stem] = {c.metadata["nbgrader"]["grade_id"]: name for c in nb.cells if (name := hidden_check_name(c))}
    return cells


def verdicts_in(path, hidden):
    """{grade id: (status, rule, message)} of the hidden-check cells (by grade id, `hidden`) of one
    autograded notebook, as TrustedChecks wrote their outputs."""
    found = {}
    try:
        nb = nbformat.read(path, as_version=4)
    except (OSError, ValueError):
        return found
    for cell in nb.cells:
        grade_id = cell.get("metadata", {}).get("nbgrader", {}).get("grade_id")
        if grade_id not in hidden or cell.cell_type != "code":
            continue
        errors = [o for o in cell.get("outputs", []) if o.get("output_type") == "error"
                  and o.get("ename") == "HiddenCheckFailed"]
        if errors:
            lines = list(errors[0].get("traceback", []))
            match = next((RULE_LINE.match(line) for line in lines[1:2] if RULE_LINE.match(line)), None)
            message = "\n".join(lines[2:] if match else lines[1:])
            found[grade_id] = ("failed", match.group("rule") if match else "contract", message)
        else:
            text = "".join(o.get("text", "") for o in cell.get("outputs", []) if o.get("output_type") == "stream")
            found[grade_id] = ("pending" if text.startswith("…") else "passed", "", "")
    return found


def pearson(xs, ys):
    """The correlation of xs and ys, or None when either does not vary (or fewer than 3 pairs)."""
    if len(xs) < 3 or np.std(xs) == 0 or np.std(ys) == 0:
        return None
    return float(np.corrcoef(xs, ys)[0, 1])


@dataclass
class AssignmentReport:
    name: str
    max_score: float = 0.0
    totals: dict = field(default_factory=dict)  # student -> score
    checks: dict = field(default_factory=dict)  # check name -> CheckStats
    queue: dict = field(default_factory=lambda: defaultdict(list))  # kind -> [(student, grade, points)]
    seconds: dict = field(default_factory=dict)  # student -> grading seconds
    limited: list = field(default_factory=list)  # (student, note) that hit a limit
    unfinished: list = field(default_factory=list)
    similar: list = field(default_factory=list)  # Pair

    def discrimination(self, check):
        """The correlation of the check's score with the rest of the total (the item-rest correlation)."""
        students = sorted(check.scores)
        return pearson([check.scores[s] for s in students], [self.totals[s] - check.scores[s] for s in students])


def flagged_checks(student):
    """{(notebook, check name)} flagged for a TA in .grading/flags/<student>.txt ("<notebook>: <check>: why")."""
    path = FLAGS / f"{student}.txt"
    lines = path.read_text(errors="replace").splitlines() if path.exists() else []
    return {tuple(line.split(": ", 2)[:2]) for line in lines if line.count(": ") >= 2}


def read_assignment(gradebook, assignment, reports):
    """Everything the page says about one assignment, from the gradebook and what grading left."""
    report = AssignmentReport(assignment)
    try:
        record = gradebook.find_assignment(assignment)
    except Exception:  # noqa: BLE001 - an assignment nobody was graded in yet
        return report
    report.max_score = float(record.max_score)
    hidden = source_hidden_cells(assignment)
    for notebook, cells in hidden.items():
        for grade_id, name in cells.items():
            check = REGISTRY.get(name)
            report.checks[name] = CheckStats(name, notebook, check.points if check else 0.0)
    for submission in record.submissions:
        student = submission.student.id
        report.totals[student] = float(submission.score)
        flags = flagged_checks(student)
        for notebook in submission.notebooks:
            cells = hidden.get(notebook.name, {})
            verdicts = verdicts_in(ROOT / "autograded" / student / assignment / f"{notebook.name}.ipynb", cells)
            for grade in notebook.grades:
                pending = grade.needs_manual_grade and grade.manual_score is None
                name = cells.get(grade.name)
                if pending:
                    kind = ("GPU checks (no CUDA on the grading host)" if name in REGISTRY and REGISTRY[name].gpu
                            else "flagged for a TA (the code could have switched off a defence)"
                            if (notebook.name, name) in flags else "written answers and other cells graded by hand")
                    report.queue[kind].append((student, f"{notebook.name}: {grade.name}", float(grade.max_score)))
                if name is None or name not in report.checks:
                    continue
                stats = report.checks[name]
                stats.points = float(grade.max_score)  # what the gradebook holds it worth
                if pending:
                    stats.pending.append(student)
                    continue
                stats.scores[student] = float(grade.score)
                status, rule, message = verdicts.get(grade.name, ("", "", ""))
                if grade.manual_score is not None and grade.score < grade.max_score:
                    stats.failures.append(Failure(student, "scored-by-a-ta", ""))
                elif status == "failed":
                    stats.failures.append(Failure(student, rule or "contract", message))
                elif grade.score < grade.max_score:  # no verdict in its cell: grading never reached it
                    stats.failures.append(Failure(student, "not-decided", ""))
    for entry in reports:
        if entry.get("assignment", course_config.ASSIGNMENT) != assignment or entry["student"] not in report.totals:
            continue
        report.seconds[entry["student"]] = float(entry.get("seconds") or 0.0)
        if entry.get("out_of_time"):
            report.limited.append((entry["student"], f"ran out of the submission's {course_config.SUBMISSION_TIMEOUT_S} s "
                                                     f"after {float(entry.get('seconds') or 0):.0f} s of grading"))
        if not entry.get("ok", True):
            report.unfinished.append(entry["student"])
    return report


# ----------------------------------------------------------------------------- similarity


@dataclass
class Pair:
    function: str
    notebook: str
    students: tuple
    similarity: tuple
    codes: tuple
    slices: tuple


def solution_cells(assignment):
    """{(notebook, grade id): the release notebook's given code} of the code cells students fill in."""
    cells = {}
    for path in sorted((ROOT / "release" / assignment).glob("*.ipynb")):
        nb = nbformat.read(path, as_version=4)
        for cell in nb.cells:
            info = cell.get("metadata", {}).get("nbgrader", {})
            if cell.cell_type == "code" and info.get("solution") and info.get("grade_id"):
                cells[(path.stem, info["grade_id"])] = cell.source
    return cells


def students_code(assignment, students, notebook, grade_id):
    """{student: the code of their cell `grade_id`} from their autograded notebook."""
    found = {}
    for student in students:
        path = ROOT / "autograded" / student / assignment / f"{notebook}.ipynb"
        try:
            nb = nbformat.read(path, as_version=4)
        except (OSError, ValueError):
            continue
        for cell in nb.cells:
            if cell.get("metadata", {}).get("nbgrader", {}).get("grade_id") == grade_id and cell.cell_type == "code":
                found[student] = cell.source
    return found


def fingerprint(name, code, boilerplate=()):
    from copydetect import CodeFingerprint

    # copydetect's defaults: noise threshold 25 tokens, guarantee threshold 30 (window 6).
    return CodeFingerprint(f"{name}.py", 25, 6, boilerplate=list(boilerplate), fp=io.StringIO(code),
                           language="python")


def similar_pairs(assignment, students):
    """Pairs of students whose code of one graded function is unusually alike (course_config's
    SIMILARITY_THRESHOLD and SIMILARITY_MIN_TOKENS), the release's given code removed first."""
    pairs = []
    for (notebook, grade_id), given in solution_cells(assignment).items():
        pairs += similar_in(students_code(assignment, students, notebook, grade_id), given, grade_id, notebook)
    return sorted(pairs, key=lambda p: (-max(p.similarity), p.function, p.students))


def similar_in(codes, given, function="", notebook=""):
    """[Pair] of the students in `codes` ({student: code of one function}) whose code is unusually
    alike, once `given` (what the release notebook gave everyone) is removed from both."""
    from copydetect import compare_files

    boilerplate = fingerprint("given", given).hashes
    prints = {s: fingerprint(s, code, boilerplate) for s, code in codes.items()}
    prints = {s: p for s, p in prints.items() if p.token_coverage >= course_config.SIMILARITY_MIN_TOKENS}
    names, pairs = sorted(prints), []
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            overlap, similarity, slices = compare_files(prints[a], prints[b])
            if overlap >= course_config.SIMILARITY_MIN_TOKENS and max(similarity) >= course_config.SIMILARITY_THRESHOLD:
                pairs.append(Pair(function, notebook, (a, b), tuple(float(x) for x in similarity),
                                  (prints[a].raw_code, prints[b].raw_code),
                                  tuple(np.asarray(s).astype(int).tolist() for s in slices)))
    return pairs


def marked(code, slices):
    """`code`, escaped, with the shared parts (copydetect's slices: [starts], [ends]) in <mark>."""
    starts, ends = (list(slices[0]), list(slices[1])) if len(slices) == 2 else ([], [])
    out, position = [], 0
    for start, end in sorted(zip(starts, ends)):
        start, end = max(start, position), max(end, position)
        out.append(escape(code[position:start]))
        out.append(f"<mark>{escape(code[start:end])}</mark>")
        position = end
    out.append(escape(code[position:]))
    return "".join(out)


# ----------------------------------------------------------------------------- figures


def figure_png(draw):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, ax = plt.subplots(figsize=(6, 2.6), dpi=100)
    draw(ax)
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    plt.close(figure)
    return buffer.getvalue()


def score_bins(report):
    """The histogram's bin edges: ten equal bins from 0 to the assignment's maximum (or the highest total,
    with extra credit)."""
    top = max(report.max_score, max(report.totals.values(), default=0.0)) or 1.0
    return np.linspace(0.0, top, 11)


def score_histogram(report):
    counts, edges = np.histogram(list(report.totals.values()), bins=score_bins(report))
    return [int(c) for c in counts], [float(e) for e in edges]


def draw_scores(report):
    def draw(ax):
        counts, edges = score_histogram(report)
        ax.bar(edges[:-1], counts, width=np.diff(edges), align="edge", edgecolor="black", color="#7aa6d6")
        ax.set_xlabel(f"total score (of {report.max_score:g})")
        ax.set_ylabel("submissions")
        ax.set_title(f"{report.name}: scores")
    return figure_png(draw)


def draw_seconds(report):
    def draw(ax):
        ax.hist(list(report.seconds.values()), bins=10, edgecolor="black", color="#d6a67a")
        ax.set_xlabel("seconds to grade one submission")
        ax.set_ylabel("submissions")
        ax.set_title(f"{report.name}: grading time")
    return figure_png(draw)


# ----------------------------------------------------------------------------- the page


def fmt(value, pattern="{:.2f}", missing="n/a"):
    return missing if value is None else pattern.format(value)


def students_list(students, limit=12):
    shown = ", ".join(escape(s) for s in students[:limit])
    return shown + (f" and {len(students) - limit} more" if len(students) > limit else "")


def section(report, figures):
    totals = sorted(report.totals.values())
    html = [f"<h2>{escape(report.name)}</h2>"]
    if not totals:
        return html + ["<p>No graded submission yet.</p>"]
    q1, median, q3 = (float(np.percentile(totals, q)) for q in (25, 50, 75))
    html.append(
        f"<p>{len(totals)} submissions, out of {report.max_score:g} points: mean {statistics.fmean(totals):.1f}, "
        f"median {median:.1f}, quartiles {q1:.1f} and {q3:.1f}; {sum(t == 0 for t in totals)} scored 0, "
        f"{sum(t >= report.max_score for t in totals)} full marks, {len(report.unfinished)} not finished "
        f"grading{': ' + students_list(report.unfinished) if report.unfinished else ''}.</p>")
    html.append(f'<img alt="score histogram" src="data:image/png;base64,{figures["scores"]}">')
    html.append("<h3>What the class got wrong: hidden checks, most points lost first</h3>"
                "<p>Discrimination is the correlation of a check's score with the rest of the total: near 0 or "
                "below, the check does not separate strong from weak submissions (look at it: an unfair or "
                "broken check looks like this); n/a when everyone scored the same.</p>")
    html.append("<table><tr><th>check</th><th>notebook</th><th>points</th><th>passed</th><th>points lost</th>"
                "<th>discrimination</th><th>rules broken (students)</th></tr>")
    checks = sorted(report.checks.values(), key=lambda c: (-c.points_lost, c.name))
    for check in checks:
        rules = "".join(
            f"<details><summary>{count} &times; {escape(sentence(rule))} <code>[{escape(rule)}]</code></summary>"
            f"<p>{students_list(students)}</p><p>smallest example ({escape(example.student)}):</p>"
            f"<pre>{escape(chr(10).join(example.message.splitlines()[:EXAMPLE_LINES]))}</pre></details>"
            for rule, count, students, example in check.rules()) or "none"
        rate = fmt(check.pass_rate, "{:.0%}")
        html.append(f"<tr><td><code>{escape(check.name)}</code></td><td>{escape(check.notebook)}</td>"
                    f"<td>{check.points:g}</td><td>{check.passed}/{len(check.scores)} ({rate})"
                    f"{f' + {len(check.pending)} pending' if check.pending else ''}</td>"
                    f"<td>{check.points_lost:g}</td><td>{fmt(report.discrimination(check))}</td><td>{rules}</td></tr>")
    html.append("</table>")
    html.append("<h3>Grading time</h3>")
    html.append(f'<img alt="grading time histogram" src="data:image/png;base64,{figures["seconds"]}">')
    html.append("<p>Submissions that hit a time limit: " + (
        "none." if not report.limited else "</p><ul>" + "".join(
            f"<li>{escape(s)}: {escape(note)}</li>" for s, note in report.limited) + "</ul><p>") + "</p>")
    html.append("<h3>What waits for a TA</h3>")
    if not report.queue:
        html.append("<p>Nothing: every grade is decided.</p>")
    else:
        html.append("<table><tr><th>kind</th><th>grades</th><th>pending points</th><th>students</th></tr>")
        for kind, items in sorted(report.queue.items()):
            students = sorted({s for s, _, _ in items})
            html.append(f"<tr><td>{escape(kind)}</td><td>{len(items)}</td><td>{sum(p for _, _, p in items):g}</td>"
                        f"<td>{students_list(students, 30)}</td></tr>")
        html.append("</table>")
    html.append("<h3>Submissions that look alike</h3><p>For each graded function, pairs whose code is unusually "
                "alike after the release notebook's given code is removed and names, comments and whitespace "
                f"are ignored (copydetect; at least {course_config.SIMILARITY_THRESHOLD:.0%} of either one's "
                f"fingerprinted code shared, and at least {course_config.SIMILARITY_MIN_TOKENS} tokens). "
                "<strong>Similarity is a reason for a person to look, not a verdict</strong>: short functions "
                "written to one contract can look alike in honest hands.</p>")
    if not report.similar:
        html.append("<p>No pair above the threshold.</p>")
    else:
        html.append("<table><tr><th>function</th><th>notebook</th><th>students</th><th>shared</th></tr>" + "".join(
            f"<tr><td><code>{escape(p.function)}</code></td><td>{escape(p.notebook)}</td><td>{escape(p.students[0])} "
            f"and {escape(p.students[1])}</td><td>{p.similarity[0]:.0%} and {p.similarity[1]:.0%}</td></tr>"
            for p in report.similar) + "</table>")
        if len(report.similar) > PAIRS_SHOWN:
            html.append(f"<p>Side by side below: the {PAIRS_SHOWN} most alike (all of them are in "
                        f"similarity.csv).</p>")
    for pair in report.similar[:PAIRS_SHOWN]:
        a, b = pair.students
        html.append(f"<h4><code>{escape(pair.function)}</code> ({escape(pair.notebook)}): {escape(a)} "
                    f"({pair.similarity[0]:.0%} shared) and {escape(b)} ({pair.similarity[1]:.0%} shared)</h4>"
                    f'<div class="pair"><pre>{marked(pair.codes[0], pair.slices[0])}</pre>'
                    f"<pre>{marked(pair.codes[1], pair.slices[1])}</pre></div>")
    return html


def page(reports, figures):
    body = []
    for report in reports:
        body += section(report, figures[report.name])
    return ("<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\">"
            f"<meta http-equiv=\"Content-Security-Policy\" content=\"{CSP}\">"
            "<title>Attention Surgeon: the instructor's report</title><style>"
            "body{font-family:sans-serif;max-width:1200px;margin:1em auto;padding:0 1em}"
            "table{border-collapse:collapse;width:100%}td,th{border:1px solid #bbb;padding:4px;vertical-align:top;"
            "text-align:left}pre{background:#f6f6f6;padding:6px;overflow-x:auto;white-space:pre-wrap}"
            "mark{background:#ffd86b}.pair{display:grid;grid-template-columns:1fr 1fr;gap:8px}"
            "</style></head><body><h1>The instructor's report</h1>"
            "<p>From the gradebook and what the last <code>make autograde</code> left; <code>make report</code> "
            "writes it again. The same tables are in <code>checks.csv</code> and <code>similarity.csv</code>.</p>"
            + "\n".join(body) + "</body></html>\n")


def number(value):
    """A number for a CSV cell (a float, which csv_cell leaves as it is: a negative one stays a number),
    or an empty cell."""
    return "" if value is None else round(float(value), 3)


def write_csv(path, header, rows):
    with open(path, "w", newline="") as out:
        writer = csv.writer(out)
        writer.writerow(header)
        for row in rows:
            writer.writerow([csv_cell(v) for v in row])


def write_report(out=OUT):
    """Write report/ for every assignment of the course; returns the page's path."""
    from nbgrader.api import Gradebook

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    reports, figures = [], {}
    saved = load_reports()
    with Gradebook(course_config.c.CourseDirectory.db_url) as gradebook:
        for assignment in course_config.ASSIGNMENTS:
            report = read_assignment(gradebook, assignment, saved)
            report.similar = similar_pairs(assignment, sorted(report.totals))
            reports.append(report)
            figures[assignment] = {}
            for kind, draw in (("scores", draw_scores), ("seconds", draw_seconds)):
                png = draw(report) if report.totals else b""
                if png:
                    (out / f"{assignment}-{kind}.png").write_bytes(png)
                figures[assignment][kind] = base64.b64encode(png).decode()
    (out / "index.html").write_text(page(reports, figures))
    write_csv(out / "checks.csv", ["assignment", "check", "notebook", "points", "submissions", "passed", "pass_rate",
                                   "points_lost", "discrimination", "rule", "rule_sentence", "failures", "students",
                                   "example"],
              [(r.name, c.name, c.notebook, c.points, len(c.scores), c.passed, number(c.pass_rate),
                c.points_lost, number(r.discrimination(c)), rule, sentence(rule), count, " ".join(students),
                "\n".join(example.message.splitlines()[:EXAMPLE_LINES]))
               for r in reports for c in sorted(r.checks.values(), key=lambda c: (-c.points_lost, c.name))
               for rule, count, students, example in (c.rules() or [("", 0, [], Failure("", "", ""))])])
    write_csv(out / "similarity.csv", ["assignment", "notebook", "function", "student_a", "student_b",
                                       "shared_of_a", "shared_of_b"],
              [(r.name, p.notebook, p.function, p.students[0], p.students[1], round(p.similarity[0], 3),
                round(p.similarity[1], 3)) for r in reports for p in r.similar])
    (out / "report.json").write_text(json.dumps({
        r.name: {"totals": r.totals, "histogram": score_histogram(r) if r.totals else None,
                 "checks": {c.name: {"rules": {rule: count for rule, count, _, _ in c.rules()},
                                     "passed": c.passed, "decided": len(c.scores), "pending": len(c.pending),
                                     "discrimination": r.discrimination(c)} for c in r.checks.values()},
                 "queue": {kind: sorted({s for s, _, _ in items}) for kind, items in r.queue.items()},
                 "similar": [[p.function, *p.students] for p in r.similar]}
        for r in reports}, indent=1))
    return out / "index.html"


def main():
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    path = write_report()
    print(f"wrote {one_line(str(path.relative_to(ROOT)))} (and checks.csv, similarity.csv, the figures beside it)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
