"""What the student's own process says about itself is not believed (issue 18, third round).

The worker that holds a student's code also measures what checks need beyond the returned values:
the memory a call works in (Notebook 4's tiled and local attention, the KV cache) and the ops it
dispatched (Notebook 1's ban on ready-made attention). Student code shares that process. Each route
below was measured scoring full marks; built from the reference solution but computing the whole
[L, S] matrix (or calling PyTorch's attention), each must now lose the points or have them withheld
for a TA (pending, flagged), while the honest reference keeps them (tests/test_mutations_beyond.py).
"""
import pytest

from tests.grading import grade_checks
from tests.students import NB1, NB4, reference_answers, student_notebook

FULL_MATRIX = "attention(Q, K, V, mask=mask, scale=scale)[0]"
HEADER = ("def tiled_attention(Q, K, V, mask=None, scale=True, block_size=32):\n"
          "    if block_size < 1:\n        raise ValueError(f'block_size = {block_size} must be at least 1')\n")

ROUTES = {
    # dispatch modes are thread-local: the recorder never sees another thread's ops
    "in_a_thread": "import threading\n" + HEADER + (
        "    box = []\n"
        f"    worker = threading.Thread(target=lambda: box.append({FULL_MATRIX}))\n"
        "    worker.start(); worker.join()\n    return box[0]\n"),
    # numpy's memory is not PyTorch's
    "scores_in_numpy": "import numpy as np\n" + HEADER + (
        "    if mask is not None or Q.dim() != 3:\n"
        f"        return {FULL_MATRIX}\n"
        "    s = np.matmul(Q.numpy(), K.transpose(-2, -1).numpy()) / (Q.shape[-1] ** 0.5 if scale else 1.0)\n"
        "    p = np.exp(s - s.max(-1, keepdims=True)); p /= p.sum(-1, keepdims=True)\n"
        "    return torch.from_numpy(p @ V.numpy())\n"),
    # a buffer made when the cell ran, filled in place during the call: no new [L, S] tensor
    "scratch_buffer": "_SCRATCH = torch.empty(1 << 16)\n" + HEADER + (
        "    if mask is not None:\n"
        f"        return {FULL_MATRIX}\n"
        "    scores = _SCRATCH[: Q.shape[:-1].numel() * K.shape[-2]].view(*Q.shape[:-1], K.shape[-2])\n"
        "    torch.matmul(Q, K.transpose(-2, -1), out=scores)\n"
        "    if scale:\n        scores.div_(Q.shape[-1] ** 0.5)\n"
        "    scores.sub_(scores.amax(-1, keepdim=True)).exp_()\n"
        "    scores.div_(scores.sum(-1, keepdim=True))\n"
        "    return scores @ V\n"),
    "exclude_dispatch_key": HEADER + (
        "    with torch._C._ExcludeDispatchKeyGuard(torch._C.DispatchKeySet(torch._C.DispatchKey.Python)):\n"
        f"        return {FULL_MATRIX}\n"),
    "disable_current_modes": "from torch.utils._python_dispatch import _disable_current_modes\n" + HEADER + (
        f"    with _disable_current_modes():\n        return {FULL_MATRIX}\n"),
    # the recorder's class, found by a name the scan cannot read, made to record nothing
    "patched_recorder": "import sys\n" + HEADER + (
        "    worker = sys.modules[''.join(reversed('__niam__'))]\n"
        "    recorder = getattr(worker, ''.join(reversed('redroceRpO')), None)\n"
        "    if recorder is not None:\n        recorder._measure = lambda *a: None\n"
        f"    return {FULL_MATRIX}\n"),
    "patched_recorder_by_getattr": "import torch\n" + HEADER + (
        "    recorder = getattr(torch.utils, ''.join(reversed('hctapsid_nohtyp_')))\n"
        f"    return {FULL_MATRIX}\n"),
    # every reply of the worker edited on its way out
    "edits_every_reply": "import json\n_dumps = json.dumps\n"
                         "json.dumps = lambda obj, **kw: _dumps({**obj, 'largest_tensor': 0} if isinstance(obj, dict) "
                         "and 'largest_tensor' in obj else obj, **kw)\n" + HEADER + f"    return {FULL_MATRIX}\n",
}


@pytest.mark.parametrize("route", sorted(ROUTES))
def test_a_route_around_the_memory_measure_keeps_no_memory_points(route):
    answers = {**reference_answers(NB4), "tiled_attention": ROUTES[route]}
    verdicts = grade_checks(student_notebook(answers, name=NB4), NB4,
                            only=["tiled_attention_stays_within_its_blocks", "tiled_attention_matches_attention"])
    assert verdicts["tiled_attention_matches_attention"].status == "passed", "the route computes the right answer"
    memory = verdicts["tiled_attention_stays_within_its_blocks"]
    assert memory.status == "failed" or (memory.status == "pending" and memory.flagged), (route, memory)
    print(f"{route}: {memory.status}: {memory.message.splitlines()[0][:160]}")


def test_editing_the_workers_replies_does_not_clear_ready_made_attention():
    """Before: a module-level wrapper on json.dumps that emptied `fused` in every reply turned a caught
    F.scaled_dot_product_attention (every attention check lost) into 70 of 70, not flagged."""
    answers = reference_answers(NB1)
    answers["attention"] = (
        "import json\nimport torch.nn.functional as F\n_dumps = json.dumps\n"
        "json.dumps = lambda obj, **kw: _dumps({**obj, 'fused': []} if isinstance(obj, dict) else obj, **kw)\n"
        "def attention(Q, K, V, mask=None, scale=True):\n"
        "    check_attention_inputs(Q, K, V, mask)\n"
        "    sdpa = getattr(F, ''.join(reversed('noitnetta_tcudorp_tod_delacs')))\n"
        "    m = mask if mask is None or mask.dim() > 1 else mask.expand(Q.shape[-2], -1)\n"
        "    out = sdpa(Q, K, V, attn_mask=m, scale=None if scale else 1.0)\n"
        "    return out, masked_softmax(apply_mask(compute_scores(Q, K, scale), mask))")
    verdicts = grade_checks(student_notebook(answers), NB1,
                            only=["attention_matches_reference", "attention_no_fused_kernels"])
    for name, verdict in verdicts.items():
        assert verdict.status == "failed" or (verdict.status == "pending" and verdict.flagged), (name, verdict)
