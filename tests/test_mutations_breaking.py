"""Notebook 3 (breaking attention): plausible bugs lose points, correct-but-different code keeps them.

Each case changes one graded cell of the reference answers and is graded on the hidden
checks of that cell through the sandboxed worker (tests/mutation_helpers.py).
"""
import pytest

from tests.grading import replace_in, rewrite
from tests.mutation_helpers import expect_all_points_lost, expect_full_marks, expect_points_lost
from tests.students import NB3

CHECKS = {
    "masks_from_notebook_1": ["masks_steer_what_a_model_sees"],
    "experiment_scaling_factor": ["scaling_table_is_complete_and_repeatable", "scaling_trends_match_the_lesson"],
    "compare_masking": ["compare_masking_shows_the_cheaters", "compare_masking_is_repeatable"],
}
CHECKS["train_char_lm"] = CHECKS["compare_masking"]  # compare_masking's helpers are graded through it

MUTANTS = {
    # the masks, pasted from Notebook 1
    "causal mask blocks the diagonal too": ("masks_from_notebook_1", replace_in(
        "masks_from_notebook_1", "triu(diagonal=1)", "triu(diagonal=0)")),
    "reverse mask is the causal one": ("masks_from_notebook_1", replace_in(
        "masks_from_notebook_1", "tril(diagonal=-1)", "triu(diagonal=1)")),
    "causal mask lets everyone see everything": ("masks_from_notebook_1", replace_in(
        "masks_from_notebook_1", "masked_fill(future, NEG_INF)", "masked_fill(future, 0.0)")),
    "reverse mask shifted by one": ("masks_from_notebook_1", replace_in(
        "masks_from_notebook_1", "tril(diagonal=-1)", "tril(diagonal=0)")),
    # experiment_scaling_factor
    "scaled by d_k instead of sqrt(d_k)": ("experiment_scaling_factor", replace_in(
        "experiment_scaling_factor", "scores = scores / math.sqrt(d_k)", "scores = scores / d_k")),
    "scaled flag inverted": ("experiment_scaling_factor", replace_in(
        "experiment_scaling_factor", "if scaled:", "if not scaled:")),
    "entropy in bits": ("experiment_scaling_factor", replace_in(
        "experiment_scaling_factor", "-torch.special.xlogy(weights, weights).sum(dim=-1).mean().item()",
        "-torch.special.xlogy(weights, weights).sum(dim=-1).mean().item() / math.log(2)")),
    "gradient of weights.sum() (always 0)": ("experiment_scaling_factor", replace_in(
        "experiment_scaling_factor", "(weights * upstream).sum().backward()", "weights.sum().backward()")),
    "largest weight of all, not the mean row maximum": ("experiment_scaling_factor", replace_in(
        "experiment_scaling_factor", "weights.max(dim=-1).values.mean().item()", "weights.max().item()")),
    "unseeded experiment": ("experiment_scaling_factor", replace_in(
        "experiment_scaling_factor", "torch.Generator().manual_seed(seed)", "torch.Generator().manual_seed(torch.seed())")),
    # compare_masking and its helpers
    "the causal experiment leaks the future (trained without a mask)": ("compare_masking", replace_in(
        "compare_masking", 'masks = {"causal": causal,', 'masks = {"causal": None,')),
    "honest test uses the model's own training mask": ("compare_masking", replace_in(
        "compare_masking", "next_token_loss(model, *all_windows(held_out_ids), causal)",
        "next_token_loss(model, *all_windows(held_out_ids), mask)")),
    "reverse model trained with the causal mask": ("compare_masking", replace_in(
        "compare_masking", '"reverse": create_reverse_mask(CONTEXT)', '"reverse": create_causal_mask(CONTEXT)')),
    "training loss measured with the causal mask": ("compare_masking", replace_in(
        "compare_masking", "next_token_loss(model, *all_windows(train_ids), mask)",
        "next_token_loss(model, *all_windows(train_ids), causal)")),
    "initial weights not seeded": ("train_char_lm", replace_in(
        "train_char_lm", "torch.manual_seed(seed)                                  #", "pass  #")),
}

SEPARATE_GENERATORS_FLOAT64 = '''
def experiment_scaling_factor(d_k_values=(16, 64, 256, 1024), seq_len=16, num_samples=64, seed=SEED):
    """float64 throughout, K drawn before Q, a loop over rows for the entropy."""
    rows = []
    for d_k in d_k_values:
        g = torch.Generator().manual_seed(seed)
        K = torch.randn(num_samples, seq_len, d_k, generator=g, dtype=torch.float64)
        Q = torch.randn(num_samples, seq_len, d_k, generator=g, dtype=torch.float64)
        up = torch.randn(num_samples, seq_len, seq_len, generator=g, dtype=torch.float64)
        for scaled in (False, True):
            s = torch.einsum("nld,nsd->nls", Q, K) * (d_k ** -0.5 if scaled else 1.0)
            s = s.detach().requires_grad_()
            p = torch.softmax(s, -1)
            grad, = torch.autograd.grad((p * up).sum(), s)
            p = p.detach().reshape(-1, seq_len)
            entropies = [float(-(r[r > 0] * r[r > 0].log()).sum()) for r in p]
            rows.append(dict(d_k=int(d_k), scaled=bool(scaled), max_weight=float(p.max(1).values.mean()),
                             entropy=sum(entropies) / len(entropies), grad_magnitude=float(grad.abs().mean())))
    return rows
'''

TRANSPOSED_CROSS_ENTROPY = '''
def next_token_loss(model, inputs, targets, mask):
    """cross_entropy on [batch, vocab, T] logits: the same mean over every position."""
    return F.cross_entropy(model(inputs, mask).transpose(1, 2), targets)


def train_char_lm(train_ids, vocab_size, mask, steps, seed):
    torch.manual_seed(seed)
    batches = torch.Generator().manual_seed(seed)
    model = TinyCharLM(vocab_size)
    opt = torch.optim.Adam(model.parameters(), lr=LEARNING_RATE)
    step = 0
    while step < steps:
        x, y = random_windows(train_ids, BATCH_SIZE, batches)
        opt.zero_grad(set_to_none=True)
        next_token_loss(model, x, y, mask).backward()
        opt.step()
        step += 1
    return model
'''

WINDOW_BY_WINDOW_EVALUATION = '''
def compare_masking(text, steps=TRAIN_STEPS, seed=SEED):
    """Evaluates window by window (equal sizes, so the mean of means is the mean) and keeps models in a list."""
    chars = sorted(set(text))
    ids = encode(text, chars)
    cut = int(len(ids) * (1 - HELD_OUT))
    train, test = ids[:cut], ids[cut:]
    honest = create_causal_mask(CONTEXT)
    out = {}
    for name in ["causal", "none", "reverse"]:
        mask = {"causal": honest, "none": None, "reverse": create_reverse_mask(CONTEXT)}[name]
        model = train_char_lm(train, len(chars), mask, steps, seed)
        model.eval()
        with torch.no_grad():
            xs, ys = all_windows(train)
            train_loss = sum(next_token_loss(model, x[None], y[None], mask).item() for x, y in zip(xs, ys)) / len(xs)
            xs, ys = all_windows(test)
            honest_loss = sum(next_token_loss(model, x[None], y[None], honest).item() for x, y in zip(xs, ys)) / len(xs)
        out[name] = dict(train_loss=float(train_loss), honest_loss=float(honest_loss), sample=generate(model, chars))
    return out
'''

BOOL_KEEP_MASKS = '''
def create_causal_mask(seq_len, device="cpu"):
    keep = torch.tril(torch.ones(seq_len, seq_len, device=device)).bool()
    return torch.where(keep, torch.tensor(0.0, device=device), torch.tensor(NEG_INF, device=device))


def create_reverse_mask(seq_len, device="cpu"):
    return create_causal_mask(seq_len, device).T.contiguous()
'''

def constant_scaling_table(answers):
    """The cheat that used to pass: the reference's own numbers at the notebook's arguments, as a table."""
    from autograder.checks.breaking_attention import SCALING_ARGS, expected_statistics

    rows = [dict(d_k=d_k, scaled=scaled, **{k: float(v) for k, v in
                                           expected_statistics(d_k, scaled, SCALING_ARGS["seq_len"]).items()})
            for d_k in SCALING_ARGS["d_k_values"] for scaled in (False, True)]
    answers["experiment_scaling_factor"] = (
        "def experiment_scaling_factor(d_k_values=(16, 64, 256, 1024), seq_len=16, num_samples=64, seed=SEED):\n"
        f"    table = {rows!r}\n"
        "    return [dict(row) for row in table if row['d_k'] in d_k_values]\n")
    return answers


CONSTANT_MASKING_RESULTS = '''
def compare_masking(text, steps=TRAIN_STEPS, seed=SEED):
    """Six losses typed in from one run: trains nothing."""
    return {"causal": {"train_loss": 0.742, "honest_loss": 0.793, "sample": "the cat sat"},
            "none": {"train_loss": 0.096, "honest_loss": 6.533, "sample": "tttttt"},
            "reverse": {"train_loss": 0.121, "honest_loss": 7.898, "sample": "eeeeee"}}
'''

# Tables of constants: they must lose every point of their experiment (expect_all_points_lost).
CONSTANT_TABLES = {
    "scaling table typed in from the reference": ("experiment_scaling_factor", constant_scaling_table),
    "compare_masking returns six typed-in losses": ("compare_masking", rewrite("compare_masking",
                                                                                CONSTANT_MASKING_RESULTS)),
}

CORRECT_VARIANTS = {
    "masks with torch.where and a transpose": ("masks_from_notebook_1", rewrite("masks_from_notebook_1",
                                                                                BOOL_KEEP_MASKS)),
    "float64, K drawn first, einsum, autograd.grad": ("experiment_scaling_factor", rewrite(
        "experiment_scaling_factor", SEPARATE_GENERATORS_FLOAT64)),
    "cross-entropy on [batch, vocab, T], a while loop": ("train_char_lm", rewrite(
        "train_char_lm", TRANSPOSED_CROSS_ENTROPY)),
    "evaluation window by window": ("compare_masking", rewrite("compare_masking", WINDOW_BY_WINDOW_EVALUATION)),
}


@pytest.mark.parametrize("mutant", sorted(MUTANTS))
def test_mutant_loses_points(mutant):
    cell, change = MUTANTS[mutant]
    expect_points_lost(NB3, CHECKS[cell], change, mutant)


@pytest.mark.parametrize("table", sorted(CONSTANT_TABLES))
def test_a_table_of_constants_loses_every_point_of_its_experiment(table):
    """Before: the six hard-coded losses passed both compare_masking checks (6 points)."""
    cell, change = CONSTANT_TABLES[table]
    expect_all_points_lost(NB3, CHECKS[cell], change, table)


@pytest.mark.parametrize("variant", sorted(CORRECT_VARIANTS))
def test_correct_variant_gets_full_marks(variant):
    cell, change = CORRECT_VARIANTS[variant]
    expect_full_marks(NB3, CHECKS[cell], change, variant)


def test_every_graded_function_has_four_mutants_and_its_checks_are_the_notebooks():
    from tests.grading import check_points

    assert sorted({c for checks in CHECKS.values() for c in checks}) == sorted(check_points(NB3))
    for cell in ("masks_from_notebook_1", "experiment_scaling_factor"):
        assert sum(c == cell for c, _ in MUTANTS.values()) >= 4, cell
    assert sum(c in ("compare_masking", "train_char_lm") for c, _ in MUTANTS.values()) >= 4
