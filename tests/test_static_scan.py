"""The static scan finds ready-made attention however it is spelled, and leaves a student's own names alone."""
import pytest

from autograder.static_scan import find_forbidden

FOUND = [
    "out = torch.nn.functional.scaled_dot_product_attention(Q, K, V)",
    "from torch.nn.functional import scaled_dot_product_attention as sdpa",
    "f = getattr(F, 'scaled_dot' + '_product_attention')",
    "f = getattr(F, ''.join(['scaled_dot_', 'product_attention']))",
    "mha = torch.nn.MultiheadAttention(4, 1)",
    "w = torch.ops.aten._safe_softmax(x, -1)",
    "%timeit F.scaled_dot_product_attention(Q, K, V)\nx = F.scaled_dot_product_attention(Q, K, V)",
    "def broken(:\n    F.scaled_dot_product_attention(Q, K, V)",  # not Python: text fallback
]
NOT_FOUND = [
    "def scaled_dot_product_attention(Q, K, V):\n    return attention(Q, K, V)\ny = scaled_dot_product_attention(1, 2, 3)",
    "class MultiHeadAttention(torch.nn.Module):\n    pass",
    'def attention(Q, K, V):\n    """Like F.scaled_dot_product_attention, but by hand."""\n    return Q',
    "# not F.scaled_dot_product_attention: we build it ourselves\nx = torch.softmax(s, dim=-1)",
]


@pytest.mark.parametrize("source", FOUND)
def test_found(source):
    assert find_forbidden([source])


@pytest.mark.parametrize("source", NOT_FOUND)
def test_not_found(source):
    assert find_forbidden([source]) == []


def test_names_defined_in_another_cell_are_the_students_own():
    cells = ["def scaled_dot_product_attention(Q, K, V):\n    return Q", "out = scaled_dot_product_attention(1, 2, 3)"]
    assert find_forbidden(cells) == []


def test_only_the_cells_a_student_fills_in_are_read_and_named():
    """The notebook's rule: a scratch cell may compare with PyTorch's attention; a filled-in cell may not."""
    scratch = ["import torch.nn.functional as F\nprint(F.scaled_dot_product_attention(Q, K, V))",
               "def scaled_dot_product_attention(Q, K, V):\n    return Q"]  # the student's own helper
    own_helper = "def attention(Q, K, V):\n    return scaled_dot_product_attention(Q, K, V)"
    assert find_forbidden([own_helper], labels=["attention"], context=scratch) == []
    cheat = "import torch.nn.functional as F\n\ndef attention(Q, K, V):\n    return F.scaled_dot_product_attention(Q, K, V)"
    assert find_forbidden([cheat], labels=["attention"], context=scratch) == [
        ("attention", 4, "scaled_dot_product_attention")]


def test_the_notebook_states_exactly_the_names_the_grader_forbids():
    import ast

    from autograder.static_scan import FORBIDDEN
    from tests.students import release_notebook

    helpers = next(c for c in release_notebook().cells if c.metadata.get("nbgrader", {}).get("grade_id") == "test_helpers")
    stated = next(ast.literal_eval(node.value) for node in ast.walk(ast.parse(helpers.source))
                  if isinstance(node, ast.Assign) and node.targets[0].id == "READY_MADE_ATTENTION")
    assert stated == FORBIDDEN
    intro = release_notebook().cells[0].source
    assert all(f"`{name}`" in intro for name in FORBIDDEN), "the rule lists every name where it is given"
