"""Ingestion's decode stage on Ray Data: items in, ``Prepared``/``Refused`` outcomes streamed back.

What runs where:

- the driver (the ``clinic ingest`` process) hashes and triages the items, as on the local engine,
  and writes every batch of outcomes itself (same ``_flush``, dedup, quarantine and run row);
- each Ray task decodes a block of items the way a local run does: under the supervisor, in one
  forked decoding process, so a decoder that aborts or hangs on an input costs that input (a
  ``decoder_crashed``/timeout quarantine row), never the task;
- a Ray worker process that dies (killed, out of memory, node lost) fails only its task, which
  Ray runs again (``TASK_RETRIES``); blob writes are content-addressed and outcomes of a failed
  attempt are never returned, and the driver drops any item it has already received, so an item
  is neither lost nor stored twice.

Workers read input files and write blobs under ``CLINIC_HOME`` themselves: on a multi-node
cluster the inputs and ``CLINIC_HOME`` must be on a filesystem every node mounts. Workers
de-identify, so the pseudonymisation key travels to them with each task (never the audit key,
and no database connection): run ingestion only on a cluster trusted like this machine.
"""

from __future__ import annotations

import math
import pickle
import socket
from collections.abc import Callable, Iterator
from dataclasses import replace
from functools import partial
from typing import Any

import numpy as np
import numpy.typing as npt
import ray.data

from clinic.engines.options import EngineOptions
from clinic.engines.ray_runtime import TASK_RETRIES, ray_connection, remote_args_accepted
from clinic.ingest.engine import preload_readers, prepare_context, supervised_decoding
from clinic.ingest.prepare import Outcome, PrepareContext
from clinic.ingest.supervisor import InflightJournal, run_supervised
from clinic.ingest.types import IngestItem
from clinic.store.store import Store

Task = tuple[IngestItem, str]
Decode = Callable[[list[Task], PrepareContext], list[Outcome]]
ITEMS_PER_TASK = 32  # small enough to stream and balance, large enough to amortise a fork


def supervised_decode(tasks: list[Task], context: PrepareContext) -> list[Outcome]:
    """Decode ``tasks`` in one supervised process, exactly like a local run with one worker.

    The in-flight journal is per node: its entries name process ids, which mean something only
    on the machine that wrote them.
    """
    preload_readers()
    journal = InflightJournal(context.blobs.root.parent / "inflight" / socket.gethostname())
    return list(run_supervised(supervised_decoding(context, journal), tasks, workers=1))


DECODE: Decode = supervised_decode
"""The decode function shipped to the tasks (a seam the fault-injection test replaces)."""


def decode_block(
    batch: dict[str, npt.NDArray[Any]], *, decode: Decode, context: PrepareContext
) -> dict[str, npt.NDArray[Any]]:
    """One Ray task: a block of pickled ``(item, sha256)`` tasks to ``{sha256, outcome}`` rows.

    Items and outcomes travel pickled, as bytes columns: they are frozen dataclasses that Arrow
    cannot hold as columns, and explicit bytes say exactly what crosses the wire.
    """
    tasks: list[Task] = [pickle.loads(payload) for payload in batch["task"]]
    outcomes = decode(tasks, context)
    return {
        "sha256": np.array([outcome.item_sha256 for outcome in outcomes], dtype=object),
        "outcome": np.array([pickle.dumps(outcome) for outcome in outcomes], dtype=object),
    }


def ray_outcomes(store: Store, pending: list[Task], options: EngineOptions) -> Iterator[Outcome]:
    """Decode ``pending`` on Ray; yield each item's outcome once, in completion order."""
    if not pending:
        return
    context = replace(prepare_context(store), crash_contained=True)
    with ray_connection(options):
        dataset = _decode_dataset(pending, context, options.workers)
        yield from _first_outcomes(dataset)


def _decode_dataset(pending: list[Task], context: PrepareContext, workers: int) -> Any:
    rows = [{"task": pickle.dumps(task)} for task in pending]
    blocks = max(1, math.ceil(len(rows) / ITEMS_PER_TASK))
    dataset = ray.data.from_items(rows, override_num_blocks=blocks)
    with remote_args_accepted():
        return dataset.map_batches(
            partial(decode_block, decode=DECODE, context=context),
            batch_size=None,  # one task per block
            batch_format="numpy",
            compute=ray.data.TaskPoolStrategy(size=min(workers, blocks)),
            num_cpus=1,
            max_retries=TASK_RETRIES,
        )


def _first_outcomes(dataset: Any) -> Iterator[Outcome]:
    """Stream outcomes back block by block; an item seen before (a retried task whose first
    attempt got through) is dropped here rather than counted twice."""
    seen: set[str] = set()
    for block in dataset.iter_batches(batch_size=None, batch_format="numpy"):
        for sha, outcome in zip(block["sha256"], block["outcome"], strict=True):
            if sha in seen:
                continue
            seen.add(str(sha))
            yield pickle.loads(outcome)
