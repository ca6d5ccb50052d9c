"""The Attention Surgeon: the one nbgrader configuration and the course policy.

Two ways this file is read:

* nbgrader loads it as a config file: nbgrader_config.py in the course root
  includes it, and every make target runs nbgrader there; a JupyterHub
  formgrader includes it the same way (README.md). Then ``get_config()`` exists.
* the autograder and the tests ``import course_config`` for the policy values
  below. Then ``c`` is a plain traitlets ``Config`` with the same settings.

Change a limit here, not in the modules that use it.
"""
import os
import sys
from importlib.util import find_spec
from pathlib import Path

# ---------------------------------------------------------------------------
# The course
# ---------------------------------------------------------------------------
COURSE_ROOT = Path(__file__).resolve().parent
# nbgrader names the course's own classes (autograder.pipeline..., autograder.collect...) by module path:
# any nbgrader command that loads this file (formgrader's Collect button too) can import them.
if str(COURSE_ROOT) not in sys.path:
    sys.path.insert(0, str(COURSE_ROOT))
COURSE_ID = "attention-surgeon"
ASSIGNMENT = "attention_surgeon"
# Notebook 4 is extra credit: an nbgrader assignment of its own, so its points only ever add to a
# student's grade (grades.csv has a row per student and assignment) and skipping it costs nothing.
BONUS_ASSIGNMENT = "attention_surgeon_bonus"
ASSIGNMENTS = (ASSIGNMENT, BONUS_ASSIGNMENT)

# ---------------------------------------------------------------------------
# Grading policy (the trusted autograder reads these)
# ---------------------------------------------------------------------------
# Each limit can be overridden by an environment variable of the same name
# with the prefix ATTENTION_SURGEON_ (the test suite uses short time limits).


def _policy(name, default, choices=None):
    """The value of one policy setting: ATTENTION_SURGEON_<name> when set, else `default`.

    The one reader of every setting below: a value of the wrong kind (or not among `choices`)
    stops with an error that names the environment variable, instead of grading with a guess.
    """
    variable = f"ATTENTION_SURGEON_{name}"
    raw = os.environ.get(variable)
    if raw is None or raw == "":
        return default
    if isinstance(default, bool):
        if raw.lower() not in ("0", "1", "true", "false", "yes", "no"):
            raise ValueError(f"{variable}={raw!r}: expected yes or no (1/0, true/false)")
        return raw.lower() in ("1", "true", "yes")
    try:
        value = type(default)(raw)
    except ValueError:
        raise ValueError(f"{variable}={raw!r}: expected {type(default).__name__}, like {default!r}") from None
    if choices is not None and value not in choices:
        raise ValueError(f"{variable}={raw!r}: expected one of {', '.join(map(str, choices))}")
    if isinstance(value, int) and value < 0:
        raise ValueError(f"{variable}={raw!r}: expected a number of 0 or more")
    return value


# Wall-clock limit for one call of a student's function by a hidden check.
# A plain Python-loop attention on the largest generated input takes well
# under a second; 10 s leaves room for a slow, loaded grading host.
CALL_TIMEOUT_S = _policy("CALL_TIMEOUT_S", 10)
# Wall-clock limit for one call of a Notebook 3 experiment by a hidden check: compare_masking
# trains three tiny models on a short corpus (about 2 s on one core here; 60 s leaves room
# for a plainly written loop on a loaded grading host).
EXPERIMENT_CALL_TIMEOUT_S = _policy("EXPERIMENT_CALL_TIMEOUT_S", 60)
# Wall-clock budget for all the calls of one hidden check together: a function that answers just
# under CALL_TIMEOUT_S every time stops being called here. The whole hidden suite of a notebook takes
# seconds for a plain loop implementation; Notebook 3's experiments take a few seconds a call.
CHECK_TIME_BUDGET_S = _policy("CHECK_TIME_BUDGET_S", 120)
# Wall-clock limit for loading a student's notebook code into the worker
# (importing torch and running their cells once, each cell at most CELL_TIMEOUT_S).
WORKER_START_TIMEOUT_S = _policy("WORKER_START_TIMEOUT_S", 120)
# Wall-clock limit for one executed notebook cell in the student's kernel.
CELL_TIMEOUT_S = _policy("CELL_TIMEOUT_S", 120)
# Memory cap (address space) for every process that runs student code.
# torch reserves address space on import (3.8 GB measured for a CUDA build of torch); 6 GiB leaves room
# for the notebooks while stopping a memory hog long before it hurts the host.
MEMORY_LIMIT_MB = _policy("MEMORY_LIMIT_MB", 6144)
# Where a sandbox reaches a GPU, its address-space cap is MEMORY_LIMIT_MB plus this: a CUDA context
# reserves address space it never fills. Measured on an H200 host (torch 2.11, CUDA 13.0): 3.8 GB of
# address space after `import torch`, 16.6 GB once CUDA starts, 17.9 GB after the first tensor, of which
# 0.66 GB resident; under an address-space cap of 6144 MiB CUDA does not start ("out of memory"), under
# 65536 MiB, or under RLIMIT_DATA = 6144 MiB alone, it does. There RLIMIT_DATA keeps MEMORY_LIMIT_MB
# (private memory), and a memory cgroup caps what the sandbox holds in RAM at MEMORY_LIMIT_MB where the
# grader may make one (root; the preflight says which holds). GPU memory itself is not capped.
CUDA_ADDRESS_SPACE_MB = _policy("CUDA_ADDRESS_SPACE_MB", 65536)
# Size of every writable place inside a sandbox: its /tmp, and the kernel's copy of its
# assignment folder (its cwd and HOME). Each is a tmpfs, which lives in the host's RAM and which
# neither the address-space cap nor the file-size cap counts (a GPU sandbox's memory cgroup does),
# so each has this cap of its own.
# The notebooks write a few MB (matplotlib's cache, a corpus); 256 MiB leaves room to spare.
SANDBOX_WRITABLE_MB = _policy("SANDBOX_WRITABLE_MB", 256)
# Process cap for the sandbox that runs student code (threads count too:
# torch starts one per core).
MAX_PROCESSES = _policy("MAX_PROCESSES", 256)
# What student code may print into a notebook (per cell) and into feedback: past either, the rest of
# the cell's output is dropped with a note (autograder/pipeline.py, SandboxedExecute).
OUTPUT_MAX_LINES = _policy("OUTPUT_MAX_LINES", 1000)
OUTPUT_MAX_CHARS = _policy("OUTPUT_MAX_CHARS", 10_000)
# No file a process of a sandbox writes (nor a pipe of its output) grows past this (RLIMIT_FSIZE).
FILE_SIZE_LIMIT_MB = _policy("FILE_SIZE_LIMIT_MB", 64)
# The wire between the grader and a sandboxed worker (autograder/sandboxed_worker/protocol.py): the
# largest reply the grader reads, the most elements of one returned tensor it decodes (its shape is
# always read), the items of a returned tuple, list or dict it looks at, and the characters kept of a
# repr or an error message. Far above any generated input: guards against a flood.
WIRE_MAX_MESSAGE_MB = _policy("WIRE_MAX_MESSAGE_MB", 64)
WIRE_MAX_ARRAY_ELEMENTS = _policy("WIRE_MAX_ARRAY_ELEMENTS", 1 << 22)
WIRE_MAX_ITEMS = _policy("WIRE_MAX_ITEMS", 64)
WIRE_MAX_TEXT_CHARS = _policy("WIRE_MAX_TEXT_CHARS", 2000)
# Wall-clock limit for grading one whole submission (all its notebooks: the kernel's run and the
# hidden checks). Inside, checks and cells stop when it runs out and the student's notes say so;
# outside, the batch stops that student's grading SUBMISSION_GRACE_S later, for good (no second try).
SUBMISSION_TIMEOUT_S = _policy("SUBMISSION_TIMEOUT_S", 900)
SUBMISSION_GRACE_S = _policy("SUBMISSION_GRACE_S", 60)
# What of a submission is staged for grading (and so copied to autograded/ and into the kernel):
# notebooks first, then other files in name order, until either limit would be passed. The
# rest is left out, and the student's grading notes say so. The assignment's own files are
# a few hundred KB; the limits leave room for a student's helper module or data file.
SUBMISSION_MAX_MB = _policy("SUBMISSION_MAX_MB", 50)
SUBMISSION_MAX_FILES = _policy("SUBMISSION_MAX_FILES", 100)
# A notebook is read (to clear its stored outputs, which are never graded) only up to this size;
# a larger one is graded as unanswered, with a note.
NOTEBOOK_READ_MAX_MB = _policy("NOTEBOOK_READ_MAX_MB", 200)
# Reading a notebook a student wrote (JSON parsed, checked, outputs cleared) happens in a child of the
# grader with this much address space beyond the grader's own, and this much wall clock. A notebook
# built to cost more (a list of millions of empty JSON objects costs about 450 bytes of memory per 3
# bytes of file) is graded as unreadable, with a note; the batch goes on. (Measured: a notebook with
# 190 MB of stored output is read within 1 GiB; 10 MB of empty objects reaches 3 GiB in about 30 s.)
NOTEBOOK_PARSE_MEMORY_MB = _policy("NOTEBOOK_PARSE_MEMORY_MB", 3072)
NOTEBOOK_PARSE_TIMEOUT_S = _policy("NOTEBOOK_PARSE_TIMEOUT_S", 120)
# Making one submission's feedback pages (nbgrader's generate_feedback for one student, in the batch's
# feedback process, autograder/feedback.py): past it that process is replaced, the batch goes on, and
# its summary names the submission (`make feedback` makes its pages again).
FEEDBACK_TIMEOUT_S = _policy("FEEDBACK_TIMEOUT_S", 120)
# The Unix group of the course's students (hub/setup.sh makes it). Collection takes an exchange folder
# only when the name it starts with is an account of this group, and that account made the folder
# (autograder/collect.py): a folder named after a classmate, or after no student at all, is refused.
STUDENT_GROUP = _policy("STUDENT_GROUP", "attention-surgeon-students")
# The gradebook: nbgrader's database. Empty: SQLite, gradebook.db in the course folder (one grading
# host). A PostgreSQL server for anything concurrent (nbgrader's FAQ recommends it), as an SQLAlchemy
# URL with the psycopg driver, e.g. postgresql+psycopg://grader@/attention_surgeon?host=/var/run/postgresql
# (README.md, "A PostgreSQL gradebook").
GRADEBOOK_URL = _policy("GRADEBOOK_URL", "")
if GRADEBOOK_URL and not GRADEBOOK_URL.startswith(("sqlite:///", "postgresql+psycopg://")):
    raise ValueError("ATTENTION_SURGEON_GRADEBOOK_URL: expected sqlite:///<path> or postgresql+psycopg://..., "
                     f"not {GRADEBOOK_URL.split(':', 1)[0]}:...")
# Submissions graded at once by `make autograde` on this host: the embedded Dask LocalCluster's worker
# processes, one thread each. (0: one per core.)
GRADING_PARALLELISM = _policy("GRADING_PARALLELISM", 0) or max(1, os.cpu_count() or 1)
# Empty: the batch runs on this host (the embedded LocalCluster). tls://<host>:<port>: the batch goes to
# that Dask scheduler, whose workers are grading hosts with this same course package, venv and
# bubblewrap (README.md, "Grading on more hosts"); GRADING_PARALLELISM then does not apply. Only TLS:
# whoever reaches a Dask scheduler can run code on its workers.
DASK_SCHEDULER = _policy("DASK_SCHEDULER", "")
if DASK_SCHEDULER and not __import__("re").fullmatch(r"tls://[\w.\-\[\]:]+:\d+", DASK_SCHEDULER):
    raise ValueError(f"ATTENTION_SURGEON_DASK_SCHEDULER={DASK_SCHEDULER!r}: expected tls://<host>:<port>, the "
                     f"address a `dask scheduler` with TLS certificates prints (plain tcp:// would let anyone "
                     f"who reaches it run code on the grading hosts)")
# Student code runs under bubblewrap. "required": refuse to grade when the
# sandbox cannot start. "off": explicit opt-out (a trusted test machine only).
SANDBOX = _policy("SANDBOX", "required", choices=("required", "off"))
# The bubblewrap binary (found on PATH unless set).
BWRAP = _policy("BWRAP", "") or __import__("shutil").which("bwrap") or "/usr/bin/bwrap"
# The process cap (MAX_PROCESSES) is a cgroup where the grader may make one (root), and
# RLIMIT_NPROC inside the sandbox's own user namespace where it may not (an ordinary grader
# account, as on JupyterHub). `make autograde` checks that one of them stops a probe; where none
# does it refuses to grade, unless this says a course accepts that (a fork bomb then runs until the
# memory cap or the time limit ends it).
ALLOW_NO_PROCESS_CAP = _policy("ALLOW_NO_PROCESS_CAP", False)
# GPU-tagged checks run where torch sees CUDA ("auto"). Where it does not, or with "off" (e.g. to
# keep a shared GPU free), they are recorded as pending: neither passed nor failed, no score,
# "needs manual grade". `make autograde-gpu` on a CUDA host fills them in later.
GRADE_ON_CUDA = _policy("GRADE_ON_CUDA", "auto", choices=("auto", "off"))

# The instructor's report (`make report`, autograder/report.py): a pair of submissions is listed as
# unusually alike in one graded function when copydetect finds at least this share of either one's
# fingerprinted code in the other (names, comments and whitespace ignored; the release notebook's
# given code removed first), and the shared part is at least SIMILARITY_MIN_TOKENS tokens (a short
# function written to the contract looks alike in everyone's hands). A reason to look, not a verdict.
SIMILARITY_THRESHOLD = _policy("SIMILARITY_THRESHOLD", 0.9)
SIMILARITY_MIN_TOKENS = _policy("SIMILARITY_MIN_TOKENS", 80)

# Hypothesis: every student gets the same examples (see autograder/strategies.py).
HYPOTHESIS_MAX_EXAMPLES = 25
# Generated tensors stay small so a plainly written loop implementation
# passes well inside CALL_TIMEOUT_S: the hidden suite grades correctness.
MAX_BATCH = 3
MAX_HEADS = 3
MAX_SEQ_LEN = 7
MAX_HEAD_DIM = 8

# ---------------------------------------------------------------------------
# nbgrader
# ---------------------------------------------------------------------------
try:
    c = get_config()  # noqa: F821  (defined when nbgrader loads this file)
except NameError:  # imported as a module by autograder/ and tests/
    from traitlets.config import Config

    c = Config()

c.CourseDirectory.course_id = COURSE_ID
c.CourseDirectory.root = str(COURSE_ROOT)
c.CourseDirectory.source_directory = "source"
c.CourseDirectory.release_directory = "release"
c.CourseDirectory.solution_directory = "solutions"
c.CourseDirectory.submitted_directory = "submitted"
c.CourseDirectory.autograded_directory = "autograded"
c.CourseDirectory.feedback_directory = "feedback"
# The gradebook (GRADEBOOK_URL). With SQLite, a long busy timeout: parallel autograde processes share it.
c.CourseDirectory.db_url = GRADEBOOK_URL or f"sqlite:///{COURSE_ROOT / 'gradebook.db'}?timeout=300"
if GRADEBOOK_URL.startswith("sqlite:///") and "timeout=" not in GRADEBOOK_URL:
    c.CourseDirectory.db_url += ("&" if "?" in GRADEBOOK_URL else "?") + "timeout=300"
# Collection is the course's own (autograder/collect.py): no link followed, no special file copied, no
# folder taken in another account's name. `nbgrader collect` and formgrader's Collect button use it.
c.ExchangeFactory.collect = "autograder.collect.SafeExchangeCollect"
# nbgrader's own copies (collect, autograde) skip larger files, with a warning.
c.CourseDirectory.max_file_size = SUBMISSION_MAX_MB * 1024  # KB
c.CourseDirectory.ignore = [".ipynb_checkpoints", "*.pyc", "__pycache__", "feedback", ".hypothesis"]

# Students get their notebooks without outputs; the assignment is the notebooks.
c.ClearSolutions.code_stub = {"python": "# YOUR CODE HERE\nraise NotImplementedError()"}
c.ClearSolutions.text_stub = "YOUR ANSWER HERE"

c.Execute.timeout = CELL_TIMEOUT_S
c.LimitOutput.max_lines = OUTPUT_MAX_LINES
c.LimitOutput.max_traceback = 100
# A student who deletes or retypes a test cell gets it back from the gradebook.
c.OverwriteCells.add_missing_cells = True

# The trusted autograder: hidden checks are decided outside the student's
# kernel (autograder/pipeline.py). The list is nbgrader's default with our
# steps added; see the docstrings there.
c.Autograde.autograde_preprocessors = [
    "autograder.pipeline.PlanTrustedChecks",
    "autograder.pipeline.SandboxedExecute",
    "autograder.pipeline.TrustedChecks",
    "autograder.student_content.InertStudentContent",
    "nbgrader.preprocessors.IgnorePattern",
    "nbconvert.preprocessors.ClearMetadataPreprocessor",
    "nbgrader.preprocessors.LimitOutput",
    "nbgrader.preprocessors.SaveAutoGrades",
    "autograder.pipeline.RecordPendingChecks",
    "nbgrader.preprocessors.AssignLatePenalties",
    "nbgrader.preprocessors.CheckCellMetadata",
]

# Feedback pages: student content made inert again (autograded/ files from older runs), grades
# read with what is still pending, and nbgrader's feedback template made safe and readable
# (autograder/templates/course_feedback: a Content-Security-Policy that lets no script run,
# each check named and marked passed, failed or pending). Set on GenerateFeedback's own exporter only, so
# formgrader keeps its template.
c.GenerateFeedback.preprocessors = [
    "autograder.student_content.InertStudentContent",
    "autograder.feedback.GetGradesAndPending",
    "nbconvert.preprocessors.CSSHTMLHeaderPreprocessor",
]
_NBGRADER_FORMGRADER = os.path.join(find_spec("nbgrader").submodule_search_locations[0], "server_extensions",
                                    "formgrader")
c.GenerateFeedback.HTMLExporter.template_name = "course_feedback"
c.GenerateFeedback.HTMLExporter.extra_template_basedirs = [str(COURSE_ROOT / "autograder" / "templates")]
# nbgrader's templates (ours extends feedback/index.html.j2) and the bootstrap CSS its page inlines.
c.GenerateFeedback.HTMLExporter.extra_template_paths = [
    os.path.join(_NBGRADER_FORMGRADER, "templates"),
    os.path.join(_NBGRADER_FORMGRADER, "static", "node_modules", "bootstrap", "dist", "css"),
]

# grades.csv: nbgrader's columns plus pending_points and pending (autograder/export.py), so
# undecided GPU checks and written answers are not read as zeros.
c.ExportApp.plugin_class = "autograder.export.CsvWithPendingPlugin"

# solutions/ is the instructor's reference: the source notebooks as nbgrader's
# generate_solution writes them, not executed (so the committed files are
# stable; the test suite executes them).
c.GenerateSolution.preprocessors = [
    "nbgrader.preprocessors.IncludeHeaderFooter",
    "nbgrader.preprocessors.LockCells",
    "nbgrader.preprocessors.ClearOutput",
    "nbgrader.preprocessors.ClearMarkScheme",
]
