"""Retrieval metrics for the shared embedding space (rows L2-normalised, cosine = dot product).

Two questions: does a case's X-ray find the same case's report (``recall_at_k``), and do a
case's nearest neighbours share its findings (``precision_at_k_shared_label``)? The second must
not count the case itself or the same patient's other encounters as neighbours, or it measures
patient identity rather than findings.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import numpy as np
import numpy.typing as npt

from clinic.evaluation.metrics import BoolArray, FloatArray, IntArray

_QUERY_BLOCK = 1024  # queries scored at once, bounding the similarity block to block × N


def _as_unit_rows(embeddings: npt.ArrayLike, name: str) -> FloatArray:
    """(N, D) float64 rows; rejects rows that are not unit length (cosine would then be wrong)."""
    array = np.asarray(embeddings, dtype=np.float64)
    if array.ndim != 2 or array.shape[0] == 0:
        raise ValueError(f"{name} must be a non-empty (N, D) matrix, got shape {array.shape}")
    norms = np.linalg.norm(array, axis=1)  # (N,)
    if not np.allclose(norms, 1.0, atol=1e-3):
        raise ValueError(f"{name} rows must be L2-normalised (norms {norms.min():.3g}..)")
    return array


def _query_blocks(n_queries: int) -> Iterable[slice]:
    return (slice(i, min(i + _QUERY_BLOCK, n_queries)) for i in range(0, n_queries, _QUERY_BLOCK))


def recall_at_k(
    queries: npt.ArrayLike, gallery: npt.ArrayLike, ks: Iterable[int] = (1, 5, 10)
) -> dict[int, float]:
    """Fraction of queries whose own match (gallery row i for query i) ranks within the top k.

    Ties are counted against the query: a gallery item as similar as the match ranks ahead of
    it, so a collapsed embedding (all rows equal) scores as badly as it deserves.
    """
    query_rows = _as_unit_rows(queries, "queries")
    gallery_rows = _as_unit_rows(gallery, "gallery")
    if query_rows.shape != gallery_rows.shape:
        raise ValueError(f"queries {query_rows.shape} and gallery {gallery_rows.shape} differ")
    wanted = sorted(set(ks))
    if not wanted or wanted[0] < 1:
        raise ValueError(f"ks must be positive integers, got {list(ks)}")
    ranks = np.concatenate(
        [_match_ranks(query_rows, gallery_rows, b) for b in _query_blocks(len(query_rows))]
    )
    return {k: float((ranks < k).mean()) for k in wanted}


def _match_ranks(queries: FloatArray, gallery: FloatArray, block: slice) -> IntArray:
    """(b,) 0-based rank of each query's own match among all gallery rows (ties pessimistic)."""
    similarity = queries[block] @ gallery.T  # (b, N)
    own_rows = np.arange(block.start, block.stop)
    own: FloatArray = similarity[np.arange(len(own_rows)), own_rows]  # (b,)
    at_least_as_close = np.count_nonzero(similarity >= own[:, None], axis=1)  # (b,) with match
    return np.asarray(at_least_as_close - 1, dtype=np.intp)


def precision_at_k_shared_label(
    embeddings: npt.ArrayLike,
    labels: npt.ArrayLike,
    k: int = 10,
    *,
    exclude_groups: npt.ArrayLike | None = None,
) -> float:
    """Mean fraction of a case's k nearest other cases that share ≥ 1 positive label with it.

    labels (N, K) hold 1, 0 or NaN (unknown; never counted as shared). The case itself and,
    with ``exclude_groups`` (patient ids), every case of the same patient are no neighbours.
    Averaged over cases with at least one positive label and at least one allowed neighbour;
    a case with fewer than k allowed neighbours is scored on those it has. NaN if no case counts.
    """
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    rows = _as_unit_rows(embeddings, "embeddings")
    positive = _positive_matrix(labels, len(rows))  # (N, K)
    groups = _group_ids(exclude_groups, len(rows))  # (N,)
    fractions = [
        _shared_fraction(rows, positive, groups, block, k) for block in _query_blocks(len(rows))
    ]
    scored = np.concatenate(fractions)
    scored = scored[np.isfinite(scored)]
    return float(scored.mean()) if scored.size else math.nan


def _positive_matrix(labels: npt.ArrayLike, n_rows: int) -> BoolArray:
    array = np.asarray(labels, dtype=np.float64)
    if array.ndim != 2 or array.shape[0] != n_rows:
        raise ValueError(f"labels must be an ({n_rows}, K) matrix, got shape {array.shape}")
    known = array[~np.isnan(array)]
    if not np.isin(known, (0.0, 1.0)).all():
        raise ValueError("labels must be 0, 1 or NaN")
    return np.equal(array, 1.0)


def _group_ids(groups: npt.ArrayLike | None, n_rows: int) -> IntArray:
    """(N,) group index per case; without groups every case is its own group."""
    if groups is None:
        return np.arange(n_rows)
    array = np.asarray(groups)
    if array.shape != (n_rows,):
        raise ValueError(f"exclude_groups must have shape ({n_rows},), got {array.shape}")
    _, codes = np.unique(array, return_inverse=True)
    return codes.reshape(-1).astype(np.intp)


def _shared_fraction(
    rows: FloatArray, positive: BoolArray, groups: IntArray, block: slice, k: int
) -> FloatArray:
    """(b,) shared-label fraction among each query's allowed top k; NaN where it does not count."""
    similarity = rows[block] @ rows.T  # (b, N)
    query_ids = np.arange(block.start, block.stop)
    forbidden = groups[query_ids][:, None] == groups[None, :]  # (b, N) same case or patient
    forbidden[np.arange(len(query_ids)), query_ids] = True
    similarity[forbidden] = -np.inf
    n_allowed = (~forbidden).sum(axis=1)  # (b,)
    n_taken = np.minimum(k, n_allowed)  # (b,)
    nearest = _top_k_columns(similarity, k)  # (b, ≤k) unordered; forbidden ones fill gaps
    shares = (positive[query_ids].astype(np.int64) @ positive.T.astype(np.int64)) > 0  # (b, N)
    shared_nearest = np.take_along_axis(shares, nearest, axis=1)
    allowed_nearest = ~np.take_along_axis(forbidden, nearest, axis=1)
    hits = (shared_nearest & allowed_nearest).sum(axis=1).astype(np.float64)  # (b,)
    fraction = np.full(len(query_ids), np.nan)
    scorable = positive[query_ids].any(axis=1) & (n_taken > 0)
    fraction[scorable] = hits[scorable] / n_taken[scorable]
    return fraction


def _top_k_columns(similarity: FloatArray, k: int) -> IntArray:
    """(b, min(k, N)) column indices of each row's k largest values, in no particular order."""
    n_columns = similarity.shape[1]
    if k >= n_columns:
        return np.broadcast_to(np.arange(n_columns), similarity.shape).astype(np.intp)
    return np.argpartition(-similarity, k - 1, axis=1)[:, :k].astype(np.intp)
