"""The rules a hidden check can find broken: a stable id and one sentence each.

Trusted code. Every failure of a check names the rule it found broken (`CheckFailed(rule,
message)`), so the instructor's report (autograder/report.py) can count, per check, how many
students broke which rule, without reading the prose of the messages. An id never changes once a
batch has used it; a new rule gets a new id. tests/test_report.py holds every id a check raises
to this table.
"""

RULES = {
    # What the shared assertions (expectations.py) find.
    "runs-without-error": "the function must run without raising on valid inputs",
    "returns-a-tensor": "the function must return a torch.Tensor",
    "returns-a-pair": "attention must return a pair (output, weights)",
    "shape": "the result must have the shape the contract gives",
    "matches-reference": "the values must match the float64 reference within the dtype's tolerance",
    "fully-masked-rows-zero": "a fully masked row (every key blocked) must give exactly 0",
    "finite": "nothing may be inf or NaN",
    "rejects-bad-input": "invalid input must raise ValueError",
    # Notebook 1: attention from scratch.
    "scaled-by-sqrt-dk": "the scores must be scaled by 1/sqrt(d_k)",
    "no-ready-made-attention": "attention must be built from matmul and softmax, not PyTorch's ready-made attention",
    "error-names-shapes": "a ValueError's message must name the shapes that disagree",
    "gradients-flow": "the output must stay connected to Q, K and V so that gradients flow back",
    "gradients-match-reference": "the gradients must match the float64 reference",
    "keeps-dtype": "the results must keep the inputs' dtype",
    "keeps-device": "the results must stay on the inputs' device",
    "inputs-untouched": "a function must leave its inputs unmodified",
    "mask-float32": "a mask must be a float32 tensor",
    "mask-values": "a mask holds 0 where a query may see a key and -inf elsewhere",
    "mask-on-device": "a mask must be built on the device it is asked for",
    # GPU checks.
    "cuda-matches-cpu": "on CUDA the results must match the float64 reference as on the CPU",
    "stays-on-cuda": "CUDA inputs must give CUDA results",
    # Notebook 2: seeing attention.
    "figure-shows-weights": "a heatmap must show the attention weights themselves",
    "figure-labelled": "a figure must label its axes with the tokens and carry a colour bar",
    "one-panel-per-head": "a multi-head figure has one panel per head",
    "shared-colour-scale": "the panels of a multi-head figure share one colour scale",
    "statistics-match-reference": "the pattern statistics must match their definitions",
    "head-roles": "each head must be given the role its weights show",
    # Notebook 3: breaking attention.
    "experiment-complete": "an experiment must report every setting it was asked for",
    "experiment-repeatable": "an experiment must give the same result for the same seed",
    "experiment-shows-the-lesson": "an experiment's numbers must show what the lesson says they show",
    # Notebook 4 (bonus): beyond one head.
    "kv-cache": "a KV cache must give what full attention gives and grow by one step per call",
    "dropout": "dropout must drop independently with the given probability, and only in training",
    "memory-grows-as-expected": "the memory a method needs must grow with the sequence as its design says",
    "contract": "the function must follow the rest of its contract (see the message)",
    # The grader's own observations.
    "answers-in-time": "the code must answer within the time limits",
    "deterministic": "the same input must give the same result",
    "answered": "the exercise must be answered",
    # The report's own, for a check that lost points without a failure of its own.
    "not-decided": "the check was not decided: grading stopped before it (a time limit, a crash)",
    "scored-by-a-ta": "a TA gave part of the points by hand",
}


def sentence(rule):
    """The rule's sentence; an id the table does not know is shown as it is."""
    return RULES.get(rule, rule)
