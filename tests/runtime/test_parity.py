"""runtime.parity: the comparison report of a backend's outputs with the reference."""
import math

import numpy as np

from moe_base.tolerances import get_tolerance
from runtime.parity import compare, parity_inputs


def test_an_output_with_nan_is_not_reported_as_identical():
    """Outputs with NaN (e.g. an fp16 graph that overflowed) have PSNR -inf; the summary said 'PSNR inf dB' and the
    dict None, as for outputs identical to the reference. Strict JSON (--json) holds neither infinity, so both PSNRs
    print as null there; 'identical' tells them apart."""
    ref = parity_inputs(4)
    broken = ref.copy()
    broken[0, 0, 0, 0] = np.nan
    report = compare(ref, broken, get_tolerance("ort", "fp32"), "ort")
    assert not report.passed and report.psnr == -math.inf
    assert "PSNR     -inf dB" in report.summary()
    assert report.to_dict()["psnr"] == -math.inf and report.to_dict()["identical"] is False
    same = compare(ref, ref, get_tolerance("ort", "fp32"), "ort")
    assert same.passed and "PSNR     inf dB" in same.summary() and same.to_dict()["psnr"] is None
    assert same.to_dict()["identical"] is True
    close = compare(ref, ref + 1e-7, get_tolerance("ort", "fp32"), "ort")
    assert close.passed and close.to_dict()["identical"] is False


def test_a_self_check_just_past_its_bound_prints_numbers_that_differ():
    """A mean difference just over the bound printed as 'by 0.0005 on average (allowed 0.0005)'."""
    import pytest

    from moe_base.errors import ArtifactMismatchError
    from runtime.parity import self_check, self_check_record

    outputs = parity_inputs(2)
    record = self_check_record(outputs)
    shifted = lambda x: outputs + 0.0005001  # noqa: E731 - every output off by just over the bound
    with pytest.raises(ArtifactMismatchError, match=r"by 0\.0005\d+ on average \(allowed 0\.0005\)"):
        self_check(shifted, record, 0.0005, "the model")
    self_check(lambda x: outputs + 0.0004, record, 0.0005, "the model")  # within: no error


def test_a_reference_with_nan_fails_the_check_instead_of_passing_it():
    """Only the output was checked for NaN: a NaN in the reference made every difference NaN, and every comparison
    with a limit False, so the check passed (max abs NaN, PSNR NaN, no failure)."""
    ref = parity_inputs(2)
    out = ref.copy()
    ref[0, 0, 0, 0] = np.nan
    report = compare(ref, out, get_tolerance("ort", "fp32"), "ort")
    assert not report.passed and report.psnr == -math.inf and report.max_abs == math.inf
    assert report.failures[0].startswith("the reference (the PyTorch model's output) has NaN or Inf values")
    assert report.to_dict()["identical"] is False


def test_broken_weights_are_named_as_the_cause_without_numpy_warnings():
    """Weights that give NaN and Inf: numpy warned 'invalid value encountered in subtract' (inf - inf in the p99's
    interpolation), the p99 read nan, and the headline said the exported graph does not match PyTorch, the cause
    fourth in the list."""
    import warnings

    ref = parity_inputs(2)
    ref[0, 0, :4, 0] = [np.nan, np.inf, np.inf, -np.inf]
    ref[1] = np.inf  # a whole image: inf - inf there, and infinities past the 99th percentile
    out = ref.copy()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        report = compare(ref, out, get_tolerance("ort", "fp32"), "ort")
    assert report.reference_broken and report.p99_abs == math.inf
    assert report.headline("the exported graph").startswith("the PyTorch model itself gives NaN or Inf")
    good = compare(parity_inputs(2), parity_inputs(2) + 0.5, get_tolerance("ort", "fp32"), "ort")
    assert not good.reference_broken and good.headline("the exported graph") == "the exported graph does not match PyTorch"
