"""`make gpu-check`: the GPU-tagged hidden checks against the reference solution; says what ran where.

Exit status 0 when every GPU check passed, or when there is no CUDA here (they are then reported as
pending, not run); 1 when a GPU check failed on the reference solution (a bug in a check or solution).
"""
import platform
import sys
import time

import nbformat
import torch

import course_config

from .checks import REGISTRY, run_check
from .pipeline import student_code
from .sandbox import sandbox_enabled
from .student import SandboxedStudent


def main():
    gpu_checks = sorted(name for name, c in REGISTRY.items() if c.gpu)
    cuda = torch.cuda.is_available()
    print(f"host: {platform.node()}  torch {torch.__version__}  CUDA {torch.version.cuda}  "
          f"available: {cuda}" + (f"  device: {torch.cuda.get_device_name(0)}" if cuda else ""))
    print(f"student code runs in: {'a bubblewrap sandbox' if sandbox_enabled() else 'a plain process (sandbox off)'}")
    failed = 0
    solutions = course_config.COURSE_ROOT / "solutions"
    for path in sorted(p for a in course_config.ASSIGNMENTS for p in (solutions / a).glob("*.ipynb")):
        names = [n for n in gpu_checks if REGISTRY[n].notebook == path.stem]
        if not names:
            continue
        print(f"{path.name}: reference solution, {len(names)} GPU check(s)")
        with SandboxedStudent(student_code(nbformat.read(path, as_version=4))) as student:
            for name in names:
                started = time.monotonic()
                verdict = run_check(name, student, cuda_available=cuda)
                where = "ran on cuda:0 in the sandboxed worker" if cuda else "not run (no CUDA here)"
                print(f"  {name:28s} {verdict.status:8s} {time.monotonic() - started:6.2f} s  {where}")
                if verdict.status == "failed":
                    failed += 1
                    print("    " + verdict.message.replace("\n", "\n    "))
    if not cuda:
        print("CUDA is not available: the GPU checks stay pending here. Run `make gpu-check` on a CUDA host.")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
