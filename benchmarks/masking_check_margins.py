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

and how long the five calls that the two checks make for one submission take here (one CPU thread, as in
the sandbox).

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
from tests.students import NB3, reference_answers, source_notebook  # noqa: E402

CELLS = ("setup", "masks_from_notebook_1", "char_lm", "train_char_lm", "compare_masking")


def solution_namespace():
    """The solution's compare_masking and everything it uses, from the cells that define them."""
    answers = reference_answers(NB3)
    namespace = {}
    for cell in source_notebook(NB3).cells:
        grade_id = cell.metadata.get("nbgrader", {}).get("grade_id")
        if grade_id in CELLS:
            exec(answers.get(grade_id, cell.source), namespace)
    return namespace


def calls_of_one_submission(long_steps, short_steps):
    """The compare_masking calls the two checks make for one submission: (steps, seed, corpus)."""
    seed = checks.CHECK_SEED
    return [(long_steps, seed, checks.CHECK_CORPUS), (short_steps, seed, checks.CHECK_CORPUS),
            (short_steps, seed, checks.CHECK_CORPUS), (short_steps, seed + 1, checks.CHECK_CORPUS),
            (short_steps, seed, checks.OTHER_CORPUS)]


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
    compare_masking = solution_namespace()["compare_masking"]
    text = checks.check_corpus()
    compare_masking(text, steps=2, seed=0)  # torch's first-call costs, outside every timing
    wanted = {"progress": checks.TRAINING_PROGRESS, "learned": 0.0, "cheat": checks.CHEAT_MARGIN,
              "honest": checks.HONEST_MARGIN}
    pairs = [tuple(int(n) for n in pair.split(",")) for pair in args.steps]
    seconds = {pair: [] for pair in pairs}
    for _ in range(args.rounds):  # alternated, so a change of the machine's speed reaches every pair
        for pair in pairs:
            started = time.perf_counter()
            for steps, seed, corpus in calls_of_one_submission(*pair):
                compare_masking(checks.check_corpus(tuple(corpus.items())), steps=steps, seed=seed)
            seconds[pair].append(time.perf_counter() - started)
    for long_steps, short_steps in pairs:
        found = [margins(compare_masking, text, long_steps, short_steps, seed) for seed in args.seeds]
        print(f"CHECK_STEPS={long_steps}, REPEAT_STEPS={short_steps}: one submission's calls "
              f"{statistics.median(seconds[long_steps, short_steps]):.2f} s (median of {args.rounds})")
        for name, least in wanted.items():
            values = [m[name] for m in found]
            print(f"  {name:8s} smallest {min(values):6.3f} over seeds {args.seeds[0]}-{args.seeds[-1]} "
                  f"(median {statistics.median(values):6.3f}); the check wants {'>=' if least else '>'} {least}")


if __name__ == "__main__":
    main()
