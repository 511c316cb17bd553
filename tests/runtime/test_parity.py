"""runtime.parity: the comparison report of a backend's outputs with the reference."""
import math

import numpy as np

from moe_base.tolerances import get_tolerance
from runtime.parity import compare, parity_inputs


def test_an_output_with_nan_is_not_reported_as_identical():
    """Outputs with NaN (e.g. an fp16 graph that overflowed) have PSNR -inf; the summary said 'PSNR inf dB' and the
    dict None, as for outputs identical to the reference."""
    ref = parity_inputs(4)
    broken = ref.copy()
    broken[0, 0, 0, 0] = np.nan
    report = compare(ref, broken, get_tolerance("ort", "fp32"), "ort")
    assert not report.passed and report.psnr == -math.inf
    assert "PSNR     -inf dB" in report.summary()
    assert report.to_dict()["psnr"] == -math.inf
    same = compare(ref, ref, get_tolerance("ort", "fp32"), "ort")
    assert same.passed and "PSNR     inf dB" in same.summary() and same.to_dict()["psnr"] is None
