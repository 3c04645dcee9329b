"""A real nats-server for the NATS adapter's tests: a generated config on loopback ports.

Each tenant is a NATS account; each simulated user a NATS user in it, its
password being the token the harness reads from a static tokens file written
from the same list. :func:`nats_server` starts ``nats-server`` (the Debian
package; ``.ci/run`` installs it) with a WebSocket listener and the monitoring
port, waits until ``/varz`` answers, and stops it after.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
import urllib.request
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import orjson
import pytest
from e2e_helpers import closed_port, seconds

NATS_SERVER = shutil.which("nats-server") or "/usr/sbin/nats-server"


def require_nats_server() -> str:
    """The nats-server binary; skip without one, except in CI (``.ci/run`` installs it)."""
    if not Path(NATS_SERVER).is_file():
        message = "nats-server is not installed (apt-get install nats-server)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return NATS_SERVER


@dataclass(frozen=True)
class NatsUser:
    """One NATS user: publishes and subscribes within ``publish``/``subscribe``."""

    tenant: str
    user: str
    password: str
    publish: Sequence[str]
    subscribe: Sequence[str]

    @property
    def name(self) -> str:
        """Its NATS user name (the adapter's default ``username`` template)."""
        return f"{self.tenant}.{self.user}"


@dataclass
class NatsConfig:
    """Accounts (one per tenant), their users, and stream exports/imports between them."""

    users: list[NatsUser]
    #: account → subjects it exports as public streams.
    exports: dict[str, list[str]] = field(default_factory=dict)
    #: account → (exporting account, subject) streams it imports.
    imports: dict[str, list[tuple[str, str]]] = field(default_factory=dict)

    def render(self, *, port: int, ws_port: int, http_port: int) -> str:
        """The nats-server configuration text."""
        q = _quote
        lines = [
            f"listen: {q(f'127.0.0.1:{port}')}",
            f"http: {q(f'127.0.0.1:{http_port}')}",
            f"websocket {{ listen: {q(f'127.0.0.1:{ws_port}')}, no_tls: true }}",
            "accounts {",
        ]
        tenants = list(dict.fromkeys(u.tenant for u in self.users))
        for tenant in tenants:
            lines.append(f"  {q(tenant)}: {{")
            lines.append("    users: [")
            for u in (u for u in self.users if u.tenant == tenant):
                perms = (
                    f"publish: {{allow: {_list(u.publish)}}}, "
                    f"subscribe: {{allow: {_list(u.subscribe)}}}"
                )
                lines.append(
                    f"      {{user: {q(u.name)}, password: {q(u.password)}, "
                    f"permissions: {{{perms}}}}}"
                )
            lines.append("    ]")
            if self.exports.get(tenant):
                streams = ", ".join(f"{{stream: {q(s)}}}" for s in self.exports[tenant])
                lines.append(f"    exports: [{streams}]")
            if self.imports.get(tenant):
                streams = ", ".join(
                    f"{{stream: {{account: {q(a)}, subject: {q(s)}}}}}"
                    for a, s in self.imports[tenant]
                )
                lines.append(f"    imports: [{streams}]")
            lines.append("  }")
        lines.append("}")
        return "\n".join(lines) + "\n"

    def tokens_file(self, path: Path) -> Path:
        """Write the harness's static tokens file (``<tenant> <user> <password>``)."""
        path.write_text("".join(f"{u.tenant} {u.user} {u.password}\n" for u in self.users))
        return path


def _quote(text: str) -> str:
    return orjson.dumps(text).decode()


def _list(items: Sequence[str]) -> str:
    return "[" + ", ".join(_quote(item) for item in items) + "]"


def isolated_users(tenants: Sequence[str], users: int) -> list[NatsUser]:
    """A correct configuration: every user publishes and subscribes under ``<user>.>`` only.

    Ordered user by user across tenants (``acme/u0``, ``globex/u0``, ``acme/u1`` …):
    the harness takes the first ``--users`` of the tokens file, so every run has the
    same user ids in several tenants.
    """
    return [
        NatsUser(tenant, f"u{n}", f"pw-{tenant}-u{n}-2f9c", [f"u{n}.>"], [f"u{n}.>"])
        for n in range(users)
        for tenant in tenants
    ]


@dataclass(frozen=True)
class RunningNats:
    """A started nats-server."""

    ws_url: str
    monitor_url: str
    config_path: Path
    process: subprocess.Popen[bytes]


@contextmanager
def nats_server(config: NatsConfig, folder: Path) -> Iterator[RunningNats]:
    """Start nats-server with ``config`` on free loopback ports; stop it after."""
    binary = require_nats_server()
    port, ws_port, http_port = _free_ports(3)
    path = folder / "nats.conf"
    path.write_text(config.render(port=port, ws_port=ws_port, http_port=http_port))
    log = folder / "nats-server.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [binary, "-c", str(path)],
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
    monitor = f"http://127.0.0.1:{http_port}"
    try:
        _wait_ready(monitor + "/varz", process, log)
        yield RunningNats(f"ws://127.0.0.1:{ws_port}", monitor, path, process)
    finally:
        process.terminate()
        try:
            process.wait(seconds(10))
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _free_ports(count: int) -> list[int]:
    ports: set[int] = set()
    while len(ports) < count:
        ports.add(closed_port())
    return sorted(ports)


def _wait_ready(url: str, process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + seconds(10)
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"nats-server exited with {process.returncode}:\n{log.read_text()}")
        try:
            with urllib.request.urlopen(url, timeout=1) as resp:
                if resp.status == 200:
                    return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nats-server did not answer {url} within 10 s:\n{log.read_text()}")


def varz(monitor_url: str) -> dict[str, object]:
    """The server's ``/varz`` document."""
    with urllib.request.urlopen(monitor_url + "/varz", timeout=5) as resp:
        doc: dict[str, object] = orjson.loads(resp.read())
    return doc
