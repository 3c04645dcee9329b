"""A real OpenSSH server on loopback, for distributed runs through ``--tx ssh=…`` gateways.

:func:`loopback_sshd` starts ``sshd`` (the Debian package ``openssh-server``;
``.ci/run`` installs it) in the foreground on a free 127.0.0.1 port with a
throwaway host key, accepting one throwaway client key for the current user,
and yields the ``ssh=`` part of an xdist ``--tx`` spec that logs in with it.
"""

from __future__ import annotations

import getpass
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.e2e_helpers import closed_port, seconds

SSHD = shutil.which("sshd") or "/usr/sbin/sshd"


def require_sshd() -> str:
    """The sshd binary; skip without one, except in CI (``.ci/run`` installs it)."""
    if not Path(SSHD).is_file() or not shutil.which("ssh"):
        message = "OpenSSH is not installed (apt-get install openssh-server openssh-client)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return SSHD


@contextmanager
def loopback_sshd(folder: Path) -> Iterator[str]:
    """Run sshd on 127.0.0.1 until the block ends; yield the ``ssh=…`` gateway text."""
    sshd = require_sshd()
    folder.mkdir(parents=True, exist_ok=True)
    for name in ("host_key", "client_key"):
        subprocess.run(
            ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(folder / name)],
            check=True,
            capture_output=True,
        )
    shutil.copy(folder / "client_key.pub", folder / "authorized_keys")
    if os.geteuid() == 0:
        # sshd started as root needs its privilege separation directory.
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
    port = closed_port()
    config = folder / "sshd_config"
    config.write_text(
        f"Port {port}\n"
        "ListenAddress 127.0.0.1\n"
        f"HostKey {folder / 'host_key'}\n"
        f"AuthorizedKeysFile {folder / 'authorized_keys'}\n"
        f"PidFile {folder / 'sshd.pid'}\n"
        "PasswordAuthentication no\n"
        "KbdInteractiveAuthentication no\n"
        "UsePAM no\n"
        "StrictModes no\n"
        "PermitRootLogin prohibit-password\n"
    )
    log = folder / "sshd.log"
    # -D: stay in the foreground (stopped below); -e: log to stderr (the file).
    with log.open("wb") as out:
        server = subprocess.Popen([sshd, "-D", "-e", "-f", str(config)], stderr=out)
    try:
        deadline = time.monotonic() + seconds(10)
        while True:
            if server.poll() is not None:
                raise RuntimeError(f"sshd exited: {log.read_text()}")
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"sshd is not listening: {log.read_text()}") from None
                time.sleep(0.05)
        options = (
            f"-p {port} -i {folder / 'client_key'} -o BatchMode=yes -o LogLevel=ERROR "
            "-o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null"
        )
        yield f"ssh={options} {getpass.getuser()}@127.0.0.1"
    finally:
        server.terminate()
        server.wait(timeout=10)
