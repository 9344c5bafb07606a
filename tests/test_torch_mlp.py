"""TorchMLPClassifier: scikit-learn's MLP recipe in torch, early stopping, an alpha path."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits
from sklearn.exceptions import ConvergenceWarning
from sklearn.model_selection import train_test_split
from sklearn.neural_network import MLPClassifier
from sklearn.preprocessing import StandardScaler

from featpipe.errors import ConfigError
from featpipe.heads import MLPProbe, TorchMLPClassifier, mlp_path, select_and_fit
from featpipe.heads.torch_mlp import (
    PATIENCE_STEPS,
    PLATEAU_DECAYS,
    PLATEAU_FACTOR,
    _Trainer,
    decayed_patience,
    native_bf16,
    patience_epochs,
)

FAST = {"device": "cpu", "n_threads": 1}
EXACT = {**FAST, "precision": "fp32"}  # float32 throughout: bitwise reproducible sums


@pytest.fixture(scope="module")
def digits():
    X, y = load_digits(return_X_y=True)
    X_tr, X_te, y_tr, y_te = train_test_split(X, y, test_size=0.3, random_state=0, stratify=y)
    scaler = StandardScaler().fit(X_tr)
    return (
        scaler.transform(X_tr).astype(np.float32),
        y_tr,
        scaler.transform(X_te).astype(np.float32),
        y_te,
    )


def test_deterministic_given_random_state(digits) -> None:
    X, y = digits[0][:500], digits[1][:500]
    a, b = (TorchMLPClassifier((16,), random_state=3, **FAST).fit(X, y) for _ in range(2))
    c = TorchMLPClassifier((16,), random_state=4, **FAST).fit(X, y)
    for wa, wb in zip(a.coefs_ + a.intercepts_, b.coefs_ + b.intercepts_, strict=True):
        np.testing.assert_array_equal(wa, wb)
    assert not np.array_equal(a.coefs_[0], c.coefs_[0])


def test_early_stopping_keeps_the_best_epoch(digits) -> None:
    X, y = digits[:2]
    est = TorchMLPClassifier((32,), n_iter_no_change=5, **FAST).fit(X, y)
    scores = est.validation_scores_
    assert len(scores) == est.n_iter_ == len(est.loss_curve_) < est.max_iter
    assert est.best_validation_score_ == max(scores)
    # scikit-learn's rule: stop once n_iter_no_change + 1 epochs passed without gaining tol
    assert all(s < max(scores[: -6 or None]) + est.tol for s in scores[-6:])
    # the weights kept are the best epoch's: scoring the internal val rows reproduces it
    _, X_va, _, y_va = train_test_split(X, y, test_size=0.1, stratify=y, random_state=0)
    assert est.score(X_va, y_va) == pytest.approx(est.best_validation_score_)


def test_accuracy_is_that_of_mlpclassifier(digits) -> None:
    X_tr, y_tr, X_te, y_te = digits
    ours = TorchMLPClassifier((64,), **FAST).fit(X_tr, y_tr)
    ref = MLPClassifier((64,), early_stopping=True, random_state=0).fit(X_tr, y_tr)
    assert ours.coefs_[0].shape == ref.coefs_[0].shape == (64, 64)
    assert ours.predict_proba(X_te).shape == (len(y_te), 10)
    assert ours.score(X_te, y_te) >= ref.score(X_te, y_te) - 0.02


def test_alpha_path_gives_each_alphas_own_fit(digits) -> None:
    X_tr, y_tr, X_te, y_te = digits
    alphas = [1e-4, 1.0, 10.0]
    path = mlp_path(X_tr, y_tr, alphas, X_val=X_te, y_val=y_te, hidden_layer_sizes=(32,), **EXACT)
    epochs = [m.n_iter_ for m in path.estimators]
    assert len(set(epochs)) > 1  # models left the batch at different epochs
    for alpha, model, acc in zip(alphas, path.estimators, path.val_accuracy, strict=True):
        alone = TorchMLPClassifier((32,), alpha=alpha, **EXACT).fit(X_tr, y_tr)
        assert model.n_iter_ == alone.n_iter_ and model.alpha == alpha
        for a, b in zip(model.coefs_, alone.coefs_, strict=True):
            np.testing.assert_allclose(a, b, atol=1e-5)
        assert acc == pytest.approx(alone.score(X_te, y_te))
    assert path.best_index == int(np.argmax(path.val_accuracy))


def test_plateau_schedule_lowers_the_rate_before_it_stops(digits) -> None:
    X_tr, y_tr, *_ = digits
    plateau = TorchMLPClassifier((32,), **EXACT).fit(X_tr, y_tr)
    constant = TorchMLPClassifier((32,), lr_schedule="constant", **EXACT).fit(X_tr, y_tr)
    assert (plateau.lr_decays_, constant.lr_decays_) == (PLATEAU_DECAYS, 0)
    assert plateau.n_iter_ > constant.n_iter_
    # the same run up to the first plateau, where the constant rate stops
    first = constant.n_iter_
    assert plateau.validation_scores_[:first] == constant.validation_scores_
    assert plateau.best_validation_score_ >= constant.best_validation_score_


def test_auto_patience_halves_once_the_rate_is_lowered(digits) -> None:
    assert [decayed_patience(p) for p in (10, 5, 3, 2)] == [5, 3, 2, 2]
    X_tr, y_tr, *_ = digits
    # batches of 200: 6 steps an epoch, so "auto" waits 10 epochs, as explicit 10 does
    auto = TorchMLPClassifier((32,), **EXACT).fit(X_tr, y_tr)
    ten = TorchMLPClassifier((32,), n_iter_no_change=10, **EXACT).fit(X_tr, y_tr)
    first = TorchMLPClassifier((32,), lr_schedule="constant", **EXACT).fit(X_tr, y_tr)
    assert auto.n_iter_no_change_ == ten.n_iter_no_change_ == 10
    assert auto.lr_decays_ == ten.lr_decays_ == PLATEAU_DECAYS
    # the same run to the first plateau; after it "auto" waits 5 epochs, explicit 10 still 10
    k = first.n_iter_
    assert auto.validation_scores_[:k] == ten.validation_scores_[:k] == first.validation_scores_
    assert auto.n_iter_ < ten.n_iter_


def test_a_lowered_rate_takes_that_fraction_of_adams_step() -> None:
    X = torch.randn(24, 6, generator=torch.Generator().manual_seed(3))
    y = torch.arange(24) % 3
    slowed = _Trainer(TorchMLPClassifier(**EXACT), [6, 5, 3], [0.1, 0.1], torch.device("cpu"))
    slowed.rates = [1.0, 1 / PLATEAU_FACTOR]
    ref = _Trainer(
        TorchMLPClassifier(learning_rate_init=1e-3 / PLATEAU_FACTOR, **EXACT),
        [6, 5, 3],
        [0.1],
        torch.device("cpu"),
    )
    for _ in range(3):
        slowed._step(X, y)
        ref._step(X, y)
    for mine, theirs in zip(slowed._slices(1), ref._slices(0), strict=True):
        torch.testing.assert_close(mine, theirs)
    assert not torch.equal(slowed._slices(0)[0], ref._slices(0)[0])


def test_restore_puts_the_kept_weights_back() -> None:
    trainer = _Trainer(TorchMLPClassifier(**EXACT), [6, 5, 3], [0.1, 1.0], torch.device("cpu"))
    kept = trainer.fits[1]
    kept.weights, kept.biases = trainer._weights(1)
    for w in trainer.params:
        w.add_(1.0)
    trainer._restore(1, kept)
    for now, before in zip(trainer._weights(1), (kept.weights, kept.biases), strict=True):
        for a, b in zip(now, before, strict=True):
            assert torch.equal(a, b)
    assert not torch.equal(trainer._weights(0)[0][0], kept.weights[0])


def test_bf16_products_train_as_well_as_float32(digits) -> None:
    X_tr, y_tr, X_te, y_te = digits
    auto = TorchMLPClassifier((64,), **FAST).fit(X_tr, y_tr)
    assert auto.precision_ == ("bf16" if native_bf16(torch.device("cpu")) else "fp32")
    bf16 = TorchMLPClassifier((64,), precision="bf16", **FAST).fit(X_tr, y_tr)
    fp32 = TorchMLPClassifier((64,), **EXACT).fit(X_tr, y_tr)
    assert (bf16.precision_, fp32.precision_) == ("bf16", "fp32")
    assert bf16.coefs_[0].dtype == np.float64  # the kept weights are the float32 masters
    assert not np.array_equal(bf16.coefs_[0], fp32.coefs_[0])
    assert bf16.score(X_te, y_te) >= fp32.score(X_te, y_te) - 0.01


def test_bf16_gradients_match_float32_within_its_rounding() -> None:
    trainer = _Trainer(
        TorchMLPClassifier(precision="bf16"), [40, 16, 3], [0.1], torch.device("cpu")
    )
    X = torch.randn(32, 40, generator=torch.Generator().manual_seed(2))
    y = torch.arange(32) % 3
    losses, grads = trainer._gradients(X.bfloat16(), y)
    ref_losses, ref_grads = trainer._gradients(X, y)
    assert grads[0].dtype == torch.float32
    torch.testing.assert_close(losses, ref_losses, rtol=1e-2, atol=0)
    for mine, ref in zip(grads, ref_grads, strict=True):  # the same direction, within noise
        assert F.cosine_similarity(mine.flatten(), ref.flatten(), dim=0) > 0.99


@pytest.mark.parametrize("sizes", [[6, 5, 4, 3], [6, 3]])
def test_hand_written_gradients_match_autograd(sizes: list[int]) -> None:
    alphas = [0.1, 2.0]
    trainer = _Trainer(TorchMLPClassifier(), sizes, alphas, torch.device("cpu"))
    for w in trainer.params:  # models that differ, unlike the shared initial weights
        w.add_(0.3 * torch.randn(w.shape, generator=torch.Generator().manual_seed(1)))
    X = torch.randn(7, sizes[0], generator=torch.Generator().manual_seed(2))
    y = torch.tensor([0, 1, 2, 0, 1, 2, 1])
    losses, grads = trainer._gradients(X, y)
    for j, alpha in enumerate(alphas):  # model j alone, in plain autograd
        params = [trainer.params[0][:, j], trainer.params[1][j]]
        params += [w[j] for w in trainer.params[2:]]
        params = [w.detach().clone().requires_grad_(True) for w in params]
        h = X
        for i in range(0, len(params), 2):
            h = (h.relu() if i else h) @ params[i] + params[i + 1]
        l2 = sum(w.square().sum() for w in params[::2])
        loss = F.cross_entropy(h.reshape(len(y), -1), y) + 0.5 * alpha * l2 / len(y)
        loss.backward()
        assert losses[j].item() == pytest.approx(loss.item(), rel=1e-5)
        ours = [grads[0][:, j], grads[1][j]] + [g[j] for g in grads[2:]]
        for mine, ref in zip(ours, params, strict=True):
            torch.testing.assert_close(mine.reshape(ref.shape), ref.grad, rtol=1e-4, atol=1e-6)


def test_auto_patience_counts_adam_steps(digits) -> None:
    assert [patience_epochs("auto", s) for s in (1, 7, 41, 203)] == [10, 10, 3, 2]
    assert patience_epochs(4, 203) == 4 and PATIENCE_STEPS == 100
    X, y = digits[:2]
    # 1,131 training rows in batches of 16: 71 steps an epoch, so 2 epochs of patience
    est = TorchMLPClassifier((32,), batch_size=16, **FAST).fit(X, y)
    scores = est.validation_scores_
    assert est.n_iter_no_change_ == 2 and len(scores) == est.n_iter_ < est.max_iter
    assert all(s < max(scores[:-3]) + est.tol for s in scores[-3:])
    # batches of 200: 6 steps an epoch, so scikit-learn's 10 epochs
    with pytest.warns(ConvergenceWarning, match="max_iter=3"):
        assert TorchMLPClassifier((8,), max_iter=3, **FAST).fit(X, y).n_iter_no_change_ == 10
    assert MLPProbe(solver="sklearn")._make_classifier(None).n_iter_no_change == 10


def test_few_shot_sets_train_without_early_stopping() -> None:
    X = np.random.default_rng(0).normal(size=(3, 5))
    est = TorchMLPClassifier((8,), learning_rate_init=0.05, **FAST).fit(X, ["a", "b", "c"])
    assert est.validation_scores_ is None and est.n_iter_ < est.max_iter
    assert list(est.predict(X)) == ["a", "b", "c"]


def test_selection_uses_the_path_and_keeps_sklearn_as_an_option(digits) -> None:
    X_tr, y_tr, X_te, y_te = digits
    data = {"train": (X_tr[:900], y_tr[:900]), "val": (X_tr[900:], y_tr[900:])}
    data["test"] = (X_te, y_te)
    grid = {"alpha": [1e-4, 1.0]}
    fast = select_and_fit(MLPProbe((32,), **FAST), data, grid=grid)
    slow = select_and_fit(MLPProbe((32,), **FAST), data, grid=[grid, {"alpha": [0.1]}])
    np.testing.assert_allclose([s for _, s in fast.curve], [s for _, s in slow.curve][:2])
    assert isinstance(fast.estimator.classifier_, TorchMLPClassifier)
    ref = select_and_fit(MLPProbe((32,), solver="sklearn"), data, grid=grid)
    assert isinstance(ref.estimator.classifier_, MLPClassifier)
    assert ref.estimator.classifier_.early_stopping
    assert abs(fast.test_accuracy - ref.test_accuracy) < 0.05


@pytest.mark.parametrize(
    ("params", "match"),
    [
        ({"alpha": -1.0}, "alpha must be >= 0"),
        ({"batch_size": 0}, "batch_size must be 'auto' or a positive integer"),
        ({"validation_fraction": 1.0}, r"validation_fraction must be in \(0, 1\)"),
        ({"n_iter_no_change": "never"}, "n_iter_no_change must be 'auto' or >= 1; got 'never'"),
        ({"n_iter_no_change": 0}, "n_iter_no_change must be 'auto' or >= 1; got 0"),
        ({"hidden_layer_sizes": (0,)}, "hidden_layer_sizes must be positive"),
        ({"precision": "fp16"}, "precision must be one of auto, fp32, bf16; got 'fp16'"),
        ({"lr_schedule": "cosine"}, "lr_schedule must be one of plateau, constant"),
    ],
)
def test_bad_params_raise_config_error(params: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        TorchMLPClassifier(**params).fit(np.eye(4), [0, 1, 0, 1])
    with pytest.raises(ConfigError, match="Unknown MLP solver 'lbfgs'"):
        MLPProbe(solver="lbfgs").fit(np.eye(4), [0, 1, 0, 1])


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
@pytest.mark.parametrize("make", [TorchMLPClassifier, MLPProbe])
def test_random_state_takes_sklearns_values(make) -> None:
    X = np.random.default_rng(0).normal(size=(40, 4))
    y = np.arange(40) % 2
    fit = lambda rs: make((4,), random_state=rs, max_iter=3, **FAST).fit(X, y)  # noqa: E731
    fit(None)  # was a TypeError from int(None)
    a, b = fit(np.random.RandomState(1)), fit(np.random.RandomState(1))
    np.testing.assert_array_equal(a.predict_proba(X), b.predict_proba(X))
    with pytest.raises(ConfigError, match="random_state must be None, an int or a"):
        fit("seven")


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
def test_batch_size_takes_numpy_integers() -> None:
    X = np.random.default_rng(0).normal(size=(40, 4))
    est = TorchMLPClassifier((4,), batch_size=np.int64(8), max_iter=2, **FAST)
    assert est.fit(X, np.arange(40) % 2).n_iter_ == 2  # np.int64(8) was refused
