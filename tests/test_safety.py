"""harness.safety: the target allowlist, decided from the URL alone, and redaction."""

from __future__ import annotations

import json
import logging
import secrets
import socket
import string
from collections.abc import Iterator

import jwt
import pytest
from hypothesis import given
from hypothesis import strategies as st

from harness.errors import ConfigError
from harness.safety import (
    FEW_LITERALS,
    MASK,
    RedactingFilter,
    Redactor,
    check_target_allowed,
    is_loopback,
    safe_url,
)

SECRET = "hs256-signing-secret-0123456789abcdef"


@pytest.fixture(autouse=True)
def no_dns(monkeypatch: pytest.MonkeyPatch) -> None:
    """The allowlist must be decided without a single lookup."""

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError(f"DNS lookup attempted: {args!r}")

    for name in ("getaddrinfo", "gethostbyname", "gethostbyname_ex", "gethostbyaddr"):
        monkeypatch.setattr(socket, name, refuse)


def refusal(url: str, allowed: list[str], source: str = "--target-url") -> str:
    with pytest.raises(ConfigError) as info:
        check_target_allowed(url, allowed, source=source)
    assert info.value.key == "target_url"
    return str(info.value)


# --- the allowlist --------------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:8080",
        "ws://127.5.6.7/aep",
        "http://[::1]:9000/",
        "wss://[::ffff:127.0.0.1]:443",
        "http://localhost:1",
        "HTTP://LOCALHOST./x",
        "https://localhost",
    ],
)
def test_loopback_is_always_allowed(url: str) -> None:
    check_target_allowed(url, [])


@pytest.mark.parametrize(
    "host",
    ["0.0.0.0", "10.0.0.1", "::", "localhost.evil.com", "127.0.0.1.nip.io", "my-localhost"],
)
def test_near_loopback_is_not_loopback(host: str) -> None:
    assert not is_loopback(host)


def test_a_staging_host_is_refused_with_the_fix() -> None:
    assert refusal("https://api.staging.example.com/v1", []) == (
        "invalid target_url 'https://api.staging.example.com/v1' from --target-url: "
        "api.staging.example.com is not loopback and matches no allowed_targets pattern; "
        "to load it deliberately, add a pattern such as '*.staging.example.com' to allowed_targets"
    )


def test_a_two_label_host_is_suggested_as_itself() -> None:
    assert refusal("http://example.com", [], source="isoharness.toml").endswith(
        "add a pattern such as 'example.com' to allowed_targets"
    )


@pytest.mark.parametrize("host", ["10.1.2.3", "[fd00::1]"])
def test_an_address_is_suggested_as_itself_not_as_a_wildcard(host: str) -> None:
    assert refusal(f"http://{host}:8080", []).endswith(
        f"add a pattern such as '{host.strip('[]')}' to allowed_targets"
    )


def test_the_default_source_reads_as_a_sentence() -> None:
    with pytest.raises(ConfigError, match="^invalid target_url 'http://example.com' from the "):
        check_target_allowed("http://example.com", [])


@pytest.mark.parametrize(
    ("pattern", "url"),
    [
        ("*.staging.example.com", "https://api.staging.example.com"),
        ("*.staging.example.com", "wss://a.b.staging.example.com/aep"),
        ("*.STAGING.example.com", "https://Api.Staging.Example.com"),
        ("api.staging.example.com", "https://api.staging.example.com:8443/x"),
        ("api.example.com:8443", "https://api.example.com:8443"),
        ("api.example.com:443", "https://api.example.com"),
        ("api.example.com:80", "ws://api.example.com/aep"),
        ("*:8443", "https://anything.example.com:8443"),
        ("10.1.2.*", "http://10.1.2.3:9000"),
        ("[2001:db8::1]:8443", "https://[2001:db8::1]:8443"),
        ("2001:db8::1", "https://[2001:db8::1]:8443"),
    ],
)
def test_a_matching_pattern_allows(pattern: str, url: str) -> None:
    check_target_allowed(url, ["unrelated.example.org", pattern])


@pytest.mark.parametrize(
    ("pattern", "url"),
    [
        ("*.staging.example.com", "https://staging.example.com"),
        ("*.staging.example.com", "https://evilstaging.example.com"),
        ("*.staging.example.com", "https://api.staging.example.com.evil.com"),
        ("*.staging.example.com", "https://evil.com/api.staging.example.com"),
        ("*.staging.example.com", "https://evil.com/?h=api.staging.example.com"),
        ("api.example.com:8443", "https://api.example.com:9443"),
        ("api.example.com:8443", "https://api.example.com"),
        ("api.example.com:443", "http://api.example.com"),
        ("https://api.example.com", "https://api.example.com"),  # patterns never see the URL
    ],
)
def test_a_non_matching_pattern_refuses(pattern: str, url: str) -> None:
    refusal(url, [pattern])


def test_credentials_in_the_url_are_refused_and_never_shown() -> None:
    message = refusal("https://bob:hunter22@api.staging.example.com", ["*"])
    assert message == (
        "invalid target_url 'https://***@api.staging.example.com' from --target-url: "
        "credentials do not belong in the URL; remove them, the credential options "
        "authenticate the users"
    )
    assert "hunter22" not in message
    assert "bob" not in message


def test_credentials_are_refused_even_on_loopback() -> None:
    assert "'http://***@127.0.0.1:8080'" in refusal("http://tok3n@127.0.0.1:8080", [])


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("http://example.com:99999", "not a URL with a host and port"),
        ("http:///path", "not a URL with a host"),
        ("example.com", "not a URL with a host"),
    ],
)
def test_urls_without_a_usable_host_are_refused(url: str, reason: str) -> None:
    assert refusal(url, ["*"]).endswith(f"from --target-url: {reason}")


def test_safe_url() -> None:
    assert (
        safe_url("https://u:p@h.example.com:8443/x?y=1") == "https://***@h.example.com:8443/x?y=1"
    )
    assert safe_url("https://h.example.com/x") == "https://h.example.com/x"


# --- redaction ------------------------------------------------------------------


def make_jwt(sub: str = "alice") -> str:
    return jwt.encode({"sub": sub, "tenant": "t1"}, SECRET, algorithm="HS256")


def test_a_known_secret_never_survives() -> None:
    redactor = Redactor([SECRET])
    text = f"secret={SECRET}; again:{SECRET}!"
    assert redactor.redact(text) == "secret=***; again:***!"


def test_secrets_added_later_are_masked_too() -> None:
    redactor = Redactor()
    assert redactor.redact("opaque-token-1") == "opaque-token-1"
    redactor.add("opaque-token-1", "opaque-token-2")
    assert redactor.redact("opaque-token-1 opaque-token-2") == "*** ***"


def test_short_secrets_are_ignored() -> None:
    redactor = Redactor(["", "a", "abc"])
    assert redactor.redact("a abc abcd") == "a abc abcd"


def test_the_longest_secret_wins() -> None:
    redactor = Redactor(["abcd", "abcdefgh", "abcdef"])
    assert redactor.redact("xabcdefghx abcdefx abcdx") == "x***x ***x ***x"


def test_secrets_with_regex_characters_are_literal() -> None:
    redactor = Redactor(["a.b*c+d", "(x|y)"])
    assert redactor.redact("a.b*c+d axbbc+d (x|y) x") == "*** axbbc+d *** x"


def test_encoded_forms_of_a_secret_are_masked() -> None:
    secret = 'p/w+d="q"'
    redactor = Redactor([secret])
    assert redactor.redact("url ?k=p%2Fw%2Bd%3D%22q%22 end") == "url ?k=*** end"
    assert redactor.redact(json.dumps({"k": secret})) == '{"k": "***"}'


def test_jwt_shaped_strings_are_masked_without_being_known() -> None:
    token = make_jwt()
    redactor = Redactor()
    assert redactor.redact(f"got {token} back") == "got *** back"
    unsigned = token.rpartition(".")[0] + "."
    assert redactor.redact(f"[{unsigned}]") == "[***]"
    assert redactor.redact(f"{token}.{make_jwt('bob')}") == MASK


def test_minted_jwts_do_not_grow_the_pattern() -> None:
    redactor = Redactor([SECRET])
    before = redactor._pattern.pattern
    redactor.add(*(make_jwt(f"u{n}") for n in range(50)))
    assert redactor._pattern.pattern == before


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("GET /aep?token=abc.def-ghi&x=1 HTTP/1.1", "GET /aep?token=***&x=1 HTTP/1.1"),
        ("wss://h/aep?x=1&token=zzzz#frag", "wss://h/aep?x=1&token=***#frag"),
        ("/cb?access_token=abcd1234", "/cb?access_token=***"),
        ("Authorization: Bearer opaque-abc.123", "Authorization: Bearer ***"),
        ('{"authorization": "bearer xyz=="}', '{"authorization": "bearer ***"}'),
        ("tokens=5 token_count=3 no token here", "tokens=5 token_count=3 no token here"),
    ],
)
def test_token_query_values_and_bearer_credentials_are_masked(text: str, expected: str) -> None:
    assert Redactor().redact(text) == expected


def test_redact_obj_walks_json_like_values_without_mutating_them() -> None:
    token = make_jwt()
    doc = {
        "secret": SECRET,
        "nested": [{"url": f"ws://h/?token={SECRET}"}, (token, 3, None, True)],
        f"key-{SECRET}": 1.5,
    }
    original = json.dumps(doc)
    redacted = Redactor([SECRET]).redact_obj(doc)
    assert redacted == {
        "secret": MASK,
        "nested": [{"url": "ws://h/?token=***"}, [MASK, 3, None, True]],
        "key-***": 1.5,
    }
    assert json.dumps(doc) == original
    assert SECRET not in json.dumps(redacted)


def test_thousands_of_opaque_tokens_are_all_masked() -> None:
    tokens = [secrets.token_urlsafe(16) for _ in range(3000)]
    redactor = Redactor(tokens)
    line = " ".join(tokens[::7])
    out = redactor.redact(line)
    assert not any(t in out for t in tokens)
    assert out == " ".join([MASK] * len(tokens[::7]))


SECRET_CHARS = string.ascii_letters[:3] + "./+=-_"


@given(
    secret_list=st.lists(st.text(SECRET_CHARS, min_size=4, max_size=12), min_size=1, max_size=5),
    pieces=st.lists(st.text(SECRET_CHARS + " ?&=", max_size=8), max_size=6),
)
def test_no_secret_survives_anywhere_in_any_text(secret_list: list[str], pieces: list[str]) -> None:
    redactor = Redactor(secret_list)
    text = "".join(p + s for p, s in zip(pieces, secret_list * 3, strict=False))
    text += "".join(secret_list)
    out = redactor.redact(text)
    for s in secret_list:
        assert s not in out


#: Text that may hold every marker in any case, non-ASCII letters, and the secrets.
GATE_PIECES = st.sampled_from(
    ["eyJ", "hbGc", ".", "token=", "?", "&", "bEaReR ", "BEARER", " ", "x", "é", "日本", "\\"]
)


@given(
    secret_list=st.lists(st.text(SECRET_CHARS + "é", min_size=4, max_size=10), max_size=3),
    pieces=st.lists(st.one_of(GATE_PIECES, st.text(max_size=6)), max_size=12),
    cut=st.integers(min_value=0, max_value=3),
    many=st.booleans(),
)
def test_the_redaction_gate_holds_for_every_text_redaction_would_change(
    secret_list: list[str], pieces: list[str], cut: int, many: bool
) -> None:
    """needs_redaction is a necessary condition, on text and on its UTF-8 bytes alike:
    whatever redact would change, the gate lets through (the event log relies on it).
    With a few secrets the gate looks for each; with many, for the trie of them."""
    padding = [f"unrelated-secret-{n}" for n in range(FEW_LITERALS + 1)] if many else []
    redactor = Redactor(secret_list + padding)
    text = "".join(pieces) + "".join(s[cut:] for s in secret_list)
    if redactor.redact(text) != text:
        assert redactor.needs_redaction(text)
        assert redactor.needs_redaction(text.encode())
    assert redactor.needs_redaction(text) == redactor.needs_redaction(text.encode())


def test_the_redaction_gate_passes_a_clean_frame_and_stops_each_marker() -> None:
    redactor = Redactor([SECRET])
    clean = '{"type":"agent_thinking","data":{"thought":"Jürgen 日本 about isoabc"}}'
    assert not redactor.needs_redaction(clean)
    assert not redactor.needs_redaction(clean.encode())
    for marker in ("eyJhbGc", "?token=abc", "Authorization: BeArEr abc", SECRET):
        dirty = clean.replace("isoabc", marker)
        assert redactor.needs_redaction(dirty), marker
        assert redactor.needs_redaction(dirty.encode()), marker


# --- logging --------------------------------------------------------------------


@pytest.fixture
def logged() -> Iterator[tuple[logging.Logger, list[str]]]:
    lines: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            lines.append(self.format(record))

    handler = Collect()
    handler.addFilter(RedactingFilter(Redactor([SECRET])))
    logger = logging.getLogger("isoharness.test_safety")
    logger.addHandler(handler)
    logger.propagate = False
    yield logger, lines
    logger.removeHandler(handler)
    logger.propagate = True


def test_the_logging_filter_redacts_messages_and_arguments(
    logged: tuple[logging.Logger, list[str]],
) -> None:
    logger, lines = logged
    token = make_jwt()
    logger.warning("secret %s and token %s", SECRET, token)
    logger.warning(f"inline {SECRET}")
    assert lines == ["secret *** and token ***", "inline ***"]


def test_the_logging_filter_redacts_tracebacks(logged: tuple[logging.Logger, list[str]]) -> None:
    logger, lines = logged
    try:
        raise ValueError(f"bad secret {SECRET}")
    except ValueError:
        logger.exception("failed")
    assert len(lines) == 1
    assert SECRET not in lines[0]
    assert "ValueError: bad secret ***" in lines[0]


def test_the_logging_filter_survives_a_bad_format_string(
    logged: tuple[logging.Logger, list[str]],
) -> None:
    logger, lines = logged
    logger.warning("two %s %s", SECRET)
    assert lines == ["two %s %s ('***',)"]
