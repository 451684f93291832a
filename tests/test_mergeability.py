"""Known answers of vfcore.mergeability: metrics of identical and planted pairs, the predictor."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch

from vfcore import mergeability
from vfcore.align import align
from vfcore.mergeability import (
    choose_lambda,
    lasso_fit,
    leave_one_group_out,
    matched_correlation,
    nested_leave_one_group_out,
    pair_metrics,
    spearman,
)
from vfcore.models import build_model
from vfcore.spec import spec_for
from vfcore.transform import permute

torch.set_num_threads(1)


def tiny(name: str = "vgg11_bn", seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build_model(name, width=1 / 16, image_size=16).eval()


def data(n: int = 2, size: int = 16) -> tuple[list[torch.Tensor], torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    batches = [torch.randn(size, 3, 16, 16, generator=g) for _ in range(n)]
    return batches, torch.randint(0, 10, (size,), generator=g)


def permuted_copy(model: torch.nn.Module) -> torch.nn.Module:
    """The same function with every group's hidden units shuffled."""
    spec = spec_for(model)
    g = torch.Generator().manual_seed(1)
    perms = {k: torch.randperm(n, generator=g) for k, n in spec.check(model.state_dict()).items()}
    other = copy.deepcopy(model)
    other.load_state_dict(permute(spec, perms, model.state_dict()))
    return other


def assert_identical_pair(m: dict[str, float]) -> None:
    assert m["weight_cosine"] == pytest.approx(1, abs=1e-12)
    assert m["weight_distance"] == pytest.approx(0, abs=1e-12)
    assert m["wm_cosine"] == pytest.approx(1, abs=1e-12)
    assert m["activation_correlation"] == pytest.approx(1, abs=1e-6)
    assert m["gradient_cosine"] == pytest.approx(1, abs=1e-6)
    assert m["vf_ratio"] == pytest.approx(1, abs=1e-6)


def test_a_model_with_itself() -> None:
    a = tiny()
    batches, labels = data()
    assert_identical_pair(pair_metrics(a, a, align(a, a, "direct"), batches, labels))


def test_a_permuted_copy_after_and_without_alignment() -> None:
    a = tiny()
    b = permuted_copy(a)
    batches, labels = data()
    pairs = [(x, y) for x, y in zip(batches, [labels, labels], strict=True)]
    assert_identical_pair(pair_metrics(a, b, align(a, b, "wm"), pairs))
    unaligned = pair_metrics(a, b, align(a, b, "direct"), batches, labels)
    assert unaligned["weight_cosine"] < 0.5 and unaligned["activation_correlation"] < 0.5
    assert unaligned["vf_ratio"] < 0.9


def test_weight_metrics_of_a_negated_head() -> None:
    a = tiny("vgg11")
    b = copy.deepcopy(a)
    with torch.no_grad():
        b.classifier.weight.neg_()
    batches, labels = data()
    m = pair_metrics(a, b, align(a, b, "direct"), batches, labels)
    weights = [p.detach().double() for n, p in a.named_parameters() if n.endswith("weight")]
    total = sum(float(w.pow(2).sum()) for w in weights)
    head = float(a.classifier.weight.detach().double().pow(2).sum())
    assert m["weight_cosine"] == pytest.approx((total - 2 * head) / total, rel=1e-12)
    assert m["weight_distance"] == pytest.approx(2 * math.sqrt(head), rel=1e-12)
    assert m["activation_correlation"] == pytest.approx(1, abs=1e-6)  # the head is read by none


def test_matched_correlation_applies_dense_maps() -> None:
    # b's unit 0 is a's unit 1 doubled, b's unit 1 is -a's unit 0: the dense map T_b = [[0, -1],
    # [0.5, 0]] takes b's units back to a's, so every matched correlation is 1
    g = torch.Generator().manual_seed(0)
    fa = torch.randn(500, 2, generator=g, dtype=torch.float64)
    fb = torch.stack([2 * fa[:, 1], -fa[:, 0]], 1)
    cov = torch.cov(torch.cat([fa, fb], 1).T, correction=0)
    t_b = torch.tensor([[0.0, -1.0], [0.5, 0.0]], dtype=torch.float64)
    assert matched_correlation(cov, None, (t_b, t_b.inverse())) == pytest.approx(1, abs=1e-12)
    assert matched_correlation(cov, None, torch.tensor([1, 0])) == pytest.approx(0, abs=1e-12)
    assert matched_correlation(cov, None, None) == pytest.approx(0, abs=0.1)


def test_labels_are_checked() -> None:
    a = tiny()
    batches, labels = data()
    with pytest.raises(ValueError, match="labels"):
        pair_metrics(a, a, align(a, a, "direct"), batches)
    with pytest.raises(ValueError, match="labels"):
        pair_metrics(a, a, align(a, a, "direct"), batches, labels[:3])


def test_spearman() -> None:
    assert spearman([1, 2, 3, 4], [1, 4, 9, 16]) == pytest.approx(1)
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1)
    assert spearman([1, 2, 3, 4, 5], [2, 1, 4, 3, 5]) == pytest.approx(0.8)  # 1 - 6*4 / 120
    assert math.isnan(spearman([1, 1, 1], [1, 2, 3]))


def synthetic(n: int = 200, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 5)) * [1.0, 3.0, 0.5, 2.0, 1.0] + [0.0, 1.0, -2.0, 0.0, 5.0]
    y = 3.0 * X[:, 0] - 2.0 * X[:, 1] + 1.0 + 0.1 * rng.normal(size=n)
    return X, y


def test_lasso_recovers_the_support() -> None:
    X, y = synthetic()
    fit = lasso_fit(X, y, lam=0.1)
    assert np.all(fit.coef[:2] != 0) and np.all(fit.coef[2:] == 0)
    assert fit.coef[0] > 2.5 and fit.coef[1] < -1.5
    empty = lasso_fit(X, y, lam=100.0)
    assert np.all(empty.coef == 0) and empty.intercept == pytest.approx(y.mean())


def test_lasso_without_penalty_is_least_squares() -> None:
    X, y = synthetic(n=60, seed=1)
    X[:, 3] += 0.8 * X[:, 0]  # correlated features converge more slowly, but to the same answer
    fit = lasso_fit(X, y, lam=0.0)
    design = np.column_stack([X, np.ones(len(y))])
    expected = np.linalg.lstsq(design, y, rcond=None)[0]
    np.testing.assert_allclose(fit.coef, expected[:5], rtol=1e-8, atol=1e-9)
    assert fit.intercept == pytest.approx(expected[5], abs=1e-8)


def grouped(seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    X, y = synthetic(n=30, seed=seed)
    return X, y, np.repeat(np.arange(5), 6)


def test_logo_predictions_never_use_their_own_group() -> None:
    X, y, groups = grouped()
    base = leave_one_group_out(X, y, groups, lam=0.01)
    planted = y + np.where(groups == 2, 1000.0, 0.0)  # a large offset on group 2 only
    moved = leave_one_group_out(X, planted, groups, lam=0.01)
    np.testing.assert_array_equal(moved[groups == 2], base[groups == 2])
    assert np.all(np.abs(moved[groups != 2] - base[groups != 2]) > 10)
    held = groups == 3
    by_hand = lasso_fit(X[~held], y[~held], 0.01).predict(X[held])
    np.testing.assert_array_equal(base[held], by_hand)


def test_choose_lambda_and_nested_logo() -> None:
    X, y, groups = grouped()
    grid = [0.0, 0.01, 0.1, 1.0, 10.0]
    assert choose_lambda(X, 3.0 * X[:, 0] + 1.0, groups, grid) == 0.0  # exact: no penalty wins
    noise = np.random.default_rng(5).normal(size=len(y))
    assert choose_lambda(X, noise, groups, grid) == 10.0  # no signal: predict the mean
    predictions, chosen = nested_leave_one_group_out(X, y, groups, [0.05])
    np.testing.assert_array_equal(predictions, leave_one_group_out(X, y, groups, 0.05))
    assert chosen == dict.fromkeys(range(5), 0.05)
    with pytest.raises(ValueError, match="groups"):
        leave_one_group_out(X, y, np.zeros(len(y)), 0.1)
    with pytest.raises(ValueError, match="lam"):
        lasso_fit(X, y, -1.0)


def test_choose_lambda_passes_over_a_lam_whose_lasso_does_not_converge(monkeypatch) -> None:
    X, y, groups = grouped()
    fit = mergeability.lasso_fit

    def stalls_without_penalty(X, y, lam, **kwargs):
        if lam == 0.0:
            raise RuntimeError("lasso did not converge")
        return fit(X, y, lam, **kwargs)

    monkeypatch.setattr(mergeability, "lasso_fit", stalls_without_penalty)
    assert choose_lambda(X, 3.0 * X[:, 0] + 1.0, groups, [0.0, 0.01]) == 0.01
    with pytest.raises(RuntimeError, match="converged for no lam"):
        choose_lambda(X, y, groups, [0.0])
