"""Transfer classification (FoldingNet / 3D-PointCapsNet protocol): frozen encoder -> linear SVM.

The autoencoder is trained without labels; its latent capsules (``transfer.features``: the
flattened poses, their lengths, or both) are the features of a scikit-learn ``LinearSVC``
fitted on the training shapes and scored on the test shapes; with several ``transfer.C`` values (or
feature sets), the pair is chosen by stratified k-fold cross validation on the training shapes alone
(:func:`choose`, :func:`select_c`), so the test shapes are seen once, by the chosen SVM. :func:`transfer_metrics` is the
points task's :meth:`~capsule_kit.task.Task.evaluate_extra`: the probe of the tested model and,
with ``transfer.random_init_baseline``, the same probe and part metrics of the untrained model.

Shapes: S shapes, N_o latent capsules, D_o latent dim.
"""

from __future__ import annotations

import time
import warnings
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from capsule_kit.data import Splits
from capsule_kit.errors import ConfigError, UserError
from capsule_kit.metrics import classification_metrics
from capsule_kit.splits import split_indices
from capsule_kit_tasks.points.augment import CloudDataset

FEATURE_DIMS = {"poses": lambda n, d: n * d, "lengths": lambda n, d: n, "both": lambda n, d: n * (d + 1)}


def require_sklearn():
    """The ``sklearn.svm`` module, or a UserError naming the extra to install."""
    try:
        from sklearn import svm
    except ImportError:
        raise UserError("transfer.svm needs scikit-learn: pip install 'capsule-kit[points]'") from None
    return svm


def latent_features(latent: torch.Tensor, features: str = "poses") -> torch.Tensor:
    """SVM features of latent capsules: flattened poses, capsule lengths, or both (poses then lengths).

    Shapes:
        latent: [S, N_o, D_o]
        returns: [S, N_o * D_o] (poses), [S, N_o] (lengths) or [S, N_o * (D_o + 1)] (both)
    """
    if features not in FEATURE_DIMS:
        raise ValueError(f"features must be one of {sorted(FEATURE_DIMS)}, got '{features}'")
    poses, lengths = latent.flatten(1), latent.norm(dim=-1)
    return {"poses": poses, "lengths": lengths, "both": torch.cat([poses, lengths], 1)}[features]


@torch.no_grad()
def extract_latent(task, model: nn.Module, dataset: Dataset, device: Any, batch_size: int) -> tuple[torch.Tensor, ...]:
    """Latent capsules and labels of a data set (eval mode, no augmentation).

    Returns:
        (latent [S, N_o, D_o] float32 on the CPU, labels [S] int64 numpy)

    """
    model.eval()
    latents, labels = [], []
    for points, y in DataLoader(dataset, batch_size=batch_size, shuffle=False):
        latent, _ = model.encode(task.encoder_input(points.to(device), train=False))
        latents.append(latent.float().cpu())
        labels.append(y)
    return torch.cat(latents), torch.cat(labels).numpy()


def svm_transfer(
    train: tuple[np.ndarray, np.ndarray], test: tuple[np.ndarray, np.ndarray], num_classes: int, *, c: float = 1.0,
    standardize: bool = True, max_iter: int = 1000, solver: str = "primal", seed: int = 0,
) -> dict[str, Any]:  # fmt: skip
    """Fit a LinearSVC on train features, score on test.

    ``solver="primal"`` (liblinear's ``dual=False``) suits as many shapes as
    features (3,991 x 4,096 for ModelNet10): on standardised latent capsules it
    converged in ~20 iterations, about 10x faster than the dual solver, with the
    same accuracy.

    Returns:
        ``svm_accuracy``, ``svm_macro_f1``, ``svm_confusion_matrix`` and sizes/timing (plain data).

    """
    svm = require_sklearn()
    from sklearn import exceptions

    (x_tr, y_tr), (x_te, y_te) = train, test
    if standardize:  # capsule entries differ ~100x in scale; raw features scored ~54% where these scored ~90%
        mean, std = x_tr.mean(0), x_tr.std(0) + 1e-6
        x_tr, x_te = (x_tr - mean) / std, (x_te - mean) / std
    t0 = time.perf_counter()
    clf = svm.LinearSVC(C=c, max_iter=max_iter, dual=solver == "dual", random_state=seed)
    with warnings.catch_warnings(record=True) as caught:  # reported in the results instead of on stderr
        warnings.simplefilter("always", exceptions.ConvergenceWarning)
        clf.fit(x_tr, y_tr)
    converged = not any(issubclass(w.category, exceptions.ConvergenceWarning) for w in caught)
    pred = clf.predict(x_te)
    m = classification_metrics(torch.as_tensor(pred), torch.as_tensor(y_te), num_classes)
    return {
        "svm_accuracy": m["accuracy"],
        "svm_macro_f1": m["macro_f1"],
        "svm_train_accuracy": float((clf.predict(x_tr) == y_tr).mean()),
        "svm_confusion_matrix": m["confusion_matrix"],
        "svm_train_shapes": len(y_tr),
        "svm_test_shapes": len(y_te),
        "svm_feature_dim": int(x_tr.shape[1]),
        "svm_fit_s": round(time.perf_counter() - t0, 2),
        "svm_converged": converged,
    }


def select_c(
    train: tuple[np.ndarray, np.ndarray], cs: list[float], num_classes: int, *, folds: int = 3, seed: int = 0,
    jobs: int = 1, **svm_kw: Any,
) -> tuple[float, dict[float, float]]:  # fmt: skip
    """The C of ``cs`` with the best mean accuracy over ``folds`` stratified folds of the training shapes.

    Each fold's SVM is standardised with its own training part's statistics; ties go to the smaller C
    (the simpler model). Fits run on ``jobs`` threads (liblinear releases the GIL).

    Returns:
        (chosen C, {C: mean cross-validated accuracy})

    """
    from joblib import Parallel, delayed

    x, y = train
    parts = [split_indices(y, folds=folds, fold=k, seed=seed) for k in range(folds)]

    def score(c: float, part) -> float:
        fold_test = (x[part.test], y[part.test])
        return svm_transfer((x[part.train], y[part.train]), fold_test, num_classes, c=c, seed=seed, **svm_kw)[
            "svm_accuracy"
        ]

    accs = Parallel(n_jobs=jobs, prefer="threads")(delayed(score)(c, part) for c in cs for part in parts)
    means = {c: float(np.mean(accs[i * folds : (i + 1) * folds])) for i, c in enumerate(cs)}
    return max(cs, key=lambda c: (means[c], -c)), means


def as_grid(value: Any) -> list:
    """A ``transfer.C`` / ``transfer.features`` value as the list of candidates it names (one value: one)."""
    return value if isinstance(value, list) else [value]


def check_cv_folds(
    labels: np.ndarray, cs: float | list[float], folds: int, features: str | list[str] = "poses"
) -> None:
    """Refuse a C (or feature-set) grid whose cross validation these training labels cannot cut (before training).

    Raises:
        ConfigError: a class has fewer than ``folds`` training shapes.

    """
    counts = np.unique(np.asarray(labels), return_counts=True)[1]
    if len(as_grid(cs)) * len(as_grid(features)) > 1 and counts.min() < folds:
        raise ConfigError(
            f"transfer.cv_folds: {folds} stratified folds choose transfer.C and transfer.features, "
            f"but a class has only {counts.min()} "
            "training shapes; lower transfer.cv_folds or give transfer.C and transfer.features one value"
        )


def choose(
    train: tuple[torch.Tensor, np.ndarray], features: list[str], cs: list[float], num_classes: int, *,
    folds: int, **kw: Any,
) -> tuple[str, float, dict[str, dict[str, float]]]:  # fmt: skip
    """The (feature set, C) pair with the best cross-validated accuracy on the training shapes.

    Ties go to the smaller C, then to the feature set listed first.

    Returns:
        (features, C, {features: {C: mean cross-validated accuracy}})

    """
    latent, labels = train
    best, cv = (-1.0, 0, 0.0, ""), {}
    for rank, name in enumerate(features):
        x = latent_features(latent, name).numpy()
        c, means = select_c((x, labels), cs, num_classes, folds=folds, **kw)
        cv[name] = {str(k): v for k, v in means.items()}
        best = max(best, (means[c], -c, -rank, name))
    return best[3], -best[1], cv


def probe(task, model: nn.Module, data: Splits, device: Any) -> dict[str, Any]:
    """SVM transfer results of ``model``'s frozen encoder (un-augmented training shapes, test shapes).

    Adds ``svm_C`` and ``svm_features`` (the ones used) and, when several were given, ``svm_cv_accuracy`` (the
    chosen pair's cross-validated accuracy) and ``svm_cv`` ({features: {C: mean cross-validated accuracy}}).
    """
    cfg, t0 = task.cfg, time.perf_counter()
    bs, t = cfg.trainer.eval_batch_size or cfg.trainer.batch_size, cfg.transfer
    latent, labels = extract_latent(task, model, CloudDataset(data.train.points, data.train.labels), device, bs)
    test_latent, test_labels = extract_latent(task, model, data.test, device, bs)
    kw = {"standardize": t.standardize, "max_iter": t.max_iter, "solver": t.solver, "seed": cfg.trainer.seed}
    classes, cs, features = len(task.point_set.classes), as_grid(t.C), as_grid(t.features)
    name, c, cv = features[0], cs[0], {}
    if len(cs) > 1 or len(features) > 1:
        jobs = cfg.trainer.threads or 1
        name, c, grid = choose((latent, labels), features, cs, classes, folds=t.cv_folds, jobs=jobs, **kw)
        cv = {"svm_cv_accuracy": grid[name][str(c)], "svm_cv": grid}
    train = (latent_features(latent, name).numpy(), labels)
    res = svm_transfer(train, (latent_features(test_latent, name).numpy(), test_labels), classes, c=c, **kw)
    res.update(svm_C=c, svm_features=name, **cv, svm_total_s=round(time.perf_counter() - t0, 2))
    return res


@torch.no_grad()
def eval_pass(task, model: nn.Module, dataset: Dataset, device: Any) -> dict[str, Any]:
    """``task.metrics`` of one pass over ``dataset`` (Chamfer and part metrics of any model, e.g. untrained)."""
    model.eval()
    bs = task.cfg.trainer.eval_batch_size or task.cfg.trainer.batch_size
    outs = [task.step(model, (p.to(device), y), train=False)["out"] for p, y in DataLoader(dataset, batch_size=bs)]
    return task.metrics([{k: v.cpu() for k, v in o.items()} for o in outs])


CONTROL = ("chamfer", "part_spread", "part_consistency", "part_drift")


def transfer_metrics(task, model: nn.Module, data: Splits, device: Any) -> dict[str, Any]:
    """The points task's extra test metrics: the SVM probe, and the untrained control (see module doc)."""
    t, out = task.cfg.transfer, {}
    if t.svm:
        out.update(probe(task, model, data, device))
    if t.random_init_baseline:
        with torch.random.fork_rng(devices=[]):  # the global RNG stream stays as training left it
            torch.manual_seed(task.cfg.trainer.seed)  # the runner's seed before it built the trained model
            control = task.build_model().to(device)
        if t.svm:
            res = probe(task, control, data, device)  # the same probe, C chosen the same way
            out.update(svm_accuracy_random_init=res["svm_accuracy"], svm_C_random_init=res["svm_C"],
                       svm_features_random_init=res["svm_features"])  # fmt: skip
            out["svm_gain"] = out["svm_accuracy"] - out["svm_accuracy_random_init"]
        m = eval_pass(task, control, data.test, device)
        out.update({f"{k}_random_init": m[k] for k in CONTROL if k in m})
    return out
