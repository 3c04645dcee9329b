"""Credential providers: minted JWTs, a static tokens file, a custom login hook."""

from __future__ import annotations

import asyncio
import sys
import time

import jwt
import pytest

from harness.credentials import HookCredentials, JwtCredentials, StaticCredentials
from harness.errors import ConfigError, UsageError
from harness.types import TenantId, UserId, UserKey

ALICE = UserKey(TenantId("acme"), UserId("alice"))
SECRET = "a-signing-secret-of-at-least-32-bytes!"


def test_jwt_tokens_carry_sub_tenant_and_a_future_exp():
    token = asyncio.run(JwtCredentials(SECRET).token_for(ALICE))
    claims = jwt.decode(token, SECRET, algorithms=["HS256"])
    assert (claims["sub"], claims["tenant"]) == ("alice", "acme")
    assert claims["exp"] > time.time()


def test_a_short_secret_mints_without_warnings():
    # filterwarnings=error would turn pyjwt's key-length warning into a failure
    JwtCredentials("short").mint(ALICE)


def test_static_tokens_are_read_per_user(tmp_path):
    path = tmp_path / "tokens.txt"
    path.write_text("# tenant user token\nacme alice tok-a\n\nacme bob tok-b\n")
    static = StaticCredentials(path)
    assert static.fixed_users() == [ALICE, UserKey(TenantId("acme"), UserId("bob"))]
    assert asyncio.run(static.token_for(ALICE)) == "tok-a"
    with pytest.raises(UsageError, match="has no token for acme/carol"):
        asyncio.run(static.token_for(UserKey(TenantId("acme"), UserId("carol"))))


def test_a_malformed_tokens_line_names_the_line_and_never_shows_it(tmp_path):
    path = tmp_path / "tokens.txt"
    path.write_text("acme alice tok-a\nacme bob tok-b trailing\n")
    with pytest.raises(ConfigError) as caught:
        StaticCredentials(path, source="--tokens-file")
    assert str(caught.value) == (
        f"invalid tokens_file '{path}' from --tokens-file: line 2 has 4 fields; "
        "each line must be '<tenant> <user> <token>'"
    )
    assert "tok-" not in str(caught.value)


def test_a_login_hook_may_be_sync_or_async(tmp_path, monkeypatch):
    (tmp_path / "my_login.py").write_text(
        "async def login(user):\n    return f'tok-{user.tenant}-{user.user}'\n"
        "def plain(user):\n    return 'plain-' + user.user\n"
        "def broken(user):\n    return None\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    assert asyncio.run(HookCredentials("my_login:login").token_for(ALICE)) == "tok-acme-alice"
    assert asyncio.run(HookCredentials("my_login:plain").token_for(ALICE)) == "plain-alice"
    with pytest.raises(UsageError, match="login_hook returned NoneType for acme/alice"):
        asyncio.run(HookCredentials("my_login:broken").token_for(ALICE))
    sys.modules.pop("my_login", None)


def test_an_unimportable_hook_is_a_config_error():
    with pytest.raises(ConfigError, match="an importable 'package.module:function'"):
        HookCredentials("no_such_module_xyz:login")


def test_a_run_with_a_static_tokens_file_passes_a_correct_service(tmp_path):
    import json
    import os
    import subprocess

    from harness.embedded import EmbeddedService

    minting = JwtCredentials(SECRET)
    users = [UserKey(TenantId(f"t{i % 2}"), UserId(f"u{i // 2}")) for i in range(8)]
    lines = [f"{u.tenant} {u.user} {minting.mint(u)}" for u in users]
    (tmp_path / "tokens.txt").write_text("\n".join(lines) + "\n")
    with EmbeddedService(jwt_secret=SECRET) as service:
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "harness",
                "run",
                "--target-url",
                service.url,
                "--credentials",
                "static",
                "--tokens-file",
                str(tmp_path / "tokens.txt"),
                "--report-dir",
                str(tmp_path / "report"),
                "--",
                "-k",
                "concurrent_users",
                "-q",
            ],
            capture_output=True,
            text=True,
            timeout=120,
            env={k: v for k, v in os.environ.items() if not k.startswith("ISOHARNESS_")},
        )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    summary = json.loads((tmp_path / "report" / "summary.json").read_text())
    assert summary["verdict"] == "pass"
    assert summary["counts"]["users"] == 8
    for path in (tmp_path / "report").iterdir():
        text = path.read_bytes()
        assert not any(line.split()[2].encode() in text for line in lines), path.name
