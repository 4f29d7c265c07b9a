"""A sweep over many traces: one task per trace, run in this process (`--executor local`, the
default) or on Dask distributed (`--executor dask`: a local cluster of worker processes;
`dask=ADDRESS`: a running scheduler's workers, which must see the traces at the same paths).
Dask over Ray: it is pure Python from PyPI (the `fleet` extra), starts a local cluster in about
a second, and its futures need no change to the sweep. A worker process loads the compiled
model once (numba's cache) and keeps it for every trace it is given."""
from __future__ import annotations

import logging
from contextlib import ExitStack
from pathlib import Path
from typing import Callable

import polars as pl

from replay.sweep import SweepSpec, sweep_path
from traces.errors import UserError
from traces.manifest import MANIFEST

LOCAL_WORKERS = 2  # processes of a local cluster: the development VMs' cores
CONNECT_TIMEOUT = "10s"


def trace_paths(given: list[Path]) -> list[Path]:
    """The traces named: each a trace directory, or a directory of trace directories."""
    paths = []
    for path in given:
        if (path / MANIFEST).exists():
            paths.append(path)
            continue
        inside = sorted(child for child in path.iterdir() if (child / MANIFEST).exists()) if path.is_dir() else []
        if not inside:
            raise UserError(f"{path}: neither a trace nor a directory of traces (no {MANIFEST}); give trace directories "
                            "`chargeplay collect -o` wrote")
        paths += inside
    return paths


def parse_executor(text: str) -> tuple[str, str | None]:
    """("local" or "dask", a scheduler's address or None)."""
    name, _, address = text.partition("=")
    if name not in ("local", "dask") or (name == "local" and address) or (name == "dask" and "=" in text and not address):
        raise UserError(f"--executor {text!r}: give local, dask (a local cluster of {LOCAL_WORKERS} worker processes) or "
                        "dask=ADDRESS (a running scheduler, e.g. tcp://10.0.0.5:8786)")
    return name, address or None


Finished = Callable[[Path], None]  # told each trace as its sweep ends, in whatever order they end


class Local:
    """The sweeps one after another in this process."""

    def __enter__(self) -> "Local":
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def run(self, paths: list[Path], spec: SweepSpec, finished: Finished) -> list[pl.DataFrame]:
        """Each trace's sweep (replay.sweep.sweep_path), in the order given."""
        tables = []
        for path in paths:
            tables.append(sweep_path(str(path), spec))
            finished(path)
        return tables


class Dask:
    """One task per trace on a Dask cluster: a local one of LOCAL_WORKERS processes, or the
    scheduler at `address`; connected on entering, so that a refusal comes before any work."""

    def __init__(self, address: str | None) -> None:
        self.address = address
        self.stack = ExitStack()

    def __enter__(self) -> "Dask":
        try:
            from distributed import Client, LocalCluster
        except ImportError:
            raise UserError("--executor dask needs Dask distributed: pip install 'chargeplay[fleet]'") from None
        with self.stack:
            if self.address is None:
                cluster = self.stack.enter_context(LocalCluster(n_workers=LOCAL_WORKERS, threads_per_worker=1, processes=True,
                                                                dashboard_address=None, silence_logs=logging.ERROR))
                self.client = self.stack.enter_context(Client(cluster))
            else:
                try:
                    self.client = self.stack.enter_context(Client(self.address, timeout=CONNECT_TIMEOUT))
                except OSError as error:
                    raise UserError(f"--executor dask={self.address}: no scheduler answered ({error}); start one "
                                    "(dask scheduler) or give --executor dask for a local cluster") from None
            self.stack = self.stack.pop_all()  # connected: kept open until __exit__
        return self

    def __exit__(self, *exc: object) -> None:
        self.stack.close()

    def run(self, paths: list[Path], spec: SweepSpec, finished: Finished) -> list[pl.DataFrame]:
        """Each trace's sweep, in the order given."""
        from distributed import as_completed

        futures = {self.client.submit(sweep_path, str(path), spec, pure=False): path for path in paths}
        tables = {}
        for future in as_completed(futures):
            tables[futures[future]] = future.result()
            finished(futures[future])
        return [tables[path] for path in paths]


def executor(text: str) -> Local | Dask:
    """The executor `--executor` names (parse_executor), to enter before the work."""
    name, address = parse_executor(text)
    return Local() if name == "local" else Dask(address)
