"""GramSums, the one sum x^T x behind every GPTQ Hessian (ONNX graphs and TFLite weights), and the
Hessian-inverse factor every GPTQ call propagates its rounding errors with."""

import numpy as np
import pytest

from converters.core._activations import GramSums


@pytest.mark.parametrize("budget", [1, 4096, 1 << 30])  # a flush per block, some, one at the end
def test_sums_equal_the_products_of_every_block(budget):
    rng = np.random.default_rng(0)
    blocks = {key: [rng.normal(size=(n, k)).astype(np.float32) for n in (1, 7, 30)]
              for key, k in (("narrow", 5), ("wide", 12))}
    grams = GramSums(budget, product=np.float64)
    for index in range(3):  # interleaved, as a batch feeds every input once
        for key, parts in blocks.items():
            grams.add(key, parts[index])
    sums = grams.sums()
    assert sorted(sums) == ["narrow", "wide"]
    for key, parts in blocks.items():
        x = np.concatenate(parts).astype(np.float64)
        assert sums[key].dtype == np.float64
        np.testing.assert_allclose(sums[key], x.T @ x, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("per_key", [False, True])
def test_per_key_sums_do_not_depend_on_the_other_keys(per_key):
    """per_key: a key's blocks are multiplied out when its own budget is full, so its sum is the
    same bits whether other keys were summed beside it or not (a prefetch of every input, then
    the weights' subset; converters/tflite/hessians.py). The shared budget (per_key False) groups
    a key's blocks by what the others hold: close, and only that."""
    rng = np.random.default_rng(1)
    parts = {key: [rng.normal(size=(n, 24)) * 10.0 ** rng.uniform(-3, 3) for n in (3, 50, 9, 71, 20, 5)]
             for key in ("a", "b", "c")}

    def summed(keys):
        grams = GramSums(4096, per_key=per_key, product=np.float64)
        for index in range(6):
            for key in keys:
                grams.add(key, parts[key][index])
        return grams.sums()

    alone, together = summed(["a"]), summed(["a", "b", "c"])
    if per_key:
        assert np.array_equal(alone["a"], together["a"])
    else:  # why per_key exists: these blocks, grouped otherwise, round otherwise
        assert not np.array_equal(alone["a"], together["a"])
    np.testing.assert_allclose(alone["a"], together["a"], rtol=1e-12)
    x = np.concatenate(parts["a"])
    np.testing.assert_allclose(together["a"], x.T @ x, rtol=1e-12)


def test_float32_products_are_summed_in_float64_within_float32_rounding():
    """GramSums(product=float32), what benchmarks/bench_gram_precision.py measures: each block's
    product in float32 (half the time), the sum of the blocks in float64. Against the float64
    products: within float32 rounding, on inputs of the spread a Hessian sees (channels 1e-2 to
    1e2)."""
    rng = np.random.default_rng(2)
    parts = [(rng.normal(size=(n, 40)) * 10.0 ** rng.uniform(-2, 2, size=40)).astype(np.float32)
             for n in (500, 3000, 17, 1200)]
    grams = GramSums(64 << 10, product=np.float32)  # several products
    for part in parts:
        grams.add("x", part)
    sums = grams.sums()["x"]
    x = np.concatenate(parts).astype(np.float64)
    exact = x.T @ x
    assert sums.dtype == np.float64
    scale = np.sqrt(np.outer(np.diag(exact), np.diag(exact)))  # |H_ij| <= sqrt(H_ii H_jj)
    assert np.abs(sums - exact).max() / scale.max() < 1e-5
    assert (np.abs(sums - exact) / scale).max() < 1e-5  # small entries too, relative to their channels
    assert not np.array_equal(sums, exact)  # float32 products really were used


def test_the_product_precision_is_read_when_a_sum_starts(monkeypatch):
    import converters.core._activations as activations

    assert activations.GRAM_PRODUCT is np.float64  # edge-convert's own (RESULTS.md run BG)
    monkeypatch.setattr(activations, "GRAM_PRODUCT", np.float32)
    assert GramSums().product == np.float32
    assert GramSums(product=np.float64).product == np.float64


def test_sums_can_be_read_twice_and_added_to():
    grams = GramSums(1 << 30)
    grams.add("x", np.ones((2, 3)))
    first = grams.sums()
    np.testing.assert_array_equal(first["x"], np.full((3, 3), 2.0))
    grams.add("x", np.ones((1, 3)))
    np.testing.assert_array_equal(grams.sums()["x"], np.full((3, 3), 3.0))
    np.testing.assert_array_equal(first["x"], np.full((3, 3), 2.0))  # an earlier result is not changed


@pytest.mark.parametrize("k", [1, 5, 64])
def test_inverse_cholesky_is_the_upper_factor_of_the_inverse(k):
    """gptq's error-propagation weights: the same matrix as the textbook cholesky(inv(H)).T."""
    from converters.core.gptq import inverse_cholesky

    rng = np.random.default_rng(k)
    x = rng.normal(size=(3 * k + 2, k)) * rng.uniform(0.01, 10.0, size=k)  # channels of unequal energy
    h = x.T @ x + 0.05 * np.eye(k)
    upper = inverse_cholesky(h)
    assert np.array_equal(upper, np.triu(upper)) and (np.diag(upper) > 0).all()
    expected = np.linalg.cholesky(np.linalg.inv(h)).T
    np.testing.assert_allclose(upper, expected, rtol=1e-10, atol=1e-12 * np.abs(expected).max())


def test_inverse_cholesky_refuses_a_hessian_that_is_not_positive_definite():
    from converters.core.gptq import inverse_cholesky

    with pytest.raises(np.linalg.LinAlgError, match="not positive definite"):
        inverse_cholesky(np.array([[1.0, 2.0], [2.0, 1.0]]))
