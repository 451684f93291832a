"""Known answers of vfcore.ties: identity, a hand-worked example, agreement, and sign statistics."""

from __future__ import annotations

import pytest
import torch

from vfcore.merge import interpolate
from vfcore.models import build_model
from vfcore.ties import sign_disagreement, task_vectors, ties_keys, ties_merge

torch.set_num_threads(1)


def tiny_state(seed: int) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    model = build_model("vgg11_bn", width=1 / 16, image_size=16)
    state = model.state_dict()
    for key, t in state.items():  # generic values everywhere, norm buffers included
        if t.is_floating_point():
            t.copy_(torch.randn_like(t).abs() if key.endswith("running_var") else
                    torch.randn_like(t))
    return state


def test_keys_are_conv_and_linear_weights_and_biases() -> None:
    keys = ties_keys(tiny_state(0))
    assert "features.0.weight" in keys and "features.0.bias" in keys
    assert "classifier.weight" in keys and "classifier.bias" in keys
    assert not any(k.startswith("features.1.") for k in keys)  # the BatchNorm after conv 0


@pytest.mark.parametrize("base", ["zero", "midpoint"])
def test_one_model_comes_back(base: str) -> None:
    state = tiny_state(0)
    merged = ties_merge([state], base=base, density=1.0, lam=1.0)
    for key, t in state.items():
        assert merged[key].dtype == t.dtype
        torch.testing.assert_close(merged[key], t, rtol=0, atol=0, msg=key)


def hand_states() -> list[dict[str, torch.Tensor]]:
    weights = [
        [[3.0, -1.0, 0.5], [-2.0, 0.2, 4.0]],
        [[-1.0, -3.0, 0.1], [5.0, -0.3, -0.5]],
        [[2.0, 0.4, -6.0], [-1.0, 0.1, 1.5]],
    ]
    biases = [[1.0, -2.0], [-3.0, 0.5], [2.0, 4.0]]
    norm = [[1.0, 2.0], [3.0, 4.0], [5.0, 9.0]]
    return [{"fc.weight": torch.tensor(w), "fc.bias": torch.tensor(b),
             "norm.weight": torch.tensor(n)} for w, b, n in zip(weights, biases, norm, strict=True)]


def test_hand_worked_trim_elect_and_disjoint_mean() -> None:
    # density 0.5 keeps 3 of 6 weights per model:
    #   model 1 keeps 3, -2, 4; model 2 keeps -1, -3, 5; model 3 keeps 2, -6, 1.5
    #   sums [[4, -3, -6], [3, 0, 5.5]] elect [[+, -, -], [+, 0, +]]
    #   agreeing means [[(3+2)/2, -3, -6], [5, 0, (4+1.5)/2]] (entry (1, 1): nothing kept)
    # biases keep 1 of 2 per model: -2 | -3 | 4; sums [-3, 2]; means [-3, 4]
    merged = ties_merge(hand_states(), base="zero", density=0.5, lam=1.0)
    torch.testing.assert_close(merged["fc.weight"],
                               torch.tensor([[2.5, -3.0, -6.0], [5.0, 0.0, 2.75]]))
    torch.testing.assert_close(merged["fc.bias"], torch.tensor([-3.0, 4.0]))
    torch.testing.assert_close(merged["norm.weight"], torch.tensor([3.0, 5.0]))  # plain mean
    scaled = ties_merge(hand_states(), base="zero", density=0.5, lam=0.5)
    torch.testing.assert_close(scaled["fc.weight"], 0.5 * merged["fc.weight"])


def test_agreeing_signs_at_full_density_give_the_mean() -> None:
    a = tiny_state(0)
    b = {k: t * (1 + torch.rand_like(t)) if t.is_floating_point() else t for k, t in a.items()}
    merged = ties_merge([a, b], base="zero", density=1.0)
    mean = interpolate(a, b, 0.5)
    for key in a:
        torch.testing.assert_close(merged[key], mean[key], msg=key)


def test_two_models_and_the_midpoint_base_give_plain_averaging() -> None:
    a, b = tiny_state(0), tiny_state(1)
    _, (tau_a, tau_b) = task_vectors([a["features.0.weight"], b["features.0.weight"]],
                                     "midpoint")
    assert torch.equal(tau_a, -tau_b)  # exactly: every elected sign is a tie
    merged = ties_merge([a, b], base="midpoint", density=0.3, lam=2.0)
    mean = interpolate(a, b, 0.5)
    for key in a:
        torch.testing.assert_close(merged[key], mean[key], msg=key)
    # the zero base is not degenerate: it differs from the mean
    zero = ties_merge([a, b], base="zero", density=0.3)
    assert not torch.allclose(zero["features.0.weight"], mean["features.0.weight"])


def test_sign_disagreement() -> None:
    a, b = tiny_state(0), tiny_state(1)
    layers = ["features.0", "classifier"]
    a["features.0.weight"].view(-1)[:5] = 0.0  # zeros have no sign: left out of the count
    negated = {k: -t if t.is_floating_point() else t for k, t in a.items()}
    assert sign_disagreement(a, a, layers, "zero") == {"features.0": 0.0, "classifier": 0.0}
    assert sign_disagreement(a, negated, layers, "zero") == {"features.0": 1.0, "classifier": 1.0}
    assert sign_disagreement(a, b, layers, "midpoint") == {"features.0": 1.0, "classifier": 1.0}
    x = {"l.weight": torch.tensor([[1.0, -2.0, 3.0, 0.0, 5.0]])}
    y = {"l.weight": torch.tensor([[2.0, 2.0, -1.0, 4.0, 1.0]])}
    assert sign_disagreement(x, y, ["l"], "zero") == {"l": 0.5}  # 2 of the 4 signed entries


def test_bad_input_is_rejected() -> None:
    a = tiny_state(0)
    with pytest.raises(ValueError, match="base"):
        ties_merge([a], base="pretrained", density=0.5)
    for density in (0.0, 1.5):
        with pytest.raises(ValueError, match="density"):
            ties_merge([a], base="zero", density=density)
    with pytest.raises(ValueError, match="non-empty list"):
        ties_merge([], base="zero", density=0.5)
    with pytest.raises(ValueError, match="state dicts differ"):
        ties_merge([a, {"x": torch.zeros(1)}], base="zero", density=0.5)
    with pytest.raises(KeyError, match="no nope.weight"):
        sign_disagreement(a, a, ["nope"], "zero")
