"""Notebook 2 (seeing attention): plausible bugs lose points, correct-but-different code keeps them.

Each case changes one graded function of the reference answers and is graded on that
function's hidden checks through the sandboxed worker (tests/mutation_helpers.py).
The kill rate is part of the summary that tests/conftest.py prints.
"""
import pytest

from tests.grading import replace_in, rewrite
from tests.mutation_helpers import expect_full_marks, expect_points_lost
from tests.students import NB2

CHECKS = {
    "plot_attention_heatmap": ["heatmap_image_is_the_weights", "heatmap_is_labelled"],
    "plot_multihead_attention": ["multihead_one_panel_per_head", "multihead_shared_colour_scale",
                                 "multihead_rejects_wrong_head_count"],
    "analyze_attention_patterns": ["pattern_statistics_match_reference", "pattern_statistics_edge_cases"],
    "head_roles": ["head_roles_identified"],
}
HEATMAP_IMAGE = "image = ax.imshow(weights, cmap=COLOR_MAP)"
HEAD_IMAGE = "image = ax.imshow(weights[head], cmap=COLOR_MAP, vmin=vmin, vmax=vmax)"
ENTROPY = "row_entropy = -torch.special.xlogy(rows, rows).sum(dim=-1)"

MUTANTS = {
    # plot_attention_heatmap
    "heatmap with transposed axes": ("plot_attention_heatmap", replace_in(
        "plot_attention_heatmap", HEATMAP_IMAGE, "image = ax.imshow(weights.T, cmap=COLOR_MAP)")),
    "heatmap normalised to its largest weight": ("plot_attention_heatmap", replace_in(
        "plot_attention_heatmap", HEATMAP_IMAGE, "image = ax.imshow(weights / weights.max(), cmap=COLOR_MAP)")),
    "heatmap without a colorbar": ("plot_attention_heatmap", replace_in(
        "plot_attention_heatmap", 'figure.colorbar(image, ax=ax, label="attention weight")', "pass")),
    "query and key axis labels swapped": ("plot_attention_heatmap", replace_in(
        "plot_attention_heatmap", 'ax.set_xlabel("Key (attended to)")\n    ax.set_ylabel("Query (attending)")',
        'ax.set_xlabel("Query (attending)")\n    ax.set_ylabel("Key (attended to)")')),
    "title argument ignored": ("plot_attention_heatmap", replace_in(
        "plot_attention_heatmap", "ax.set_title(title)", 'ax.set_title("Attention Weights")')),
    "query tokens missing on the y axis": ("plot_attention_heatmap", replace_in(
        "plot_attention_heatmap", "ax.set_yticks(range(L), tokens)", "pass")),
    "no ValueError for weights that do not fit the tokens": ("plot_attention_heatmap", replace_in(
        "plot_attention_heatmap", "if tuple(attention_weights.shape) != (L, L):", "if False:")),
    # plot_multihead_attention
    "a colour scale per head": ("plot_multihead_attention", replace_in(
        "plot_multihead_attention", HEAD_IMAGE, "image = ax.imshow(weights[head], cmap=COLOR_MAP)")),
    "colour scale of the first head only": ("plot_multihead_attention", replace_in(
        "plot_multihead_attention", "vmax = 0.0, float(weights.max())", "vmax = 0.0, float(weights[0].max())")),
    "head titles count from 1": ("plot_multihead_attention", replace_in(
        "plot_multihead_attention", 'ax.set_title(f"Head {head}")', 'ax.set_title(f"Head {head + 1}")')),
    "heads drawn in reverse order": ("plot_multihead_attention", replace_in(
        "plot_multihead_attention", HEAD_IMAGE, HEAD_IMAGE.replace("weights[head]", "weights[num_heads - 1 - head]"))),
    "no ValueError for a wrong head count": ("plot_multihead_attention", replace_in(
        "plot_multihead_attention", "if tuple(attention_weights.shape) != (num_heads, L, L):",
        "if tuple(attention_weights.shape[1:]) != (L, L):")),
    "multi-head figure without a colorbar": ("plot_multihead_attention", replace_in(
        "plot_multihead_attention", 'figure.colorbar(image, ax=list(axes[0]), label="attention weight")', "pass")),
    # analyze_attention_patterns
    "entropy in bits": ("analyze_attention_patterns", replace_in(
        "analyze_attention_patterns", ENTROPY, ENTROPY + " / math.log(2)")),
    "0 ln 0 computed as NaN": ("analyze_attention_patterns", replace_in(
        "analyze_attention_patterns", ENTROPY, "row_entropy = -(rows * torch.log(rows)).sum(dim=-1)")),
    "fully masked rows counted in the entropy": ("analyze_attention_patterns", replace_in(
        "analyze_attention_patterns", "row_entropy[has_weight].mean()", "row_entropy.mean()")),
    "diagonal mass as a sum, not a fraction": ("analyze_attention_patterns", replace_in(
        "analyze_attention_patterns", "(weights.diagonal(dim1=-2, dim2=-1).sum() / total).item()",
        "weights.diagonal(dim1=-2, dim2=-1).sum().item()")),
    "window compared with < instead of <=": ("analyze_attention_patterns", replace_in(
        "analyze_attention_patterns", "local = weights[..., distance <= window].sum()\n    far = weights[..., distance > window]",
        "local = weights[..., distance < window].sum()\n    far = weights[..., distance >= window]")),
    "no global weight gives 0 instead of inf": ("analyze_attention_patterns", replace_in(
        "analyze_attention_patterns", 'if far > 0 else float("inf")', "if far > 0 else 0.0")),
    "max_attention returned as a tensor": ("analyze_attention_patterns", replace_in(
        "analyze_attention_patterns", '"max_attention": weights.max().item()', '"max_attention": weights.max()')),
    "max_attention as the mean row maximum": ("analyze_attention_patterns", replace_in(
        "analyze_attention_patterns", '"max_attention": weights.max().item()',
        '"max_attention": weights.max(dim=-1).values.mean().item()')),
    # HEAD_ROLES
    "two heads' roles swapped": ("head_roles", replace_in(
        "head_roles", '0: "previous token", 1: "same word", 2: "self"', '0: "self", 1: "same word", 2: "previous token"')),
}

PCOLORMESH_HEATMAP = '''
def plot_attention_heatmap(attention_weights, tokens, title="Attention Weights"):
    """A seaborn-style heatmap: pcolormesh with ticks at cell centres, row 0 on top."""
    n = len(tokens)
    if attention_weights.shape != (n, n):
        raise ValueError(f"weights {list(attention_weights.shape)} do not match {n} tokens")
    fig = plt.figure(figsize=(5, 4))
    ax = fig.add_subplot()
    mesh = ax.pcolormesh(attention_weights.detach().numpy(), vmin=0.0, vmax=1.0)
    ax.invert_yaxis()
    centres = [i + 0.5 for i in range(n)]
    ax.set_xticks(centres)
    ax.set_xticklabels(tokens)
    ax.set_yticks(centres)
    ax.set_yticklabels(tokens)
    ax.set(xlabel="keys", ylabel="queries", title=title)
    fig.colorbar(mesh)
    return fig
'''

SHARED_Y_MULTIHEAD = '''
def plot_multihead_attention(attention_weights, tokens, num_heads):
    """Panels on a shared y axis, a fixed 0..1 scale and a figure-level colorbar."""
    if attention_weights.dim() != 3 or attention_weights.shape[0] != num_heads:
        raise ValueError(f"expected [{num_heads}, L, L] weights, got {list(attention_weights.shape)}")
    if attention_weights.shape[1:] != (len(tokens), len(tokens)):
        raise ValueError(f"weights {list(attention_weights.shape)} do not match {len(tokens)} tokens")
    fig, axes = plt.subplots(1, num_heads, sharey=True, squeeze=False, figsize=(3 * num_heads + 1, 3))
    for h in range(num_heads):
        ax = axes[0][h]
        im = ax.imshow(attention_weights[h].detach().numpy(), vmin=0, vmax=1)
        ax.set_xticks(list(range(len(tokens))))
        ax.set_xticklabels(tokens)
        ax.set_title("Head " + str(h))
    axes[0][0].set_yticks(list(range(len(tokens))))
    axes[0][0].set_yticklabels(tokens)
    fig.colorbar(im, ax=axes.ravel().tolist())
    return fig
'''

NUMPY_STATISTICS = '''
import numpy as np

def analyze_attention_patterns(attention_weights, window=1):
    """The same statistics with numpy and plain loops over the rows."""
    w = attention_weights.detach().numpy().astype(np.float64)
    L = w.shape[-1]
    rows = w.reshape(-1, L)
    entropies = []
    for row in rows:
        if row.sum() > 0:
            nonzero = row[row > 0]
            entropies.append(float(-(nonzero * np.log(nonzero)).sum()))
    i, j = np.indices((L, L))
    near = float(w[..., np.abs(i - j) <= window].sum())
    far = float(w[..., np.abs(i - j) > window].sum())
    return {"max_attention": float(w.max()), "entropy": float(np.mean(entropies)),
            "diagonal_mass": float(np.trace(w, axis1=-2, axis2=-1).sum() / w.sum()),
            "local_vs_global": near / far if far > 0 else float("inf")}
'''

FLOAT32_STATISTICS = '''
def analyze_attention_patterns(attention_weights, window=1):
    """Everything in float32, with masks instead of fancy indexing."""
    w = attention_weights.detach()
    L = w.shape[-1]
    idx = torch.arange(L)
    band = (idx[:, None] - idx[None, :]).abs() <= window
    p = w.reshape(-1, L)
    live = p.sum(-1) > 0
    plogp = torch.where(p > 0, p * torch.log(p.clamp_min(1e-30)), torch.zeros_like(p))
    far = (w * ~band).sum()
    return {"max_attention": float(w.max()), "entropy": float((-plogp.sum(-1))[live].mean()),
            "diagonal_mass": float((w * torch.eye(L)).sum() / w.sum()),
            "local_vs_global": float((w * band).sum() / far) if far > 0 else float("inf")}
'''

CORRECT_VARIANTS = {
    "pcolormesh heatmap, y axis inverted, ticks at cell centres": ("plot_attention_heatmap", rewrite(
        "plot_attention_heatmap", PCOLORMESH_HEATMAP)),
    "shared y axis, fixed 0..1 scale, figure-level colorbar": ("plot_multihead_attention", rewrite(
        "plot_multihead_attention", SHARED_Y_MULTIHEAD)),
    "numpy with loops over rows": ("analyze_attention_patterns", rewrite(
        "analyze_attention_patterns", NUMPY_STATISTICS)),
    "float32 with masks": ("analyze_attention_patterns", rewrite("analyze_attention_patterns", FLOAT32_STATISTICS)),
    "roles written with other spacing and capitals": ("head_roles", rewrite(
        "head_roles", 'HEAD_ROLES = {"0": "Previous token", 1: "same word ", 2: "SELF", 3: "punctuation"}')),
}


@pytest.mark.parametrize("mutant", sorted(MUTANTS))
def test_mutant_loses_points(mutant):
    function, change = MUTANTS[mutant]
    expect_points_lost(NB2, CHECKS[function], change, mutant)


@pytest.mark.parametrize("variant", sorted(CORRECT_VARIANTS))
def test_correct_variant_gets_full_marks(variant):
    function, change = CORRECT_VARIANTS[variant]
    expect_full_marks(NB2, CHECKS[function], change, variant)


def test_every_graded_function_has_four_mutants_and_its_checks_are_the_notebooks():
    from tests.grading import check_points

    assert sorted(c for checks in CHECKS.values() for c in checks) == sorted(check_points(NB2))
    for function in CHECKS:
        if function != "head_roles":
            assert sum(f == function for f, _ in MUTANTS.values()) >= 4, function
