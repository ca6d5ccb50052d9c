"""compare_masking's hidden checks: their margins and cost at a given number of training steps.

Notebook 3's checks (autograder/checks/breaking_attention.py) call the student's compare_masking,
which trains three tiny models, with CHECK_STEPS steps (the cheaters check) and REPEAT_STEPS steps
(training progress and repeatability). Fewer steps cost less grading time, but each rule must still
hold with room to spare for a correct solution. This runs the instructor's solution of Notebook 3 on
the checks' own corpus, for several seeds (a correct solution that draws its random numbers in
another order is like another seed), and prints for each pair of step counts:

  progress  causal train loss after REPEAT_STEPS minus after CHECK_STEPS   (the check wants >= TRAINING_PROGRESS)
  learned   ln(vocabulary) minus the causal model's honest loss           (> 0)
  cheat     causal train loss minus the higher of the cheaters'            (>= CHEAT_MARGIN)
  honest    the lower cheater's honest loss minus the causal model's       (>= HONEST_MARGIN)

and how long the two checks take for one submission here, run against the solution in this process
(one CPU thread, as in the sandbox), with the steps set to the pair's.

Run:  .venv/bin/python benchmarks/masking_check_margins.py [--steps 150,20 80,10] [--seeds 0-8]
"""
import argparse
import math
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "source" / "attention_surgeon"))  # make_corpus, as the notebook imports it

import torch  # noqa: E402

from autograder.checks import breaking_attention as checks  # noqa: E402
from autograder.checks import run_checks  # noqa: E402
from autograder.student import InProcessStudent  # noqa: E402
from tests.students import NB3, reference_answers, source_notebook  # noqa: E402

CELLS = ("setup", "masks_from_notebook_1", "char_lm", "train_char_lm", "compare_masking")
CHECKS = ["compare_masking_shows_the_cheaters", "compare_masking_is_repeatable"]


def solution_namespace():
    """The solution's compare_masking and everything it uses, from the cells that define them."""
    answers = reference_answers(NB3)
    namespace = {}
    for cell in source_notebook(NB3).cells:
        grade_id = cell.metadata.get("nbgrader", {}).get("grade_id")
        if grade_id in CELLS:
            exec(answers.get(grade_id, cell.source), namespace)
    return namespace


def run_the_checks(namespace, long_steps, short_steps):
    """{check: status} of the two compare_masking checks with these steps, against `namespace`'s
    functions (a fresh student each time: no call is reused from an earlier run)."""
    checks.CHECK_STEPS, checks.REPEAT_STEPS = long_steps, short_steps
    verdicts = run_checks(CHECKS, InProcessStudent(namespace))
    return {name: verdict.status for name, verdict in verdicts.items()}


def margins(compare_masking, text, long_steps, short_steps, seed):
    long, short = compare_masking(text, steps=long_steps, seed=seed), compare_masking(text, steps=short_steps, seed=seed)
    causal, cheaters = long["causal"], (long["none"], long["reverse"])
    return {"progress": short["causal"]["train_loss"] - causal["train_loss"],
            "learned": math.log(len(set(text))) - causal["honest_loss"],
            "cheat": min(causal["train_loss"] - c["train_loss"] for c in cheaters),
            "honest": min(c["honest_loss"] - causal["honest_loss"] for c in cheaters)}


def seed_range(text):
    first, _, last = text.partition("-")
    return list(range(int(first), int(last or first) + 1))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", nargs="+", default=[f"{checks.CHECK_STEPS},{checks.REPEAT_STEPS}"],
                        help="pairs CHECK_STEPS,REPEAT_STEPS (default: the checks' own)")
    parser.add_argument("--seeds", type=seed_range, default=seed_range("0-8"), help="e.g. 0-8")
    parser.add_argument("--rounds", type=int, default=3, help="timings of one submission's calls per pair")
    args = parser.parse_args()
    torch.set_num_threads(1)
    namespace = solution_namespace()
    compare_masking = namespace["compare_masking"]
    text = checks.check_corpus()
    compare_masking(text, steps=2, seed=0)  # torch's first-call costs, outside every timing
    wanted = {"progress": checks.TRAINING_PROGRESS, "learned": 0.0, "cheat": checks.CHEAT_MARGIN,
              "honest": checks.HONEST_MARGIN}
    pairs = [tuple(int(n) for n in pair.split(",")) for pair in args.steps]
    seconds, statuses = {pair: [] for pair in pairs}, {}
    for _ in range(args.rounds):  # alternated, so a change of the machine's speed reaches every pair
        for pair in pairs:
            started = time.perf_counter()
            statuses[pair] = run_the_checks(namespace, *pair)
            seconds[pair].append(time.perf_counter() - started)
    for long_steps, short_steps in pairs:
        found = [margins(compare_masking, text, long_steps, short_steps, seed) for seed in args.seeds]
        print(f"CHECK_STEPS={long_steps}, REPEAT_STEPS={short_steps}: one submission's checks "
              f"{statistics.median(seconds[long_steps, short_steps]):.2f} s (median of {args.rounds}); "
              f"the solution's verdicts: {statuses[long_steps, short_steps]}")
        for name, least in wanted.items():
            values = [m[name] for m in found]
            print(f"  {name:8s} smallest {min(values):6.3f} over seeds {args.seeds[0]}-{args.seeds[-1]} "
                  f"(median {statistics.median(values):6.3f}); the check wants {'>=' if least else '>'} {least}")


if __name__ == "__main__":
    main()
