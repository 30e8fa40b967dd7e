"""Naive baselines that a learned H&E encoder must beat (used by the demo, the tutorials and the benchmarks).

A learned encoder that cannot beat a ridge regression from a handful of raw pixels is not learning;
every retrieval or expression-prediction number loki reports is shown beside these.
"""

from __future__ import annotations

import numpy as np

__all__ = ["PixelRidge", "log_normalized", "pixel_features"]


def pixel_features(patches: np.ndarray, side: int = 12) -> np.ndarray:
    """Raw RGB pixels of each patch, block-averaged to ``side`` x ``side`` and flattened to [0, 1].

    Parameters
    ----------
    patches
        Spot patches, uint8 ``(n, h, w, 3)``.
    side
        Output side in pixels.

    Returns
    -------
    float32 ``(n, side * side * 3)``.
    """
    from skimage.transform import resize

    patches = np.asarray(patches)
    if patches.ndim != 4 or patches.shape[-1] != 3:
        raise ValueError(f"patches must be (n, h, w, 3), got shape {patches.shape}.")
    x = resize(patches.astype(np.float32) / 255.0, (len(patches), side, side, 3), anti_aliasing=True)
    return x.reshape(len(patches), -1).astype(np.float32)


class PixelRidge:
    """Ridge regression from raw patch pixels to expression (or its first principal components).

    The penalty is chosen by cross-validation on the training data only.

    Parameters
    ----------
    n_pcs
        Regress onto this many expression PCs (fitted on the training expression); None regresses
        onto every gene.
    side
        Pixel grid side (see :func:`pixel_features`).
    seed
        Seeds the PCA solver.
    """

    def __init__(self, n_pcs: int | None = 10, side: int = 12, seed: int = 0):
        self.n_pcs, self.side, self.seed = n_pcs, side, seed

    def fit(self, patches: np.ndarray, expression: np.ndarray) -> PixelRidge:
        """Fit on training patches and their spots' (log-normalised) expression.

        Parameters
        ----------
        patches
            Training spot patches, uint8 ``(n, h, w, 3)``.
        expression
            ``(n, n_genes)`` dense expression of the same spots, in the same order, e.g.
            :func:`log_normalized` counts.

        Returns
        -------
        This model, fitted (the scaler, the PCA when ``n_pcs`` is set, and the ridge).
        """
        from sklearn.decomposition import PCA
        from sklearn.linear_model import RidgeCV
        from sklearn.preprocessing import StandardScaler

        expression = np.asarray(expression, dtype=np.float64)
        if len(patches) != len(expression):
            raise ValueError(f"{len(patches)} patches but {len(expression)} expression rows.")
        pix = pixel_features(patches, self.side)
        self.scaler_ = StandardScaler().fit(pix)
        self.pca_ = PCA(self.n_pcs, random_state=self.seed).fit(expression) if self.n_pcs else None
        target = self.pca_.transform(expression) if self.pca_ is not None else expression
        self.ridge_ = RidgeCV(alphas=np.logspace(-1, 4, 11)).fit(self.scaler_.transform(pix), target)
        return self

    def predict(self, patches: np.ndarray) -> np.ndarray:
        """Predicted PCs (``n_pcs`` set) or expression of each patch.

        Parameters
        ----------
        patches
            Spot patches, uint8 ``(n, h, w, 3)``.

        Returns
        -------
        ``(n, n_pcs)`` predicted expression PCs, or ``(n, n_genes)`` predicted expression when
        ``n_pcs`` is None.
        """
        return self.ridge_.predict(self.scaler_.transform(pixel_features(patches, self.side)))

    def predict_expression(self, patches: np.ndarray) -> np.ndarray:
        """Predicted expression of each patch (back-projected from PCs when ``n_pcs`` is set).

        Parameters
        ----------
        patches
            Spot patches, uint8 ``(n, h, w, 3)``.

        Returns
        -------
        ``(n, n_genes)`` predicted expression, in the genes and scale of the training expression.
        """
        pred = self.predict(patches)
        return self.pca_.inverse_transform(pred) if self.pca_ is not None else pred

    def retrieval_similarity(self, patches: np.ndarray, expression: np.ndarray) -> np.ndarray:
        """Cosine similarity of each patch's predicted PCs to each bank spot's measured PCs.

        Parameters
        ----------
        patches
            Query spot patches, uint8 ``(n_query, h, w, 3)``.
        expression
            ``(n_bank, n_genes)`` measured expression of the bank spots, in the genes and scale of
            the training expression; projected onto the fitted PCs.

        Returns
        -------
        ``(n_query, n_bank)`` cosine similarities, in [-1, 1].

        Raises
        ------
        ValueError
            If the model was built with ``n_pcs=None``.
        """
        if self.pca_ is None:
            raise ValueError("retrieval_similarity needs n_pcs.")
        pred = self.predict(patches)
        true = self.pca_.transform(np.asarray(expression, dtype=np.float64))
        pred /= np.maximum(np.linalg.norm(pred, axis=1, keepdims=True), 1e-12)
        true /= np.maximum(np.linalg.norm(true, axis=1, keepdims=True), 1e-12)
        return pred @ true.T


def log_normalized(x) -> np.ndarray:
    """Dense ``log1p`` of counts scaled to 10,000 per spot (the expression the baselines and PredEx use).

    Parameters
    ----------
    x
        Spots x genes counts, a dense array or a scipy sparse matrix.

    Returns
    -------
    Dense array of ``x``'s shape: ``log1p(10,000 x / total)`` per spot; spots without counts stay 0.
    """
    x = x.toarray() if hasattr(x, "toarray") else np.asarray(x, dtype=np.float64)
    x = x / np.maximum(x.sum(1, keepdims=True), 1) * 1e4
    return np.log1p(x)
