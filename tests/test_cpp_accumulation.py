"""The C++ kernels' sums over a large reduced dimension stay exact to float32's own rounding.

A float32 running sum loses accuracy as the number of terms grows; the kernels carry these sums in double
(``wide_sum_t`` in csrc/common.h), so a float32 result is within one ulp of the float64 value however large the
reduction. At K = 2^22 terms the former float32 block sums were off by 3.4e-6 (minibatch stddev) and 4.7e-7
(gradient penalty); benchmarks/NOTES.md has the numbers up to 2^28.
"""

from __future__ import annotations

import torch

import ganops  # noqa: F401  (loads ganops._C)
from helpers import require_backend

K = 1 << 22
# One float32 ulp relative to the value: the float32 rounding of the exact result alone may cost half of it.
ONE_ULP = 2.0**-23


def test_minibatch_stddev_statistic_over_2_22_positions_is_float32_exact():
    require_backend("cpp")
    generator = torch.Generator().manual_seed(0)
    # Two members of opposite sign: every position's stddev is |x0| ~ 1.1, so the K terms of the mean are alike,
    # which is where a float32 running sum drifts most.
    x0 = 1.1 + 1e-3 * torch.randn(K, generator=generator)
    x = torch.stack([x0, -x0]).reshape(2, 1, 2048, 2048)
    exact = (x.double().var(dim=0, unbiased=False) + 1e-8).sqrt().mean()
    statistic = torch.ops.ganops.minibatch_stddev_cpp(x, 2, 1, 1e-8)[:, -1]
    assert ((statistic.double() - exact).abs().max() / exact).item() <= ONE_ULP


def test_gradient_penalty_over_2_22_elements_is_float32_exact():
    require_backend("cpp")
    generator = torch.Generator().manual_seed(0)
    grad = 0.3 + 0.01 * torch.randn(1, K, generator=generator)
    exact = (grad.double().square().sum(dim=1).sqrt() - 1.0).square().mean()
    penalty, _ = torch.ops.ganops.gradient_penalty_cpp(grad, 1.0, False)
    assert ((penalty.double() - exact).abs() / exact).item() <= ONE_ULP
