"""Start and stop the reference service as a separate process.

The reference service shares nothing with the harness but the protocol: the
harness starts it as ``python -m harness.reference`` on a free loopback port,
reads the base URL it prints once ready, and stops it with SIGTERM.
"""

from __future__ import annotations

import os
import selectors
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Sequence
from types import TracebackType

from harness.errors import HarnessError

START_TIMEOUT_S = 20.0


class EmbeddedService:
    """The reference service running in a child process on 127.0.0.1.

    Args:
        jwt_secret: the HS256 secret; passed through the environment
            (``AEP_JWT_SECRET``), never on the command line, so it does not
            show in ``ps``.
        faults: fault mode names (``--fault``), empty for a correct service.
        think_ms: ``(min, max)`` milliseconds between lifecycle events.
        extra_args: further command-line arguments for the service.

    Use as a context manager, or call :meth:`start` and :meth:`stop`.
    """

    def __init__(
        self,
        *,
        jwt_secret: str,
        faults: Sequence[str] = (),
        think_ms: tuple[int, int] | None = None,
        extra_args: Sequence[str] = (),
    ) -> None:
        self._secret = jwt_secret
        self.faults = tuple(faults)
        self._argv = [sys.executable, "-m", "harness.reference", "--host", "127.0.0.1"]
        self._argv += ["--port", "0"]
        for fault in self.faults:
            self._argv += ["--fault", fault]
        if think_ms is not None:
            self._argv += ["--think-ms", f"{think_ms[0]},{think_ms[1]}"]
        self._argv += list(extra_args)
        self._proc: subprocess.Popen[str] | None = None
        self.url = ""
        #: The service's last lines of output, kept for diagnostics.
        self.output: deque[str] = deque(maxlen=200)
        self._drainer: threading.Thread | None = None

    @property
    def pid(self) -> int:
        """The service's process id (for the psutil memory probe)."""
        if self._proc is None:
            raise HarnessError("the embedded service is not running; call start() first")
        return self._proc.pid

    def start(self) -> str:
        """Start the service and return its base URL once it is ready.

        Raises:
            HarnessError: the service exited or printed no URL within
                ``START_TIMEOUT_S`` seconds (its output is in the message).
        """
        env = dict(os.environ, AEP_JWT_SECRET=self._secret, PYTHONUNBUFFERED="1")
        self._proc = subprocess.Popen(
            self._argv,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            text=True,
            env=env,
        )
        assert self._proc.stdout is not None
        seen: list[str] = []
        deadline = time.monotonic() + START_TIMEOUT_S
        with selectors.DefaultSelector() as sel:
            sel.register(self._proc.stdout, selectors.EVENT_READ)
            while time.monotonic() < deadline:
                if not sel.select(timeout=max(0.0, deadline - time.monotonic())):
                    break
                line = self._proc.stdout.readline()
                if not line:
                    break
                seen.append(line.rstrip())
                if line.startswith(("http://", "https://")):
                    self.url = line.strip()
                    # Keep draining, or a chatty service blocks on a full pipe.
                    self._drainer = threading.Thread(target=self._drain, daemon=True)
                    self._drainer.start()
                    return self.url
        self.stop()
        output = " | ".join(seen[-5:]) or "no output"
        raise HarnessError(f"the embedded reference service did not start: {output}")

    def _drain(self) -> None:
        proc = self._proc
        if proc is None or proc.stdout is None:
            return
        try:
            for line in proc.stdout:
                self.output.append(line.rstrip())
        except (OSError, ValueError):  # closed by stop()
            return

    def stop(self) -> int | None:
        """Stop the service (SIGTERM, then SIGKILL after 5 s); return its exit code."""
        proc, self._proc = self._proc, None
        if proc is None:
            return None
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)
        if self._drainer is not None:
            self._drainer.join(timeout=2)
            self._drainer = None
        if proc.stdout is not None:
            proc.stdout.close()
        return proc.returncode

    def __enter__(self) -> EmbeddedService:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
