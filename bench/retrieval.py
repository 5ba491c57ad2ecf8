"""Similar-case search: our EmbeddedIndex against exact numpy and FAISS HNSW, in the same run.

For each size, ``n`` unit vectors of dimension ``--dim`` (random by default: no structure, the
hard case for graph indexes; ``--data clustered`` draws them around ``n / 100`` centres, closer
to real embeddings) and ``--queries`` unit query vectors drawn the same way but not stored.
Each backend reports its build time, p50 / p99 single-query latency (one query per call, as a
request does) and recall@10 against exact search:

* ``exact``: one float32 matrix-vector product and a partial sort (numpy);
* ``faiss_hnsw``: ``faiss.IndexHNSWFlat`` (inner product) with our M and efConstruction, and
  ``efSearch`` tuned *on these queries* to the smallest value (within 1/16) reaching recall@10
  ≥ ``--target``: an oracle tuning that our index, which must pick its ``ef`` before it sees a
  query, cannot do;
* ``ours``: :class:`clinic.retrieval.index.EmbeddedIndex` with its own policy (exact below its
  threshold, HNSW above it with an ``ef`` calibrated at build time on held-out stored rows);
  build = one ``add`` of all rows (calibration included), save timed separately.

Builds and BLAS use ``--threads`` threads (default 2); queries run one at a time, the backends
taking turns in blocks of 50 queries so that a busy neighbour slows them all alike. Besides wall
clock p50 / p99, ``p50_cpu_ms`` is the CPU time this process spent in the call: on a shared
machine it leaves out the time spent waiting for a core (not memory-bandwidth contention); with
``--threads 1`` it is the single query's own cost, with more BLAS threads their times add up.

    .venv/bin/python -m bench.retrieval [--sizes 10000,100000,1000000] [--queries 500]
        [--data random|clustered] [--backends exact,faiss_hnsw,ours] [--threads 2] [--json]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import faiss
import numpy as np
import numpy.typing as npt
from threadpoolctl import threadpool_limits  # type: ignore[import-untyped]

from clinic.retrieval import index as index_module
from clinic.retrieval.index import EmbeddedIndex

FloatArray = npt.NDArray[np.float32]
LabelArray = npt.NDArray[np.int64]
Search = Callable[[FloatArray], LabelArray]

K = 10
BLOCK = 50  # queries a backend answers in a row before the next one takes its turn
DEFAULT_SIZES = (10_000, 100_000, 1_000_000)
MAX_EF = 32_768
BACKENDS = ("exact", "faiss_hnsw", "ours")


# --------------------------------------------------------------------------- data


def unit(rows: FloatArray) -> FloatArray:
    normalised: FloatArray = rows / np.linalg.norm(rows, axis=1, keepdims=True)
    return normalised


def dataset(n: int, queries: int, dim: int, kind: str, seed: int) -> tuple[FloatArray, FloatArray]:
    """(stored, queries), both unit rows; ``clustered`` shares centres between the two."""
    rng = np.random.default_rng(seed)
    if kind == "random":
        return unit(rng.standard_normal((n, dim), np.float32)), unit(
            rng.standard_normal((queries, dim), np.float32)
        )
    centres = rng.standard_normal((max(n // 100, 1), dim), np.float32)

    def around(count: int) -> FloatArray:
        picked = centres[rng.integers(0, len(centres), count)]
        return unit(picked + 0.35 * rng.standard_normal((count, dim), np.float32))

    return around(n), around(queries)


def exact_top(vectors: FloatArray, queries: FloatArray, k: int) -> LabelArray:
    """Ground truth: exact top-k labels of each query, in chunks of bounded memory."""
    truth = np.empty((len(queries), k), np.int64)
    chunk = max(1, 50_000_000 // len(vectors))
    for start in range(0, len(queries), chunk):
        scores = queries[start : start + chunk] @ vectors.T
        part = np.argpartition(-scores, k - 1, axis=1)[:, :k]
        order = np.argsort(-np.take_along_axis(scores, part, axis=1), axis=1)
        truth[start : start + chunk] = np.take_along_axis(part, order, axis=1)
    return truth


# --------------------------------------------------------------------------- measuring


def recall_at_k(found: LabelArray, truth: LabelArray) -> float:
    hits = [len(set(f.tolist()) & set(t.tolist())) for f, t in zip(found, truth, strict=True)]
    return float(np.sum(hits) / truth.size)


@dataclass
class Prepared:
    """A built backend: its build time, its one-query search, and notes for the report."""

    build_s: float
    search: Search
    notes: dict[str, Any] = field(default_factory=dict)


@dataclass
class Timings:
    """Seconds per call: wall clock, and CPU time of this process (see the module docstring)."""

    wall: list[float] = field(default_factory=list)
    cpu: list[float] = field(default_factory=list)


def interleaved(
    backends: dict[str, Prepared], queries: FloatArray
) -> dict[str, tuple[LabelArray, Timings]]:
    """Answers and per-call latency of every backend, taking turns block by block.

    Turns spread the noise of a shared machine over all backends instead of charging it to
    whichever one ran while a neighbour was busy; blocks of ``BLOCK`` queries, each after one
    unmeasured warm-up query, keep a backend's data in cache as consecutive requests would
    (turns of single queries measured each backend after the others had evicted it).
    """
    answers: dict[str, list[LabelArray]] = {name: [] for name in backends}
    timings: dict[str, Timings] = {name: Timings() for name in backends}
    for start in range(0, len(queries), BLOCK):
        for name, prepared in backends.items():
            prepared.search(queries[start - 1])  # warm-up (the last query for the first block)
            for query in queries[start : start + BLOCK]:
                wall, cpu = time.perf_counter_ns(), time.process_time_ns()
                found = prepared.search(query)
                timings[name].cpu.append((time.process_time_ns() - cpu) / 1e9)
                timings[name].wall.append((time.perf_counter_ns() - wall) / 1e9)
                answers[name].append(np.pad(found, (0, K - len(found)), constant_values=-1))
    return {name: (np.stack(answers[name]), timings[name]) for name in backends}


def figures(
    prepared: Prepared, found: LabelArray, timings: Timings, truth: LabelArray
) -> dict[str, Any]:
    return {
        "build_s": round(prepared.build_s, 2),
        "p50_ms": round(float(np.percentile(timings.wall, 50)) * 1e3, 3),
        "p99_ms": round(float(np.percentile(timings.wall, 99)) * 1e3, 3),
        "p50_cpu_ms": round(float(np.percentile(timings.cpu, 50)) * 1e3, 3),
        "recall_at_10": round(recall_at_k(found, truth), 4),
        **prepared.notes,
    }


# --------------------------------------------------------------------------- backends


def prepare_exact(vectors: FloatArray) -> Prepared:
    start = time.perf_counter()
    matrix = np.ascontiguousarray(vectors)  # the "build": one contiguous float32 matrix
    build_s = time.perf_counter() - start

    def search(query: FloatArray) -> LabelArray:
        scores = matrix @ query
        part = np.argpartition(-scores, K - 1)[:K]
        return part[np.argsort(-scores[part])].astype(np.int64)

    return Prepared(build_s, search)


def tuned_ef(index: Any, queries: FloatArray, truth: LabelArray, target: float) -> int:
    """Smallest ``efSearch`` (to within 1/16) whose batched recall@10 reaches ``target``."""

    def reaches(ef: int) -> bool:
        index.hnsw.efSearch = ef
        return recall_at_k(index.search(queries, K)[1], truth) >= target

    low, high = 0, 16
    while high < MAX_EF and not reaches(high):
        low, high = high, 2 * high
    while high - low > max(2, high // 16):
        middle = (low + high) // 2
        low, high = (low, middle) if reaches(middle) else (middle, high)
    return high


def prepare_faiss_hnsw(
    vectors: FloatArray, queries: FloatArray, truth: LabelArray, target: float
) -> Prepared:
    start = time.perf_counter()
    index = faiss.IndexHNSWFlat(vectors.shape[1], index_module.HNSW_M, faiss.METRIC_INNER_PRODUCT)
    index.hnsw.efConstruction = index_module.HNSW_EF_CONSTRUCTION
    index.add(vectors)
    build_s = time.perf_counter() - start
    index.hnsw.efSearch = ef = tuned_ef(index, queries, truth, target)

    def search(query: FloatArray) -> LabelArray:
        labels: LabelArray = index.search(query[None, :], K)[1][0]
        return labels

    return Prepared(build_s, search, {"ef_search": ef})


def prepare_ours(vectors: FloatArray, folder: Path) -> Prepared:
    keys = np.arange(len(vectors), dtype=np.int64)  # key = row, so answers compare to truth
    index = EmbeddedIndex.open(folder, dim=vectors.shape[1])
    start = time.perf_counter()
    index.add(keys, vectors)
    build_s = time.perf_counter() - start
    start = time.perf_counter()
    index.save()
    save_s = time.perf_counter() - start
    index.close()

    def search(query: FloatArray) -> LabelArray:
        return np.array([hit.key for hit in index.search(query, K)], np.int64)

    notes = {
        "save_s": round(save_s, 2),
        "backend": "hnsw" if index.uses_graph else "exact",
        "ef_search": index.ef_search,
    }
    return Prepared(build_s, search, notes)


def bench_size(n: int, args: argparse.Namespace, work: Path) -> dict[str, Any]:
    vectors, queries = dataset(n, args.queries, args.dim, args.data, seed=n)
    truth = exact_top(vectors, queries, K)
    backends: dict[str, Prepared] = {}
    if "exact" in args.backends:
        backends["exact"] = prepare_exact(vectors)
    if "faiss_hnsw" in args.backends:
        backends["faiss_hnsw"] = prepare_faiss_hnsw(vectors, queries, truth, args.target)
    if "ours" in args.backends:
        backends["ours"] = prepare_ours(vectors, work / f"ours-{n}")
    measured = interleaved(backends, queries)
    result: dict[str, Any] = {"n": n}
    for name, (found, timings) in measured.items():
        result[name] = figures(backends[name], found, timings, truth)
    return result


# --------------------------------------------------------------------------- report


def print_table(results: dict[str, Any]) -> None:
    print(
        f"dim {results['dim']}, {results['data']} vectors, {results['queries']} queries, "
        f"{results['threads']} threads for builds and BLAS, one query per call"
    )
    print(
        f"{'n':>9} {'backend':12} {'build s':>9} {'p50 ms':>9} {'p99 ms':>9} {'p50 cpu':>9} "
        f"{'recall@10':>9}  notes"
    )
    for size in results["sizes"]:
        for name in (backend for backend in BACKENDS if backend in size):
            r = size[name]
            notes = []
            if r.get("backend"):
                notes.append(f"backend={r['backend']}")
            if r.get("ef_search"):
                notes.append(f"ef={r['ef_search']}")
            if "save_s" in r:
                notes.append(f"save {r['save_s']} s")
            print(
                f"{size['n']:>9} {name:12} {r['build_s']:>9.2f} {r['p50_ms']:>9.3f} "
                f"{r['p99_ms']:>9.3f} {r['p50_cpu_ms']:>9.3f} {r['recall_at_10']:>9.3f}  "
                f"{', '.join(notes)}"
            )


def backend_list(text: str) -> list[str]:
    names = text.split(",")
    unknown = sorted(set(names) - set(BACKENDS))
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown backend(s) {unknown}; choose from {BACKENDS}")
    return names


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument(
        "--sizes",
        type=lambda text: [int(part) for part in text.split(",")],
        default=list(DEFAULT_SIZES),
        help="comma-separated numbers of stored vectors",
    )
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--queries", type=int, default=500)
    parser.add_argument("--data", choices=("random", "clustered"), default="random")
    parser.add_argument("--target", type=float, default=0.95, help="recall@10 FAISS is tuned to")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--backends",
        type=backend_list,
        default=list(BACKENDS),
        help="comma-separated subset of " + ",".join(BACKENDS),
    )
    parser.add_argument("--json", action="store_true")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    threads_before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(args.threads)
    results: dict[str, Any] = {
        "dim": args.dim,
        "data": args.data,
        "queries": args.queries,
        "threads": args.threads,
        "sizes": [],
    }
    with (
        threadpool_limits(limits=args.threads, user_api="blas"),
        tempfile.TemporaryDirectory(prefix="clinic-bench-") as folder,
    ):
        try:
            for n in args.sizes:
                results["sizes"].append(bench_size(n, args, Path(folder)))
        finally:
            faiss.omp_set_num_threads(threads_before)
    if args.json:
        print(json.dumps(results))
    else:
        print_table(results)
    return results


if __name__ == "__main__":
    main()
