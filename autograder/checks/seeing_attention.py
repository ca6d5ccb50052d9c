"""Hidden checks of Notebook 2: seeing attention (the contract: README.md, "The assignment", and the
source notebook source/attention_surgeon/02_seeing_attention.ipynb).

Trusted code. The figures come back from the worker as data (autograder/student.py
`FigureSummary`: per axes the title, axis labels, ticks and heatmap images, drawn
under matplotlib's Agg backend), so a check can ask "is the image the weights?"
without trusting anything the student's process says about itself. The
statistics are compared with the float64 reference on generated row-stochastic maps.
"""
import math

import numpy as np
import torch
from hypothesis import example, given

from ..reference import reference_pattern_statistics
from ..sandboxed_worker.protocol import FigureSummary
from ..strategies import GRADING, attention_maps, fixed_map, map_values, tokens_for
from . import CheckFailed, check
from .expectations import expect_no_error, expect_value_error, what

NOTEBOOK = "02_seeing_attention"

IMAGE_ATOL = 1e-6  # the image may hold float32 copies of the weights; nothing else is allowed
STATISTICS_RTOL, STATISTICS_ATOL = 1e-4, 1e-6  # float32 sums of at most a few hundred weights
HEATMAP_LENGTHS = (1, 4, 7)  # one token, a typical sentence piece, the largest generated length
HEAD_COUNTS = (1, 3)
# The roles of the heads that Notebook 2 builds (its "what does each head do?" question).
HEAD_ROLES = {0: "previous token", 1: "same word", 2: "self", 3: "punctuation"}


def heatmap_case(length, seed):
    """A [L, L] map that is not symmetric (a transposed image cannot pass) and its tokens."""
    return map_values(seed, (length, length)), tokens_for(length, seed)


def expect_figure(outcome, call_text):
    expect_no_error(outcome, call_text)
    if not isinstance(outcome.value, FigureSummary):
        raise CheckFailed("contract", f"{call_text}\n  returned {what(outcome.value)}; it must return the matplotlib Figure")
    return outcome.value


def only_image(ax, call_text, where="the heatmap"):
    if len(ax.images) != 1:
        raise CheckFailed("figure-shows-weights", f"{call_text}\n  {where} axes holds {len(ax.images)} images (imshow or pcolormesh); "
                          f"expected exactly one")
    return ax.images[0]


def expect_image_is(image, weights, call_text, where="the heatmap"):
    """The image data is exactly the weights: row i = query i, column j = key j."""
    data = np.asarray(image.data, dtype=np.float64)
    expected = weights.to(torch.float64).numpy()
    if data.shape == expected.shape and np.allclose(data, expected, rtol=0, atol=IMAGE_ATOL):
        return
    if data.shape == expected.T.shape and np.allclose(data, expected.T, rtol=0, atol=IMAGE_ATOL):
        raise CheckFailed("figure-shows-weights", f"{call_text}\n  {where} shows the weights transposed: row i of the image must be "
                          f"query i (attention_weights[i, :]), with the keys along the x axis")
    if data.shape != expected.shape:
        raise CheckFailed("figure-shows-weights", f"{call_text}\n  {where} image has shape {list(data.shape)}; the weights are "
                          f"{list(expected.shape)}")
    i, j = np.unravel_index(np.nanargmax(np.abs(np.nan_to_num(data - expected, nan=np.inf))), data.shape)
    raise CheckFailed("figure-shows-weights", f"{call_text}\n  {where} image[{i}, {j}] = {data[i, j]:.6g}, but attention_weights[{i}, {j}] "
                      f"= {expected[i, j]:.6g}; show the weights themselves (no normalising, no rounding)")


def expect_tokens_on_axes(ax, tokens, call_text, where="the heatmap", y_may_be_shared=False):
    if ax.xticklabels != tokens:
        raise CheckFailed("figure-labelled", f"{call_text}\n  {where}'s x tick labels are {ax.xticklabels}; expected the key tokens "
                          f"{tokens}, one per column")
    if ax.yticklabels != tokens and not (y_may_be_shared and not any(ax.yticklabels)):
        raise CheckFailed("figure-labelled", f"{call_text}\n  {where}'s y tick labels (top row first) are {ax.yticklabels}; expected the "
                          f"query tokens {tokens}, one per row")


def heatmap_call(length, title=None):
    text = f"plot_attention_heatmap(attention_weights[{length}, {length}], tokens[{length}]"
    return text + (f", title={title!r})" if title is not None else ")")


@check("heatmap_image_is_the_weights", NOTEBOOK, points=3, grades="plot_attention_heatmap",
       shown_by="test_plot_attention_heatmap")
def heatmap_image_is_the_weights(student):
    for length in HEATMAP_LENGTHS:
        weights, tokens = heatmap_case(length, seed=length)
        call_text = heatmap_call(length)
        figure = expect_figure(student.call("plot_attention_heatmap", weights, tokens), call_text)
        if len(figure.plots) != 1:
            raise CheckFailed("contract", f"{call_text}\n  the figure has {len(figure.plots)} axes besides colorbars; "
                              f"expected one heatmap")
        expect_image_is(only_image(figure.plots[0], call_text), weights, call_text)
        if not figure.colorbars:
            raise CheckFailed("figure-labelled", f"{call_text}\n  the figure has no colorbar; add one (figure.colorbar(image, ax=ax)) "
                              f"so a reader can tell what a colour means")


@check("heatmap_is_labelled", NOTEBOOK, points=3, grades="plot_attention_heatmap",
       shown_by="test_plot_attention_heatmap")
def heatmap_is_labelled(student):
    for length, title in zip(HEATMAP_LENGTHS, (None, "Head 2 of layer 1", "Attention Weights")):
        weights, tokens = heatmap_case(length, seed=10 + length)
        call_text = heatmap_call(length, title)
        args = (weights, tokens) if title is None else (weights, tokens, title)
        figure = expect_figure(student.call("plot_attention_heatmap", *args), call_text)
        if not figure.plots:
            raise CheckFailed("figure-shows-weights", f"{call_text}\n  the figure has no axes with a heatmap")
        ax = figure.plots[0]
        expect_tokens_on_axes(ax, tokens, call_text)
        if "quer" not in ax.ylabel.lower() or "key" not in ax.xlabel.lower():  # query, queries, Keys, ...
            raise CheckFailed("figure-labelled", f"{call_text}\n  axis labels are x: {ax.xlabel!r}, y: {ax.ylabel!r}; the y axis must "
                              f"say it holds the queries and the x axis the keys")
        expected_title = "Attention Weights" if title is None else title
        if expected_title not in (ax.title, figure.title):
            raise CheckFailed("figure-labelled", f"{call_text}\n  the title is {ax.title or figure.title!r}; expected {expected_title!r}")
    for bad_shape, tokens in (((3, 4), ["a", "b", "c"]), ((3, 3), ["a", "b"])):
        call_text = f"plot_attention_heatmap(attention_weights{list(bad_shape)}, tokens[{len(tokens)}])"
        outcome = student.call("plot_attention_heatmap", torch.full(bad_shape, 0.25), tokens)
        expect_value_error(outcome, call_text, "weights that are not [len(tokens), len(tokens)]")


def multihead_case(num_heads, length, seed):
    """[num_heads, L, L] maps whose heads differ in range, so a per-head colour scale shows."""
    weights = torch.stack([map_values(seed + h, (length, length), sharpness=1.0 + 2 * h) for h in range(num_heads)])
    return weights, tokens_for(length, seed)


def multihead_call(num_heads, length, passed_heads=None):
    return (f"plot_multihead_attention(attention_weights[{num_heads}, {length}, {length}], tokens[{length}], "
            f"num_heads={num_heads if passed_heads is None else passed_heads})")


@check("multihead_one_panel_per_head", NOTEBOOK, points=3, grades="plot_multihead_attention",
       shown_by="test_plot_multihead_attention")
def multihead_one_panel_per_head(student):
    for num_heads, length in zip(HEAD_COUNTS, (4, 5)):
        weights, tokens = multihead_case(num_heads, length, seed=20)
        call_text = multihead_call(num_heads, length)
        figure = expect_figure(student.call("plot_multihead_attention", weights, tokens, num_heads), call_text)
        panels = [ax for ax in figure.plots if ax.images]
        if len(panels) != num_heads:
            raise CheckFailed("one-panel-per-head", f"{call_text}\n  the figure has {len(panels)} heatmaps; expected one per head "
                              f"({num_heads})")
        for head in range(num_heads):
            where = f"the panel titled {f'Head {head}'!r}"
            titled = [ax for ax in panels if ax.title.strip() == f"Head {head}"]
            if len(titled) != 1:
                raise CheckFailed("figure-labelled", f"{call_text}\n  panel titles are {[ax.title for ax in panels]}; each panel must "
                                  f"be titled 'Head i' for attention_weights[i] (i from 0)")
            expect_image_is(only_image(titled[0], call_text, where), weights[head], call_text, where)
            expect_tokens_on_axes(titled[0], tokens, call_text, where, y_may_be_shared=head > 0)


@check("multihead_shared_colour_scale", NOTEBOOK, points=2, grades="plot_multihead_attention",
       shown_by="test_plot_multihead_attention")
def multihead_shared_colour_scale(student):
    weights, tokens = multihead_case(3, 5, seed=30)
    call_text = multihead_call(3, 5)
    figure = expect_figure(student.call("plot_multihead_attention", weights, tokens, 3), call_text)
    images = [image for ax in figure.plots for image in ax.images]
    if len(images) != 3:
        raise CheckFailed("one-panel-per-head", f"{call_text}\n  the figure has {len(images)} heatmaps; expected 3")
    limits = {tuple(round(v, 9) for v in image.clim) for image in images}
    if len(limits) != 1:
        raise CheckFailed("shared-colour-scale", f"{call_text}\n  the heads use different colour scales {sorted(limits)}; give every "
                          f"heatmap the same vmin and vmax so equal colours mean equal weights")
    vmin, vmax = limits.pop()
    if not (vmin <= float(weights.min()) + IMAGE_ATOL and vmax >= float(weights.max()) - IMAGE_ATOL):
        raise CheckFailed("shared-colour-scale", f"{call_text}\n  the shared colour scale [{vmin:.4g}, {vmax:.4g}] does not cover the "
                          f"weights [{float(weights.min()):.4g}, {float(weights.max()):.4g}]")
    if not figure.colorbars:
        raise CheckFailed("figure-labelled", f"{call_text}\n  the figure has no colorbar; one shared colorbar is enough")


@check("multihead_rejects_wrong_head_count", NOTEBOOK, points=1, grades="plot_multihead_attention",
       shown_by="test_plot_multihead_attention")
def multihead_rejects_wrong_head_count(student):
    weights, tokens = multihead_case(3, 4, seed=40)
    for passed in (2, 4):
        call_text = multihead_call(3, 4, passed)
        outcome = student.call("plot_multihead_attention", weights, tokens, passed)
        expect_value_error(outcome, call_text, "a num_heads that does not match attention_weights.shape[0]")


STATISTICS = ("max_attention", "entropy", "diagonal_mass", "local_vs_global")


def expect_statistics(student, case):
    call_text = case.describe()
    outcome = student.call("analyze_attention_patterns", case.weights, window=case.window)
    expect_no_error(outcome, call_text)
    got = outcome.value
    if not isinstance(got, dict) or set(got) != set(STATISTICS):
        keys = sorted(got) if isinstance(got, dict) else what(got)
        raise CheckFailed("contract", f"{call_text}\n  returned {keys}; expected a dict with exactly the keys {list(STATISTICS)}")
    expected = reference_pattern_statistics(case.weights, case.window)
    for name in STATISTICS:
        value = got[name]
        if type(value) is not float:
            raise CheckFailed("contract", f"{call_text}\n  returned {name} as {what(value)}; every value must be a Python float "
                              f"(tensor.item() gives one)")
        want = expected[name]
        same = (value == want) if math.isinf(want) else (
            math.isfinite(value) and math.isclose(value, want, rel_tol=STATISTICS_RTOL, abs_tol=STATISTICS_ATOL))
        if not same:
            raise CheckFailed("statistics-match-reference", f"{call_text}\n  returned {name} = {value!r}; expected {want:.6g}")


@check("pattern_statistics_match_reference", NOTEBOOK, points=4, grades="analyze_attention_patterns",
       shown_by="test_analyze_attention_patterns")
def pattern_statistics_match_reference(student):
    @GRADING
    @given(case=attention_maps(masked_rows=0.0))
    @example(case=fixed_map((5, 5), window=1, seed=1))
    @example(case=fixed_map((3, 6, 6), window=2, seed=2))  # heads: statistics pool every row
    def agrees(case):
        expect_statistics(student, case)

    agrees()


@check("pattern_statistics_edge_cases", NOTEBOOK, points=3, grades="analyze_attention_patterns",
       shown_by="test_analyze_attention_patterns")
def pattern_statistics_edge_cases(student):
    @GRADING
    @given(case=attention_maps(masked_rows=0.4))
    @example(case=fixed_map((1, 1), window=0))  # L = 1: all weight on the diagonal, nothing global
    @example(case=fixed_map((4, 4), window=0, seed=3))  # window 0: local = the diagonal
    @example(case=fixed_map((2, 4, 4), window=9, seed=4))  # a window wider than L: local_vs_global = inf
    @example(case=fixed_map((2, 5, 5), window=1, seed=5, masked_rows=0.5))  # fully masked rows are left out
    def agrees(case):
        expect_statistics(student, case)

    agrees()
    one_hot = fixed_map((3, 3))
    one_hot.weights = torch.eye(3)  # every row certain: entropy 0 (0 ln 0 counts as 0), all on the diagonal
    expect_statistics(student, one_hot)


@check("head_roles_identified", NOTEBOOK, points=2, grades="HEAD_ROLES",
       shown_by="test_head_roles")
def head_roles_identified(student):
    outcome = student.value("HEAD_ROLES")
    expect_no_error(outcome, "HEAD_ROLES")
    roles = outcome.value
    if not isinstance(roles, dict):
        raise CheckFailed("contract", f"HEAD_ROLES is {what(roles)}; it must be a dict {{head number: role}}")
    answers = {int(k) if isinstance(k, (int, str)) and str(k).isdigit() else k: v for k, v in roles.items()}
    wrong = [head for head, role in HEAD_ROLES.items()
             if not isinstance(answers.get(head), str) or answers[head].strip().lower() != role]
    if wrong:
        raise CheckFailed("head-roles", f"HEAD_ROLES has {len(wrong)} of {len(HEAD_ROLES)} heads wrong (or missing); look at "
                          f"their heatmaps and statistics again")
