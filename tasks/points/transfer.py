"""Transfer classification (FoldingNet / 3D-PointCapsNet protocol): frozen encoder -> linear SVM.

The autoencoder is trained without labels; its latent capsules, flattened, are
the features of a scikit-learn ``LinearSVC`` fitted on the training shapes and
scored on the test shapes.

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

from capsule_kit.errors import UserError
from capsule_kit.metrics import classification_metrics


def require_sklearn():
    """The ``sklearn.svm`` module, or a UserError naming the extra to install."""
    try:
        from sklearn import svm
    except ImportError:
        raise UserError("transfer.svm needs scikit-learn: pip install 'capsule-kit[points]'") from None
    return svm


@torch.no_grad()
def extract_latent(task, model: nn.Module, dataset: Dataset, device: Any, batch_size: int) -> tuple[np.ndarray, ...]:
    """Flattened latent capsules and labels of a data set (eval mode, no augmentation).

    Returns:
        (features [S, N_o * D_o] float32, labels [S] int64)

    """
    model.eval()
    feats, labels = [], []
    for points, y in DataLoader(dataset, batch_size=batch_size, shuffle=False):
        latent, _ = model.encode(task.encoder_input(points.to(device), train=False))
        feats.append(latent.flatten(1).float().cpu())
        labels.append(y)
    return torch.cat(feats).numpy(), torch.cat(labels).numpy()


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
