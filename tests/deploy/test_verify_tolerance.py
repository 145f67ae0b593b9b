"""The verify tolerance: absolute for probabilities, plus a relative part where raw outputs are large."""

import numpy as np

from solo_npu.deploy.verify import _passes
from solo_npu.models.contract import compare_raw_outputs


def test_relative_part_scales_with_the_reference_magnitude():
    ref = {"ploc": np.array([[30.0, -12.0]]), "plabel": np.array([[2.0, 1.0]])}
    cand = {"ploc": np.array([[30.0 + 2e-4, -12.0]]), "plabel": np.array([[2.0, 1.0 + 5e-5]])}
    stats = compare_raw_outputs(("ploc", "plabel"), ref, cand)
    assert stats["ploc_ref_max"] == 30.0 and np.isclose(stats["ploc_max_abs"], 2e-4)
    assert not _passes(stats, atol=1e-4)  # 2e-4 > 1e-4 absolute
    assert _passes(stats, atol=1e-4, rtol=1e-5)  # 2e-4 <= 1e-4 + 1e-5 * 30
    assert not _passes(stats, atol=1e-4, rtol=1e-6)  # 2e-4 > 1e-4 + 3e-5


def test_integer_mismatch_always_fails():
    assert not _passes({"labels_mismatch": 1.0, "scores_max_abs": 0.0}, atol=1.0, rtol=1.0)
    assert _passes({"labels_mismatch": 0.0, "scores_max_abs": 1e-5}, atol=1e-4)
