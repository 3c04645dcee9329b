"""Credential providers: minted JWTs, a static tokens file, a custom login hook."""

from __future__ import annotations

import asyncio
import dataclasses
import importlib
import sys
import textwrap
import time

import jwt
import pytest
from e2e_helpers import seconds

from harness.credentials import (
    LOGIN_HOOK_TIMEOUT_S,
    HookCredentials,
    JwtCredentials,
    StaticCredentials,
    check_credentials,
)
from harness.errors import ConfigError, UsageError
from harness.settings import resolve_settings
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


def tokens_refusal(path, text: str, *, claims: bool = False) -> str:
    """The one line a tokens file holding ``text`` is refused with (set by --tokens-file);
    ``claims``: refused by the AEP/1 claims check, after it was read."""
    path.write_text(text)

    def read() -> None:
        static = StaticCredentials(path, source="--tokens-file")
        if claims:
            static.check_aep_claims()

    with pytest.raises(ConfigError) as caught:
        read()
    return str(caught.value)


def test_a_malformed_tokens_line_names_the_line_and_never_shows_it(tmp_path):
    path = tmp_path / "tokens.txt"
    refusal = tokens_refusal(path, "acme alice tok-a\nacme bob tok-b trailing\n")
    assert refusal == (
        f"invalid tokens_file '{path}' from --tokens-file: line 2 has 4 fields; "
        "each line must be '<tenant> <user> <token>'"
    )
    assert "tok-" not in refusal


def test_a_login_hook_may_be_sync_or_async(tmp_path, monkeypatch):
    (tmp_path / "my_login.py").write_text(
        "async def login(user):\n    return f'tok-{user.tenant}-{user.user}'\n"
        "def plain(user):\n    return 'plain-' + user.user\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    assert asyncio.run(HookCredentials("my_login:login").token_for(ALICE)) == "tok-acme-alice"
    assert asyncio.run(HookCredentials("my_login:plain").token_for(ALICE)) == "plain-alice"
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


# -- a tokens file is checked whole before the run (exit 2, never showing a token) ------------


def test_a_tokens_file_giving_one_user_two_tokens_is_refused_naming_both_lines(tmp_path):
    path = tmp_path / "tokens.txt"
    text = "acme alice tok-a1\nacme bob tok-b\n# rotated\nacme alice tok-a2\n"
    refusal = tokens_refusal(path, text)
    assert refusal == (
        f"invalid tokens_file '{path}' from --tokens-file: lines 1 and 4 both give a token "
        "for acme/alice; keep one line per user"
    )
    assert "tok-" not in refusal


def test_a_token_no_http_header_can_carry_is_refused_without_showing_it(tmp_path):
    path = tmp_path / "tokens.txt"
    refusal = tokens_refusal(path, "acme alice tok-a\nacme bob tok-b\x7fX-Evil\n")
    assert refusal == (
        f"invalid tokens_file '{path}' from --tokens-file: the token on line 2 has a "
        "character an HTTP header cannot carry (U+007F at position 5); write the token alone"
    )
    assert "tok-" not in refusal


def _jwt(**claims):
    return jwt.encode(claims, SECRET, algorithm="HS256")


def test_a_jwt_whose_claims_name_another_user_is_refused_naming_both(tmp_path):
    path = tmp_path / "tokens.txt"
    bob = _jwt(sub="bob", tenant="acme")
    text = f"acme alice {_jwt(sub='alice', tenant='acme')}\nacme carol {bob}\n"
    refusal = tokens_refusal(path, text, claims=True)
    assert refusal == (
        f"invalid tokens_file '{path}' from --tokens-file: the token on line 2 is acme/bob's "
        "(its sub and tenant claims), not acme/carol's; put each token on its own user's line"
    )
    assert bob not in refusal


def test_a_jwt_of_the_same_user_in_another_tenant_is_refused(tmp_path):
    path = tmp_path / "tokens.txt"
    path.write_text(f"acme alice {_jwt(sub='alice', tenant='other')}\nacme bob tok-b\n")
    with pytest.raises(ConfigError, match="line 1 is other/alice's .* not acme/alice's"):
        StaticCredentials(path).check_aep_claims()


def test_opaque_tokens_and_jwts_without_user_claims_are_the_services_to_judge(tmp_path):
    path = tmp_path / "tokens.txt"
    path.write_text(
        f"acme alice {_jwt(sub='alice', tenant='acme')}\n"
        f"acme bob {_jwt(scope='chat')}\n"
        "acme carol tok-c\n"
        "acme dave not.a.jwt\n"
    )
    StaticCredentials(path).check_aep_claims()


def test_claims_are_checked_for_the_aep_adapter_only(tmp_path):
    lines = [f"acme u{i} {_jwt(sub=f'u{7 - i}', tenant='acme')}" for i in range(8)]
    (tmp_path / "tokens.txt").write_text("\n".join(lines) + "\n")
    settings = _settings(
        tmp_path, credentials="static", tokens_file="tokens.txt", target_url="http://127.0.0.1:9"
    )
    with pytest.raises(ConfigError, match="the token on line 1 is acme/u7's"):
        check_credentials(settings)
    # Another protocol's tokens may name users in their own way.
    check_credentials(dataclasses.replace(settings, adapter="json"))


def _settings(tmp_path, **cli):
    return resolve_settings(cli, env={}, cwd=tmp_path)


def test_a_tokens_file_with_fewer_users_than_the_users_setting_is_refused_up_front(tmp_path):
    lines = [f"acme u{i} tok-{i}" for i in range(6)]
    (tmp_path / "tokens.txt").write_text("\n".join(lines) + "\n")
    settings = _settings(
        tmp_path, credentials="static", tokens_file="tokens.txt", target_url="http://127.0.0.1:9"
    )
    with pytest.raises(ConfigError) as caught:
        check_credentials(settings)
    assert str(caught.value) == (
        f"invalid tokens_file '{tmp_path / 'tokens.txt'}' from --tokens-file: it has tokens "
        "for 6 users and the run needs 8 (users 8 from default); add tokens or lower --users"
    )
    assert "tok-" not in str(caught.value)
    check_credentials(dataclasses.replace(settings, users=6))  # enough for six


# -- a login hook must give a token an HTTP header can carry, in bounded time (exit 2) ---------


@pytest.fixture
def hooks(tmp_path, monkeypatch):
    """A module ``cred_hooks`` of login hooks, importable for the test's duration."""
    (tmp_path / "cred_hooks.py").write_text(
        textwrap.dedent(
            """
            import asyncio, subprocess, sys, threading

            RELEASE = threading.Event()
            JWT = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJhbGljZSJ9.c2lnbmF0dXJl"

            def number(user):
                return 42

            def empty(user):
                return ""

            def nothing(user):
                return None

            async def header_injection(user):
                return JWT + "\\r\\nX-Evil: 1"

            def raises(user):
                raise RuntimeError("login refused for password hunter2")

            def subprocess_fails(user):
                subprocess.run(
                    [sys.executable, "-c", "raise SystemExit(7)", "--password", "hunter2"],
                    check=True,
                )

            def blocks(user):
                RELEASE.wait()
                return JWT

            async def awaits_forever(user):
                await asyncio.Event().wait()

            def always_alice(user):
                return JWT  # sub "alice", no tenant claim

            calls = []

            def counted(user):
                calls.append(user)
                return 42
            """
        )
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    yield importlib.import_module("cred_hooks")
    sys.modules["cred_hooks"].RELEASE.set()  # let a blocked hook's thread end
    sys.modules.pop("cred_hooks", None)


def _hook_refusal(spec, **options):
    with pytest.raises(ConfigError) as caught:
        asyncio.run(HookCredentials(spec, source="--login-hook", **options).token_for(ALICE))
    return str(caught.value)


NOT_A_TOKEN = (
    "not a token; a login hook must return the user's token as a non-empty str "
    "(or an awaitable of one)"
)


@pytest.mark.parametrize(
    ("hook", "what"),
    [("number", "int"), ("empty", "an empty str"), ("nothing", "NoneType")],
)
def test_a_login_hook_returning_no_token_is_a_configuration_error(hooks, hook, what):
    assert _hook_refusal(f"cred_hooks:{hook}") == (
        f"invalid login_hook 'cred_hooks:{hook}' from --login-hook: it returned {what} "
        f"for acme/alice, {NOT_A_TOKEN}"
    )


def test_a_hook_logging_every_user_in_as_one_account_is_refused_for_aep(hooks):
    bob = UserKey(TenantId("acme"), UserId("bob"))
    with pytest.raises(ConfigError) as caught:
        asyncio.run(HookCredentials("cred_hooks:always_alice", aep_claims=True).token_for(bob))
    assert str(caught.value).endswith(
        "it returned acme/alice's token (its sub and tenant claims) for acme/bob; a login "
        "hook must log in as the user it is given"
    )
    assert hooks.JWT not in str(caught.value)
    credentials = HookCredentials("cred_hooks:always_alice", aep_claims=True)
    assert asyncio.run(credentials.token_for(ALICE)) == hooks.JWT  # alice's own
    # Another protocol's tokens may name users in their own way.
    assert asyncio.run(HookCredentials("cred_hooks:always_alice").token_for(bob)) == hooks.JWT


def test_a_token_with_cr_lf_is_refused_before_any_header_and_never_shown(hooks):
    message = _hook_refusal("cred_hooks:header_injection")
    assert message == (
        "invalid login_hook 'cred_hooks:header_injection' from --login-hook: it returned a "
        "token for acme/alice with a character an HTTP header cannot carry (CR at position "
        f"{len(hooks.JWT)}); a login hook must return the token alone"
    )
    assert "eyJ" not in message


@pytest.mark.parametrize(
    ("hook", "raised"),
    [("raises", "RuntimeError"), ("subprocess_fails", "CalledProcessError (exit status 7)")],
)
def test_a_login_hook_that_raises_is_a_configuration_error_not_showing_its_message(
    hooks, hook, raised
):
    message = _hook_refusal(f"cred_hooks:{hook}")
    assert message == (
        f"invalid login_hook 'cred_hooks:{hook}' from --login-hook: it raised {raised} for "
        "acme/alice; call it by hand to see why (its message is not shown: it may hold a secret)"
    )
    assert "hunter2" not in message


@pytest.mark.parametrize("hook", ["blocks", "awaits_forever"])
def test_a_login_hook_that_hangs_is_given_up_on_after_its_timeout(hooks, hook):
    started = time.monotonic()
    message = _hook_refusal(f"cred_hooks:{hook}", timeout_s=0.3)
    assert time.monotonic() - started < seconds(2)
    assert message == (
        f"invalid login_hook 'cred_hooks:{hook}' from --login-hook: it gave no token for "
        "acme/alice within 0.3 s; a login hook must return the user's token in that time"
    )


def test_a_login_hook_waits_30_seconds_by_default():
    assert LOGIN_HOOK_TIMEOUT_S == 30.0


def test_after_a_login_hook_fails_every_later_call_fails_at_once_the_same_way(hooks):
    credentials = HookCredentials("cred_hooks:counted", source="--login-hook")
    bob = UserKey(TenantId("acme"), UserId("bob"))
    messages = []
    for user in (ALICE, bob):
        with pytest.raises(ConfigError) as caught:
            asyncio.run(credentials.token_for(user))
        messages.append(str(caught.value))
    assert hooks.calls == [ALICE]
    assert messages == [messages[0]] * 2
    assert "it returned int for acme/alice" in messages[0]
