"""The input checks of facelab.core.errors against a brute-force reference."""

import math

import pytest
import torch

from facelab.core.errors import (
    FacelabError,
    NonFiniteError,
    RangeError,
    expect_finite,
    expect_finite_in_range,
    expect_range,
    extremes,
)

DTYPES = [torch.float16, torch.bfloat16, torch.float32, torch.float64]


def _reference_finite(x: torch.Tensor) -> bool:
    return all(math.isfinite(v) for v in x.double().flatten().tolist())


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
@pytest.mark.parametrize("where", [0, 777, -1])
def test_expect_finite_finds_one_bad_entry_anywhere(dtype, bad, where):
    x = torch.rand(3, 17, 31).to(dtype)  # odd sizes: the bad entry may sit in a vector tail
    expect_finite(x, "x")  # clean input passes
    x.view(-1)[where] = bad
    assert not _reference_finite(x)
    with pytest.raises(NonFiniteError, match=r"x: expected finite values, got 1 NaN/Inf"):
        expect_finite(x, "x")
    with pytest.raises(NonFiniteError):
        expect_finite_in_range(x, 0.0, 1.0, "x")


def test_expect_finite_agrees_with_reference_on_random_masks():
    g = torch.Generator().manual_seed(0)
    for _ in range(50):
        x = torch.randn(64, generator=g)
        k = int(torch.randint(0, 3, (), generator=g))
        idx = torch.randint(0, 64, (k,), generator=g)
        x[idx] = float("nan") if k == 1 else float("inf")
        ok = _reference_finite(x)
        try:
            expect_finite(x, "x")
            passed = True
        except NonFiniteError:
            passed = False
        assert passed == ok


def test_expect_finite_ignores_integers_and_empty():
    expect_finite(torch.arange(5), "x")
    expect_finite(torch.empty(0), "x")
    expect_finite_in_range(torch.empty(0, 3), 0.0, 1.0, "x")


def test_expect_range_reports_min_and_max_and_rejects_nan():
    x = torch.tensor([0.5, -0.25, 1.5])
    with pytest.raises(
        RangeError, match=r"expected values in \[0.0, 1.0\], got min -0.25 and max 1.5"
    ):
        expect_range(x, 0.0, 1.0, "x")
    expect_range(torch.tensor([1.00005]), 0.0, 1.0, "x")  # within tol
    with pytest.raises(RangeError):
        expect_range(torch.tensor([1.001]), 0.0, 1.0, "x")
    with pytest.raises(RangeError, match="nan"):  # NaN compares false with both bounds
        expect_range(torch.tensor([0.5, float("nan")]), 0.0, 1.0, "x")
    with pytest.raises(RangeError):
        expect_finite_in_range(torch.tensor([0.5, 2.0]), 0.0, 1.0, "x")
    assert issubclass(RangeError, FacelabError) and issubclass(NonFiniteError, ValueError)


def test_expect_range_on_integer_tensor():
    expect_range(torch.tensor([0, 255], dtype=torch.uint8), 0, 255, "x")
    with pytest.raises(RangeError, match="max 255"):
        expect_range(torch.tensor([0, 255], dtype=torch.uint8), 0, 1, "x")


def test_extremes_equal_a_python_min_and_max():
    x = torch.randn(7, 13, dtype=torch.float64)
    values = x.flatten().tolist()
    assert extremes(x) == (min(values), max(values))
    x[3, 5] = float("nan")
    assert all(math.isnan(v) for v in extremes(x))
