"""`make gpu-check`: the GPU-tagged hidden checks against the reference solution; says what ran where.

Exit status 0 when every GPU check passed, or when there is no CUDA here (they are then reported as
pending, not run); 1 when a GPU check failed on the reference solution (a bug in a check or solution), or
when torch sees CUDA but none is decided: a sandboxed worker cannot use it (the host's limits: it says
why), or course_config.GRADE_ON_CUDA is off.
"""
import platform
import sys
import time

import nbformat
import torch

import course_config

from .checks import REGISTRY, run_check
from .pipeline import cuda_seen_by_the_grader, graded_answers, student_code, student_written_code
from .preflight import cuda_problem_in_the_sandbox
from .safe_text import one_line
from .sandbox import sandbox_enabled
from .student import SandboxedStudent


def main():
    gpu_checks = sorted(name for name, c in REGISTRY.items() if c.gpu)
    seen = torch.cuda.is_available()
    allowed = cuda_seen_by_the_grader()
    problem = cuda_problem_in_the_sandbox() if allowed else None
    cuda = allowed and problem is None
    print(f"host: {platform.node()}  torch {torch.__version__}  CUDA {torch.version.cuda}  "
          f"available: {seen}" + (f"  device: {torch.cuda.get_device_name(0)}" if seen else ""))
    print(f"student code runs in: {'a bubblewrap sandbox' if sandbox_enabled() else 'a plain process (sandbox off)'}")
    if problem:
        print(f"GPU checks not run: torch sees CUDA, but CUDA does not work in the sandbox: {one_line(problem, 1000)}")
    elif seen and not cuda:
        print("GPU checks not run: course_config.GRADE_ON_CUDA is off")
    failed = 0
    solutions = course_config.COURSE_ROOT / "solutions"
    for path in sorted(p for a in course_config.ASSIGNMENTS for p in (solutions / a).glob("*.ipynb")):
        names = [n for n in gpu_checks if REGISTRY[n].notebook == path.stem]
        if not names:
            continue
        print(f"{path.name}: reference solution, {len(names)} GPU check(s)")
        nb = nbformat.read(path, as_version=4)
        # As the grader builds it: the static scan reads the cells a student fills in, not the solution's
        # scratch cells that compare with PyTorch's own attention.
        with SandboxedStudent(student_code(nb), sources=student_written_code(nb), answers=graded_answers(nb)) as student:
            for name in names:
                started = time.monotonic()
                verdict = run_check(name, student, cuda_available=cuda)
                where = "ran on cuda:0 in the sandboxed worker" if cuda else "not run (no CUDA here)"
                print(f"  {name:28s} {verdict.status:8s} {time.monotonic() - started:6.2f} s  {where}")
                if verdict.status == "failed":
                    failed += 1
                    print("    " + verdict.message.replace("\n", "\n    "))
    if not seen:
        print("CUDA is not available: the GPU checks stay pending here. Run `make gpu-check` on a CUDA host.")
    return 1 if failed or (seen and not cuda) else 0


if __name__ == "__main__":
    sys.exit(main())
