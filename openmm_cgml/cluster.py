"""Ensembles on Dask distributed: one way to reach a scheduler, one way to run resumable tasks on it.

``scheduler`` strings (the ``--scheduler`` option of the CLI):

- ``local:N`` starts a :class:`distributed.LocalCluster` of N single-threaded worker processes on this machine;
- ``tcp://HOST:PORT`` (or any address Dask accepts) connects to a running scheduler;
- a path to a ``.json`` file connects through a Dask scheduler file (``dask scheduler --scheduler-file F``,
  or dask-jobqueue's ``SLURMCluster(...).scheduler.address`` written there).

Every task given to :func:`run_tasks` must be resumable from its own checkpoint and idempotent once finished
(reference runs, replica runs): Dask re-runs the task of a worker that dies on another worker, and the task
then continues from its last checkpoint, so no frame is lost or duplicated.
"""
from __future__ import annotations

import contextlib
from typing import Callable, Iterator, List, Sequence


def _import_distributed():
    try:
        import distributed
    except ImportError:
        raise ValueError("running on a Dask scheduler needs the 'distributed' package: pip install distributed") from None
    return distributed


@contextlib.contextmanager
def connect(scheduler: str) -> Iterator["distributed.Client"]:
    """A Dask client for ``scheduler`` (see the module docstring), closed (and a local cluster shut down) on exit."""
    distributed = _import_distributed()
    if not isinstance(scheduler, str) or not scheduler:
        raise ValueError(f"scheduler must be 'local:N', a scheduler address or a scheduler file, got {scheduler!r}")
    if scheduler.startswith("local:"):
        try:
            n_workers = int(scheduler[len("local:"):])
        except ValueError:
            n_workers = 0
        if n_workers < 1:
            raise ValueError(f"scheduler {scheduler!r}: use local:N with N >= 1 workers")
        # One thread per worker: each task is an OpenMM or torch run that sets its own thread count.
        with distributed.LocalCluster(n_workers=n_workers, threads_per_worker=1, processes=True,
                                      dashboard_address=None) as cluster, distributed.Client(cluster) as client:
            yield client
        return
    kwargs = {"scheduler_file": scheduler} if scheduler.endswith(".json") else {"address": scheduler}
    try:
        client = distributed.Client(timeout="30s", **kwargs)
    except (OSError, TimeoutError) as error:
        raise ValueError(f"cannot reach the Dask scheduler {scheduler}: {error}") from None
    with client:
        yield client


def run_tasks(client, function: Callable, arguments: Sequence, desc: str = "tasks", progress: bool = True) -> List:
    """Run ``function(*args)`` for each tuple in ``arguments`` on the cluster; results in input order.

    One progress bar counts finished tasks. A task whose worker dies is rescheduled by Dask (up to the
    scheduler's ``allowed-failures``); a task that raises is re-raised here after the others are cancelled.
    """
    from tqdm.auto import tqdm

    import uuid

    distributed = _import_distributed()
    # Keys are unique per call: two ensembles on one scheduler must not share (and so silently reuse) a task.
    token = uuid.uuid4().hex[:8]
    futures = [client.submit(function, *args, pure=False, key=f"{desc}-{i}-{token}")
               for i, args in enumerate(arguments)]
    index = {future.key: i for i, future in enumerate(futures)}
    results = [None] * len(futures)
    with tqdm(total=len(futures), desc=desc, unit="task", disable=not progress) as bar:
        try:
            for future in distributed.as_completed(futures):
                results[index[future.key]] = future.result()
                bar.update(1)
        except BaseException:
            client.cancel(futures)
            raise
    return results
