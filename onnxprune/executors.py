"""Where a search's trials run: one interface, `map(fn, items) -> results in order`, over this
process (`Serial`), local worker processes (`Pool`, `--jobs N`) or a Ray cluster (`RayTasks`,
`--ray auto|ADDRESS`). The trials are independent and results come back in submission order, so
what a search chooses does not depend on where it ran.
"""
from __future__ import annotations

import multiprocessing
import os
import socket
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool

from .errors import OnnxPruneError
from .plumbing import first_line


class Serial:
    workers = 1

    def map(self, fn, items: list) -> list:
        return [fn(x) for x in items]

    def close(self) -> None:
        pass


class Pool:
    """Worker processes on this machine, started fresh (spawn: ORT's threads do not survive a fork)."""

    def __init__(self, jobs: int) -> None:
        self.workers = jobs
        self.pool = ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn"))

    def map(self, fn, items: list) -> list:
        try:
            return list(self.pool.map(fn, items))
        except BrokenProcessPool:  # a worker died (a native crash): the trial's own error is lost with it
            raise OnnxPruneError("a trial's worker process died (ONNX Runtime crashed in it); run with --jobs 1 "
                                 "to see the error") from None

    def close(self) -> None:
        self.pool.shutdown(cancel_futures=True)


class RayTasks:
    """Each trial a Ray task on the cluster at `address` ('auto': the one this machine belongs to,
    or a local instance started for the run). Connecting is checked when it is made, before any
    trial runs."""

    def __init__(self, address: str) -> None:
        try:
            import ray
        except ImportError:
            raise OnnxPruneError("--ray needs Ray, which is not installed: pip install 'onnxprune[ray]'") from None
        self.ray = ray
        if address != "auto":
            _reachable(address)
        try:
            if address == "auto" and not os.environ.get("RAY_ADDRESS"):
                ray.init(ignore_reinit_error=True, include_dashboard=False, log_to_driver=False,
                         configure_logging=False)
            else:
                ray.init(address=address, ignore_reinit_error=True, log_to_driver=False, configure_logging=False)
        except (Exception, SystemExit) as e:  # Ray may exit rather than raise when it gives up
            raise OnnxPruneError(f"cannot reach the Ray cluster at {address}: {first_line(e)}") from None
        self.workers = max(1, int(ray.cluster_resources().get("CPU", 1)))

    def map(self, fn, items: list) -> list:
        task = self.ray.remote(num_cpus=1)(fn)
        try:
            return self.ray.get([task.remote(x) for x in items])
        except self.ray.exceptions.RayTaskError as e:  # the trial's own error, as raised in the task
            cause = e.as_instanceof_cause()
            if isinstance(cause, OnnxPruneError):
                raise OnnxPruneError(str(cause).splitlines()[-1]) from None
            raise OnnxPruneError(f"a trial failed on the Ray cluster: {first_line(e)}") from None
        except self.ray.exceptions.RayError as e:  # a worker or node lost
            raise OnnxPruneError(f"the Ray cluster lost a trial: {first_line(e)}") from None

    def close(self) -> None:
        self.ray.shutdown()


def _reachable(address: str, timeout_s: float = 5.0) -> None:
    """Refuse an address nothing listens at in seconds (Ray itself retries for minutes)."""
    host, _, port = address.removeprefix("ray://").rpartition(":")
    try:
        socket.create_connection((host or "127.0.0.1", int(port)), timeout=timeout_s).close()
    except (OSError, ValueError) as e:
        raise OnnxPruneError(f"cannot reach the Ray cluster at {address}: {e}") from None


def executor(jobs: int = 1, ray: str | None = None):
    """The executor the options ask for."""
    if ray:
        return RayTasks(ray)
    return Pool(jobs) if jobs > 1 else Serial()
