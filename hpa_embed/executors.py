"""Where the per-field stages run: this process, a local process pool or a Dask cluster, one task
per batch of fields; and which fields one shard of an array job takes.

:func:`map_batches` is what :func:`~hpa_embed.segment.segment_directory` and
:func:`~hpa_embed.crops.build_store` submit their work through. Its ``executor`` is

* ``None``: a local :class:`~concurrent.futures.ProcessPoolExecutor` (in this process when one
  worker is asked for);
* a ``dask.distributed.Client``, or the address of a Dask scheduler (``"tcp://host:8786"``,
  connected for the run): tasks go to the cluster through ``client.get_executor()``, so the
  files the stages read and write must lie on storage every worker sees;
* any other :class:`concurrent.futures.Executor`, used as it is.

A task handles a batch of fields and writes its own output (masks, or a chunk of crops that the
driver then links into the store) and returns what the driver records: which fields completed,
and their table rows. A batch lost
to the executor (a killed worker, a broken pool) costs only its fields: the others go on, and
the stage ends with :class:`LostBatchesError` so that a rerun, which skips what is done, does
the rest. Dask itself first retries a task whose worker died (``distributed.scheduler.
allowed-failures``, 3 by default).

Dask's nanny starts its workers with ``MALLOC_TRIM_THRESHOLD_`` set, which turns off glibc's
adaptive mmap threshold: every array over 128 KiB is then mapped and unmapped again, and the
per-field stages spend about 1.6x the CPU time. Its workers also sample their threads' stacks
every 10 ms, and every process of a cluster wakes every 20 ms to check its event loop. Start
clusters under :data:`DASK_WORKER_CONFIG` (``with dask.config.set(DASK_WORKER_CONFIG):
LocalCluster(...)``), or set the same in the environment where the scheduler and the workers
start (docs/cluster.md).

Slurm array jobs without Dask split the fields with :func:`select_shard` (``--shard I/N``).
"""

from __future__ import annotations

import logging
import os
import zlib
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, Executor, Future, ProcessPoolExecutor, wait
from typing import Any

from .batch import BatchError

__all__ = ["LostBatchesError", "map_batches", "split_batches", "select_shard", "check_lost",
           "DASK_WORKER_CONFIG"]

log = logging.getLogger(__name__)

#: Most fields in one task: a lost task costs at most this many fields.
MAX_FIELDS_PER_TASK = 16

#: Default task sizes: each task takes this share of the fields left per worker, so the first
#: tasks are large and the last ones small, and no worker waits long for another at the end.
_GUIDED_SHARE = 3

#: Dask config for starting a cluster for these stages: glibc's mmap threshold at its adaptive
#: maximum (32 MiB), which the nanny's ``MALLOC_TRIM_THRESHOLD_`` otherwise pins at 128 KiB; no
#: statistical profiling of the tasks (a stack sample every 10 ms, for the dashboard); the event
#: loops' blocked-loop check every second instead of every 20 ms.
DASK_WORKER_CONFIG = {
    "distributed.nanny.pre-spawn-environ.MALLOC_MMAP_THRESHOLD_": 32 * 2**20,
    "distributed.worker.profile.enabled": False,
    "distributed.admin.tick.interval": "1s",
}


class LostBatchesError(BatchError):
    """Batches of fields were lost to the executor (a worker died, the pool broke); the fields
    done are kept, and a rerun does the others."""


def select_shard(ids: Iterable[str], index: int, count: int) -> list[str]:
    """The ids of shard ``index`` of ``count`` (0-based), sorted.

    A field belongs to shard ``crc32(id) % count``: its shard depends on its id alone, so every
    array task, and every rerun (also after fields were added), makes the same split, and the
    shards are disjoint and cover every id.
    """
    if count < 1 or not 0 <= index < count:
        raise ValueError(f"shard {index}/{count}: the index must lie in 0..count-1 "
                         f"(for Slurm: --array=0-{max(count - 1, 0)})")
    return sorted(item for item in ids if zlib.crc32(item.encode()) % count == index)


def check_lost(lost: Mapping[str, str], where: str | os.PathLike) -> None:
    """Raise :class:`LostBatchesError` when ``lost`` (field -> why its batch was lost) is not empty."""
    if lost:
        image_id, reason = next(iter(lost.items()))
        raise LostBatchesError(f"{where}: {len(lost)} field(s) not done, their batches were lost "
                               f"(e.g. {image_id}: {reason}); the fields done are kept, run again to do "
                               "the others")


def split_batches(items: Sequence[Any], slots: int, batch_size: int | None = None) -> list[list[Any]]:
    """``items`` cut into consecutive tasks, in order.

    With ``batch_size`` every task but the last holds that many items. Without, task sizes
    shrink as the items run out (guided scheduling): a task takes ``1 / (3 * slots)`` of the
    items not yet given out, between 1 and :data:`MAX_FIELDS_PER_TASK`, so the work ends in small
    tasks that the ``slots`` workers finish at about the same time.
    """
    batches, start = [], 0
    while start < len(items):
        size = batch_size or min(MAX_FIELDS_PER_TASK, max(1, (len(items) - start) // (_GUIDED_SHARE * slots)))
        batches.append(list(items[start:start + size]))
        start += size
    return batches


def _slots(executor: Any, workers: int | None) -> int:
    """How many tasks run at once: a Dask cluster's threads, else ``workers`` or the CPUs."""
    if hasattr(executor, "nthreads") and hasattr(executor, "get_executor"):  # a distributed.Client
        return max(1, sum(executor.nthreads().values()))
    return max(1, workers if workers is not None else os.cpu_count() or 1)


def map_batches(
    function: Callable[..., Any],
    items: Sequence[Any],
    *args: Any,
    executor: Executor | Any | str | None = None,
    workers: int | None = None,
    batch_size: int | None = None,
    ordered: bool = False,
) -> Iterator[tuple[list[Any], Any, str | None]]:
    """Run ``function(batch, *args)`` on batches of ``items``; yield ``(batch, result, error)``.

    Parameters
    ----------
    function : callable
        A module-level function (it is pickled by reference), ``batch`` a list of items.
    items : sequence
        Fields, or jobs of one field each.
    executor : None, Executor, dask.distributed.Client or str
        See the module docstring. With ``None`` and ``workers <= 1`` (or one batch) the batches
        run in this process and an exception propagates.
    workers : int, optional
        Processes of the local pool (default: one per CPU); with another executor, the number
        of tasks it runs at once (a Client knows its own).
    batch_size : int, optional
        Items per task; default: shrinking tasks (:func:`split_batches`).
    ordered : bool
        Yield in the order of ``items`` (else as tasks complete).

    Yields
    ------
    batch : list
    result : the function's return value, or None when the batch was lost
    error : str or None
        Why the batch was lost (the executor's exception).

    At most twice as many tasks as run at once are in flight (for a Client, as its cluster has
    threads now: an adaptive cluster may grow), so the results a driver holds stay bounded;
    tasks not started when the caller stops iterating are cancelled, and an executor made here
    is shut down.
    """
    if isinstance(executor, str):
        from distributed import Client

        log.info("connecting to the Dask scheduler at %s", executor)
        with Client(executor) as client:
            yield from map_batches(function, items, *args, executor=client, workers=workers,
                                   batch_size=batch_size, ordered=ordered)
        return
    slots = _slots(executor, workers)
    batches = split_batches(items, slots, batch_size)
    if executor is None and (slots <= 1 or len(batches) <= 1):
        for batch in batches:
            yield batch, function(batch, *args), None
        return
    own, client = None, None
    if executor is None:
        own = executor = ProcessPoolExecutor(max_workers=min(slots, len(batches)))
    elif hasattr(executor, "get_executor"):
        client, executor = executor, executor.get_executor()
    pending: deque[tuple[list[Any], Future]] = deque()
    try:
        todo = iter(batches)
        while True:
            # an adaptive cluster grows with the tasks waiting for it: ask it its size each time
            window = 2 * (_slots(client, workers) if client is not None else slots)
            for batch in todo:
                pending.append((batch, executor.submit(function, batch, *args)))
                if len(pending) >= window:
                    break
            if not pending:
                return
            if not ordered:
                wait([future for _, future in pending], return_when=FIRST_COMPLETED)
                done = next(i for i, (_, future) in enumerate(pending) if future.done())
                pending.rotate(-done)
            batch, future = pending.popleft()
            try:
                result = future.result()
            except Exception as error:  # the executor lost the task; the other batches go on
                log.warning("a batch of %d item(s) was lost: %s: %s", len(batch), type(error).__name__, error)
                yield batch, None, f"{type(error).__name__}: {error}"
                continue
            yield batch, result, None
    finally:
        for _, future in pending:
            future.cancel()
        if own is not None:
            own.shutdown(wait=True, cancel_futures=True)
