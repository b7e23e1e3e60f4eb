"""The attribute model: from image features to class attributes (an expert of the fusion).

During training an auxiliary head learns to predict each image's class attributes (AwA2:
colours, patterns, shapes, habitat; `attr_loss`), which keeps the network's pooled features
descriptive of what the unseen classes share with the seen ones. Afterwards a ridge
regression W maps those features to the attribute space (fitted on seen-class images only);
any class with an attribute vector then gets a score, cos(xW, a_c), seen or not
(fusion.AttributeExpert). We first tried ESZSL's bilinear model (Romera-Paredes & Torr
2015): on the demo data it recognised far fewer unseen images; it fits class identities
more than attributes. Calibration against the seen classes is the fusion's job (fusion.py).
"""

from __future__ import annotations

import numpy as np


def class_embeddings(attributes: np.ndarray) -> np.ndarray:
    """Each attribute scaled to [0, 1] over the classes and centred; rows of unit length."""
    lo, hi = attributes.min(0), attributes.max(0)
    a = (attributes - lo) / np.maximum(hi - lo, 1e-8)
    a = a - a.mean(0)
    return a / (np.linalg.norm(a, axis=1, keepdims=True) + 1e-12)


def prepare(features: np.ndarray, mean: np.ndarray) -> np.ndarray:
    x = features.astype(np.float64) - mean
    return x / (np.linalg.norm(x, axis=1, keepdims=True) + 1e-12)


def fit_regression(x: np.ndarray, labels: np.ndarray, emb: np.ndarray, lam: float
                   ) -> np.ndarray:
    """W (features x attributes): ridge regression onto each image's class embedding."""
    return np.linalg.solve(x.T @ x + lam * np.eye(x.shape[1]), x.T @ emb[labels])


def compatibility(x: np.ndarray, w: np.ndarray, emb: np.ndarray) -> np.ndarray:
    """cos(xW, a_c) for every class c: images x classes, in [-1, 1]."""
    z = x @ w
    z /= np.linalg.norm(z, axis=1, keepdims=True) + 1e-12
    return z @ emb.T
