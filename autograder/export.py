"""grades.csv with what is still pending: nbgrader's CSV export plus two columns.

nbgrader's CsvExportPlugin writes max_score 124 for a student whose GPU checks (no CUDA on the
grader) and written answers (no TA yet) are undecided, and nothing says so: a TA reads the
missing points as zeros. This plugin writes the same columns, then

    pending_points   the points of grades nobody has decided yet
    pending          which ones: grade ids, ';'-separated

It is nbgrader's own export (`nbgrader export`, `make export`), selected in course_config.py
with ExportApp.plugin_class; `make autograde` runs the same plugin in its own process
(`write_grades_csv`). Values go through the csv module, so a name with
a comma or a quote stays in its column, and through `csv_cell`, so a student id that a spreadsheet
would run as a formula (`=HYPERLINK(...)`) is shown as text.
"""
import csv
import logging

from nbgrader.api import Gradebook, MissingEntry
from nbgrader.plugins import CsvExportPlugin

import course_config

from .safe_text import csv_cell

COLUMNS = ["assignment", "duedate", "timestamp", "student_id", "last_name", "first_name", "email", "raw_score",
           "late_submission_penalty", "score", "max_score", "pending_points", "pending"]


def pending_grades(submission):
    """[(grade id, points)] of the grades of this submission that nobody has decided yet."""
    return [(grade.name, grade.max_score or 0.0)
            for notebook in submission.notebooks for grade in notebook.grades
            if grade.needs_manual_grade and grade.manual_score is None and grade.auto_score is None]


class CsvWithPendingPlugin(CsvExportPlugin):
    """nbgrader's CSV export, with pending_points and pending columns."""

    def export(self, gradebook):
        destination = self.to or "grades.csv"
        self.log.info("Exporting grades (with pending points) to %s", destination)
        with open(destination, "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=COLUMNS, lineterminator="\n")
            writer.writeheader()
            for row in self.rows(gradebook):
                writer.writerow({key: "" if value is None else csv_cell(value) for key, value in row.items()})

    def rows(self, gradebook):
        for assignment in gradebook.assignments:
            if self.assignment and assignment.name not in self.assignment:
                continue
            for student in gradebook.students:
                if self.student and student.id not in self.student:
                    continue
                row = {"assignment": assignment.name, "duedate": assignment.duedate, "student_id": student.id,
                       "last_name": student.last_name, "first_name": student.first_name, "email": student.email,
                       "max_score": assignment.max_score}
                try:
                    submission = gradebook.find_submission(assignment.name, student.id)
                except MissingEntry:  # nothing submitted: zero, as nbgrader's own export says
                    row.update(timestamp="", raw_score=0.0, late_submission_penalty=0.0, score=0.0,
                               pending_points=0.0, pending="")
                else:
                    penalty = submission.late_submission_penalty
                    pending = pending_grades(submission)
                    row.update(timestamp=submission.timestamp, raw_score=submission.score,
                               late_submission_penalty=penalty, score=max(0.0, submission.score - penalty),
                               pending_points=sum(points for _, points in pending),
                               pending=";".join(name for name, _ in pending))
                yield row


def write_grades_csv(path=None):
    """grades.csv (or `path`) from the course's gradebook, as `nbgrader export --to=grades.csv` writes it,
    without starting another process."""
    course = course_config.c.CourseDirectory
    quiet = logging.getLogger("attention_surgeon.export.nbgrader")
    quiet.propagate = False  # its one line, "Exporting grades", is the batch's own summary's
    with Gradebook(course.db_url, course.course_id) as gradebook:
        CsvWithPendingPlugin(to=str(path or course_config.COURSE_ROOT / "grades.csv"), log=quiet).export(gradebook)
