"""GPU-tagged hidden checks of Notebook 1 (README.md, "GPU-tagged cells"): the student's functions on CUDA.

Trusted code. Inputs are made here, sent to the worker with tensor_device="cuda",
and the results are compared with the float64 CPU reference at the tolerances
PyTorch's SDPA tests use per dtype. On a grader without CUDA these checks are
never run: `run_check` records them as pending (course_config.GRADE_ON_CUDA).
"""
import numpy as np
import torch
from hypothesis import example, given
from hypothesis import strategies as st

from ..strategies import GRADING, attention_inputs, fixed_case
from . import CheckFailed, check
from .attention import NOTEBOOK, expected_for, refuse_ready_made_attention
from .expectations import expect_close, expect_no_error, expect_pair, expect_shape, expect_tensor

CUDA_DTYPES = [torch.float32, torch.float16, torch.bfloat16]
# Where the GPU checks send their inputs. Always "cuda" when grading; tests/test_gpu.py runs the whole
# `make autograde-gpu` path on a host without CUDA by setting it to "cpu" (the CPU stand-in) in its own
# process, with torch.cuda.is_available patched.
GPU_DEVICE = "cuda"


def device_hint(outcome, call_text):
    """A device mix-up gets a message that says what to fix."""
    if outcome.raised and "device" in outcome.raised[1].lower():
        kind, message = outcome.raised
        raise CheckFailed("stays-on-cuda", f"{call_text} on CUDA\n  raised {kind}: {message}\n  Your code builds a tensor on the CPU "
                          f"inside attention() (torch.tensor, torch.zeros, a mask, a fill value ...): create it with "
                          f"device=Q.device, or use *_like functions.")


def expect_on_cuda(value, name, call_text):
    if not value.device.startswith(GPU_DEVICE):
        raise CheckFailed("stays-on-cuda", f"{call_text} on CUDA\n  returned {name} on {value.device}; it must stay on the inputs' "
                          f"device (cuda)")


@check("cuda_attention_matches", NOTEBOOK, points=4, grades="attention",
       shown_by="test_on_gpu", gpu=True, family="attention")
def cuda_attention_matches(student):
    @GRADING
    @given(data=st.data(), dtype=st.sampled_from(CUDA_DTYPES),
           mask_kind=st.sampled_from([None, "bool", "float", "fully_masked_bool", "fully_masked_float"]))
    @example(data=None, dtype=torch.float32, mask_kind=None)
    def agrees_on_cuda(data, dtype, mask_kind):
        if data is None:
            case = fixed_case((2, 3, 5, 8), (2, 3, 7, 8), (2, 3, 7, 4), dtype=dtype)
        else:
            case = data.draw(attention_inputs(dtype=dtype, mask_kind=mask_kind,
                                              broadcast=not (mask_kind or "").startswith("fully")))
        call_text = case.describe()
        refuse_ready_made_attention(student)
        grad = (0, 1, 2) if dtype == torch.float32 else ()
        (ref_out, out_tol), (ref_weights, weights_tol) = expected_for(case)
        grad_outputs = [torch.ones(ref_out.shape, dtype=dtype), torch.zeros(ref_weights.shape, dtype=dtype)] if grad else None
        outcome = student.call("attention", case.Q, case.K, case.V, mask=case.mask, scale=case.scale,
                               grad=grad, grad_outputs=grad_outputs, tensor_device=GPU_DEVICE)
        device_hint(outcome, call_text)
        refuse_ready_made_attention(student, outcome)
        output, weights = expect_pair(outcome, call_text + " on CUDA")
        for name, value in (("output", output), ("weights", weights)):
            expect_on_cuda(value, name, call_text)
        expect_close(weights, ref_weights, weights_tol, "weights", call_text + " on CUDA", rule="cuda-matches-cpu")
        expect_close(output, ref_out, out_tol, "output", call_text + " on CUDA", rule="cuda-matches-cpu")
        if grad:
            if outcome.backward_raised:
                raise CheckFailed("gradients-flow", f"{call_text} on CUDA, then backward()\n  raised {': '.join(outcome.backward_raised)}")
            for name, got in zip(("Q.grad", "K.grad", "V.grad"), outcome.grads):
                if got is not None and not bool(np.isfinite(expect_tensor(got, name, call_text).array).all()):
                    raise CheckFailed("finite", f"{call_text} on CUDA, then backward()\n  {name} has inf or NaN entries")

    agrees_on_cuda()


@check("cuda_causal_mask", NOTEBOOK, points=2, grades="create_causal_mask",
       shown_by="test_on_gpu", gpu=True)
def cuda_causal_mask(student):
    @GRADING
    @given(n=st.integers(0, 16))
    @example(n=4)
    def builds_on_cuda(n):
        call_text = f"create_causal_mask({n}, device='cuda')"
        outcome = student.call("create_causal_mask", n, device=GPU_DEVICE)
        expect_no_error(outcome, call_text)
        mask = expect_tensor(outcome.value, "the mask", call_text)
        expect_on_cuda(mask, "the mask", "create_causal_mask")
        expect_shape(mask, (n, n), "the mask", call_text)
        i, j = np.meshgrid(np.arange(n), np.arange(n), indexing="ij")
        expected = np.where(j <= i, 0.0, -np.inf)
        if mask.dtype != "float32" or not np.array_equal(mask.array.astype(np.float64), expected):
            raise CheckFailed("mask-values", f"{call_text}\n  returned a {mask.dtype} mask that is not 0 on and below the diagonal "
                              f"and -inf above it")

    builds_on_cuda()
