"""nbgrader's check of its cell metadata, as it comes and as the grader runs it, side by side in one process.

nbgrader checks the metadata of every nbgrader cell of every notebook it reads, converts or writes
(nbgrader.nbgraderformat's MetadataValidator); jsonschema.validate, which it calls for each cell, first
checks nbgrader's schema itself against its metaschema. The grader's processes check that schema once
(autograder/nbgrader_cli.py, validate_metadata_against_a_checked_schema). This times MetadataValidator's
validate_nb over the course's four source notebooks, both ways, alternated.

Run:  .venv/bin/python benchmarks/metadata_validation.py [--rounds 5] [--repeat 10]
"""
import argparse
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import nbformat  # noqa: E402
from nbgrader.nbgraderformat import MetadataValidator, common  # noqa: E402

from autograder.nbgrader_cli import validate_metadata_against_a_checked_schema  # noqa: E402


def seconds(notebooks, repeat):
    started = time.perf_counter()
    for _ in range(repeat):
        for nb in notebooks:
            MetadataValidator().validate_nb(nb)
    return time.perf_counter() - started


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--repeat", type=int, default=10, help="passes over the four notebooks per timing")
    args = parser.parse_args()
    notebooks = [nbformat.read(p, as_version=4) for p in sorted((ROOT / "source").glob("*/*.ipynb"))]
    cells = sum(1 for nb in notebooks for c in nb.cells if "nbgrader" in c.metadata)
    as_shipped = common.jsonschema
    validate_metadata_against_a_checked_schema()
    checked_once = common.jsonschema
    times = {"nbgrader as it comes": [], "schema checked once": []}
    for _ in range(args.rounds):
        for name, module in (("nbgrader as it comes", as_shipped), ("schema checked once", checked_once)):
            common.jsonschema = module
            times[name].append(seconds(notebooks, args.repeat))
    common.jsonschema = as_shipped
    print(f"{len(notebooks)} notebooks, {cells} nbgrader cells, {args.repeat} passes per timing, {args.rounds} rounds "
          f"(medians)")
    for name, seen in times.items():
        print(f"  {name:22s} {1000 * statistics.median(seen) / (args.repeat * len(notebooks)):8.2f} ms per notebook")
    print(f"  ratio: {statistics.median(times['schema checked once']) / statistics.median(times['nbgrader as it comes']):.3f}")


if __name__ == "__main__":
    main()
