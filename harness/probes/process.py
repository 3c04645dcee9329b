"""Read a local target process's memory and handles by PID (psutil).

For targets the harness started itself (or can see on the same host). The
readings are ``/proc`` reads: microseconds, so they are taken inline rather
than in a thread.
"""

from __future__ import annotations

import psutil

from harness.errors import TargetError, TargetUnreachable

__all__ = ["ProcessProbe"]


class ProcessProbe:
    """Memory and handle counts of one process.

    Args:
        pid: the target's process id.

    Raises:
        TargetUnreachable: no such process.
        TargetError: the process exists but may not be inspected.
    """

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self._target = f"pid {pid}"
        try:
            self._process = psutil.Process(pid)
        except psutil.NoSuchProcess as exc:
            raise TargetUnreachable(self._target, f"no process with pid {pid}") from exc
        except psutil.AccessDenied as exc:
            raise TargetError(self._target, f"not allowed to inspect pid {pid}") from exc

    def __repr__(self) -> str:
        return f"ProcessProbe(pid={self.pid})"

    def rss_bytes(self) -> float:
        """Resident set size, in bytes.

        Raises:
            TargetUnreachable: the process has exited (or its pid was reused).
            TargetError: not allowed to inspect it.
        """
        self._check_running()
        try:
            return float(self._process.memory_info().rss)
        except psutil.Error as exc:
            raise self._error(exc) from exc

    def read(self) -> dict[str, float]:
        """RSS, threads and (on POSIX) open file descriptors, read together.

        Returns:
            ``process_rss_bytes``, ``process_threads`` and, where the platform
            has them, ``process_open_fds``.

        Raises:
            TargetUnreachable: the process has exited (or its pid was reused).
            TargetError: not allowed to inspect it.
        """
        self._check_running()
        try:
            with self._process.oneshot():
                out = {
                    "process_rss_bytes": float(self._process.memory_info().rss),
                    "process_threads": float(self._process.num_threads()),
                }
                if hasattr(self._process, "num_fds"):
                    out["process_open_fds"] = float(self._process.num_fds())
        except psutil.Error as exc:
            raise self._error(exc) from exc
        return out

    async def __call__(self) -> dict[str, float]:
        """:meth:`read`, as a :class:`~harness.probes.sampler.Sampler` source."""
        return self.read()

    def _check_running(self) -> None:
        # is_running() also compares the creation time, catching a reused pid.
        if not self._process.is_running():
            raise TargetUnreachable(self._target, f"process {self.pid} has exited")

    def _error(self, exc: psutil.Error) -> TargetError:
        if isinstance(exc, psutil.NoSuchProcess | psutil.ZombieProcess):
            return TargetUnreachable(self._target, f"process {self.pid} has exited")
        if isinstance(exc, psutil.AccessDenied):
            return TargetError(self._target, f"not allowed to inspect pid {self.pid}")
        return TargetError(self._target, f"reading pid {self.pid} failed: {exc}")
