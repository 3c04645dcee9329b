"""Helpers for the end-to-end, CLI and plugin acceptance tests: real processes on 127.0.0.1.

Every harness run here is a separate ``python -m harness`` process against a
reference service started on port 0; nothing is mocked. Time limits are scaled
by one factor from the environment (slow CI: ``ISOHARNESS_TEST_TIME_FACTOR=3``).
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import jwt
import orjson

from harness.embedded import EmbeddedService

#: The signing secret every test service verifies with (AEP/1 §1; at least 32 bytes).
SECRET = "e2e-signing-secret-0123456789abcdefghijklmnop"
#: Scales every time limit in these tests.
TIME_FACTOR = float(os.environ.get("ISOHARNESS_TEST_TIME_FACTOR", "1"))
#: A seed fixed for every run, so a failure here can be replayed with the same schedule.
SEED = 20261124
#: Small sizes: each targeted run takes a few seconds.
SMALL = ("--users", "4", "--tenants", "2", "--seed", str(SEED))


def seconds(value: float) -> float:
    """A time limit scaled by :data:`TIME_FACTOR`."""
    return value * TIME_FACTOR


def isoharness() -> list[str]:
    """The ``isoharness`` console script of the interpreter running the tests."""
    script = Path(sys.executable).with_name("isoharness")
    return [str(script)] if script.is_file() else [sys.executable, "-m", "harness"]


def harness_env(**extra: str) -> dict[str, str]:
    """The environment for a harness process: ours without any ``ISOHARNESS_*`` setting
    (a developer's shell must not change what these tests run), plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ISOHARNESS_")}
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


def run_harness(
    *args: str,
    cwd: Path,
    secret: str | None = SECRET,
    timeout_s: float = 120,
) -> subprocess.CompletedProcess[str]:
    """``python -m harness ARGS`` in ``cwd``, with ``$ISOHARNESS_JWT_SECRET`` set to ``secret``."""
    env = harness_env() if secret is None else harness_env(ISOHARNESS_JWT_SECRET=secret)
    return subprocess.run(
        [sys.executable, "-m", "harness", *args],
        cwd=cwd,
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=seconds(timeout_s),
        check=False,
    )


def assert_tokens_file_refused(tmp_path: Path, problem: str, tokens: Sequence[str]) -> None:
    """``isoharness run`` with ``tmp_path/tokens.txt`` stops before pytest: exit 2, one
    line ending in ``problem``, no token shown, no report folder."""
    proc = run_harness(
        "run", "--credentials", "static", "--tokens-file", "tokens.txt", cwd=tmp_path, secret=None
    )
    assert proc.returncode == 2, output_of(proc)
    assert proc.stderr.splitlines() == [
        f"isoharness: error: invalid tokens_file '{tmp_path / 'tokens.txt'}' from "
        f"--tokens-file: {problem}"
    ]
    assert proc.stdout == ""
    assert not any(token in proc.stderr for token in tokens)
    assert not (tmp_path / "reports").exists()


def output_of(proc: subprocess.CompletedProcess[str]) -> str:
    """stdout and stderr together, for assertion messages."""
    return f"--- stdout ---\n{proc.stdout}\n--- stderr ---\n{proc.stderr}"


def read_summary(folder: Path) -> dict[str, Any]:
    """The report folder's ``summary.json``."""
    doc: dict[str, Any] = orjson.loads((folder / "summary.json").read_bytes())
    return doc


@contextmanager
def reference_service(
    *faults: str, secret: str = SECRET, extra_args: Sequence[str] = ()
) -> Iterator[str]:
    """A reference service with ``faults`` on 127.0.0.1, port 0; yields its base URL.

    It must shut down cleanly (exit 0) when the test is done with it.
    """
    service = EmbeddedService(jwt_secret=secret, faults=faults, extra_args=extra_args)
    url = service.start()
    try:
        yield url
    finally:
        code = service.stop()
    assert code == 0, f"the reference service exited with {code}: {list(service.output)[-5:]}"


def closed_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


# -- secrets -----------------------------------------------------------------------------------


def jwt_header_segment(secret: str = SECRET) -> bytes:
    """The first segment shared by every HS256 token the harness mints."""
    token = jwt.encode({"sub": "x", "tenant": "y", "exp": 1}, secret, algorithm="HS256")
    return token.split(".")[0].encode()


_FIRST_USE = re.compile(rb'"k":"(?:open|http)","t":([0-9.]+),[^\n]*?"user":"([^"/]+)/([^"]+)"')


def minted_tokens(folder: Path, secret: str = SECRET) -> list[bytes]:
    """The tokens minted for the first user of the run, recomputed.

    The harness mints ``{"sub", "tenant", "exp": now + 24 h}`` (AEP/1 §1); the
    first ``open`` or ``http`` record of ``events.jsonl`` names a user and when
    its token was used, so every ``exp`` from the run's start to then is tried.
    """
    summary = read_summary(folder)
    started = int(summary["run"]["started_at"])
    match = _FIRST_USE.search((folder / "events.jsonl").read_bytes())
    assert match is not None, "events.jsonl has no 'open' or 'http' record to take a user from"
    opened, tenant, sub = float(match[1]), match[2].decode(), match[3].decode()
    day = 24 * 3600
    return [
        jwt.encode({"sub": sub, "tenant": tenant, "exp": exp}, secret, algorithm="HS256").encode()
        for exp in range(started + day - 2, int(opened) + day + 3)
    ]


def secret_needles(folder: Path, secret: str = SECRET) -> dict[str, bytes]:
    """What must appear in no report file: the secret, any minted token and its parts."""
    needles = {"the JWT secret": secret.encode(), "a JWT header": jwt_header_segment(secret)}
    for n, token in enumerate(minted_tokens(folder, secret)):
        _, payload, signature = token.split(b".")
        needles[f"minted token {n}"] = token
        needles[f"minted token {n} payload"] = payload
        needles[f"minted token {n} signature"] = signature
    return needles


def leaks(folder: Path, needles: dict[str, bytes]) -> list[str]:
    """``file: what`` for every needle found in the bytes of any file under ``folder``.

    The needles themselves are never part of the answer (a failing test must
    not print the secret either).
    """
    found = []
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        data = path.read_bytes()
        found += [f"{path.name}: {what}" for what, needle in needles.items() if needle in data]
    return found


def lines_with(text: str, words: Sequence[str]) -> list[str]:
    """The lines of ``text`` containing every one of ``words``."""
    return [line for line in text.splitlines() if all(word in line for word in words)]
