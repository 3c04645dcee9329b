"""Settings: one option table for the CLI, the pytest plugin and the config file.

:data:`OPTIONS` is the single source of truth: the CLI and the pytest plugin
generate their flags, ini twins and help from it, and :func:`resolve_settings`
reads every source through it.

Precedence, per key (STYLE.md §8): command-line flag > environment variable >
config file > default. A flag given as ``None`` and an empty environment
variable count as unset.

The config file is, in order: the ``config_path`` the caller names; else
``isoharness.toml`` in the working directory (top-level keys, or a
``[tool.isoharness]`` table, not both); else the ``[tool.isoharness]`` table of
``pyproject.toml`` there; else none. Relative paths are resolved against the
config file's folder when they come from the file, else against the working
directory.

The ``adapter`` setting names the target's protocol. The adapter's own
options are a sub-table of the config file, ``[adapter]`` in ``isoharness.toml``
or ``[tool.isoharness.adapter]``; a ``name`` key there sets ``adapter`` (TOML
allows ``adapter = "json"`` or an ``[adapter]`` table, not both), every other
key is handed to the adapter's factory as it is.

Secrets are never read from a config file: the JWT secret comes from
``--jwt-secret``, ``$ISOHARNESS_JWT_SECRET`` or the file named by
``jwt_secret_file``. When both a secret and a secret file are given, the one
from the higher-precedence source wins; both from the same source is an error.

Every bad value is one :class:`~harness.errors.ConfigError` naming the key,
the value (``'***'`` for a secret), where it came from (``--users``,
``$ISOHARNESS_USERS``, ``isoharness.toml``, ``pyproject.toml [tool.isoharness]``)
and what is allowed::

    invalid users -3 from isoharness.toml: an integer from 2 to 100000
    invalid users 200000 from --users: an integer from 2 to 100000
    invalid key 'user' from isoharness.toml: unknown key; did you mean 'users'?

Every number has a range, and a value refused for it (below the minimum, above
the maximum, or not a number) is told the whole range; the one number without
a maximum, ``memory_floor_bytes_per_session``, is told its minimum
(``a number >= 0``). The maxima are what a real run could want, so that a typo
fails here, as one line, rather than deep in the run: seeds fit the report's
64-bit JSON integers, sizes stay within what one run can hold (README: 10,000
users per process are measured; distributed runs split the users), a soak
lasts at most 30 days and any other span of time at most a day
(pytest-timeout's guard is derived from them).
"""

from __future__ import annotations

import difflib
import math
import re
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Literal
from urllib.parse import urlsplit

from harness.errors import ConfigError
from harness.safety import MASK, safe_url
from harness.types import DeliveryPolicy

CredentialsKind = Literal["jwt", "static", "hook"]
MemorySource = Literal["auto", "prometheus", "psutil", "json", "none"]
TransportKind = Literal["websockets", "fast"]

#: Where a value came from when no source set it.
DEFAULT_SOURCE = "default"

# --- parsers: each takes a raw value (a flag or env string, or any TOML value)
# --- and returns the typed value, or raises ValueError(<what is allowed>).

#: The longest span of time other than ``duration``: a lifecycle timeout, a grace, an interval.
DAY_S = 86_400.0
#: The longest ``duration``: a month-long soak.
MAX_DURATION_S = 30 * DAY_S
DURATION_ALLOWED = (
    "a positive number of seconds, or a duration such as 30s, 30m, 8h, 1h30m, "
    "at most 720h (30 days)"
)
_NUMBER = r"(\d+(?:\.\d*)?|\.\d+)"
_DURATION = re.compile(rf"(?:{_NUMBER}h)?(?:{_NUMBER}m)?(?:{_NUMBER}s)?")


def parse_duration(text: object) -> float:
    """Seconds from ``90``, ``2.5``, ``"90"``, ``"30s"``, ``"30m"``, ``"8h"`` or ``"1h30m"``.

    Units are ``h``, ``m`` and ``s``, largest first, each at most once,
    case-insensitive, no spaces inside. A bare number is seconds.

    Raises:
        ValueError: ``DURATION_ALLOWED`` for anything else, for a value that
            is not finite and > 0, and for more than ``MAX_DURATION_S`` (30 days).
    """
    if isinstance(text, bool):
        raise ValueError(DURATION_ALLOWED)
    if isinstance(text, int | float):
        if isinstance(text, float) and not math.isfinite(text):
            raise ValueError(DURATION_ALLOWED)
        seconds = _as_float(text)
    elif isinstance(text, str):
        value = text.strip().lower()
        match = _DURATION.fullmatch(value)
        if re.fullmatch(_NUMBER, value):
            seconds = float(value)
        elif value and match is not None:
            h, m, s = (float(g) if g else 0.0 for g in match.groups())
            seconds = h * 3600 + m * 60 + s
        else:
            raise ValueError(DURATION_ALLOWED)
    else:
        raise ValueError(DURATION_ALLOWED)
    if not seconds > 0:
        raise ValueError(DURATION_ALLOWED)
    if seconds > MAX_DURATION_S:  # also +inf, from hundreds of digits
        raise ValueError(DURATION_ALLOWED)
    return seconds


def _as_float(number: int | float) -> float:
    """``float(number)``, with an int too large for a float as infinity, not OverflowError."""
    try:
        return float(number)
    except OverflowError:
        return math.inf if number > 0 else -math.inf


def _shown_bound(bound: float) -> str:
    """``86400``, not ``86400.0``; ``1048576``, not ``1.04858e+06``; ``0.05``."""
    return str(int(bound)) if float(bound).is_integer() else f"{bound:g}"


def _int(minimum: int, maximum: int) -> Callable[[object], object]:
    allowed = f"an integer from {minimum} to {maximum}"

    def parse(value: object) -> object:
        if isinstance(value, bool):
            raise ValueError(allowed)
        if isinstance(value, int):
            number = value
        elif isinstance(value, str):
            try:
                number = int(value.strip())  # refuses more than 4,300 digits, too
            except ValueError:
                raise ValueError(allowed) from None
        else:
            raise ValueError(allowed)
        if not minimum <= number <= maximum:
            raise ValueError(allowed)
        return number

    return parse


def _float(minimum: float, maximum: float, *, strict: bool = False) -> Callable[[object], object]:
    # ``strict``: the minimum itself is refused. Without a maximum (inf), only the minimum is told.
    low, high = _shown_bound(minimum), _shown_bound(maximum)
    if math.isinf(maximum):
        allowed = f"a number {'>' if strict else '>='} {low}"
    elif strict:
        allowed = f"a number > {low} and <= {high}"
    else:
        allowed = f"a number from {low} to {high}"

    def parse(value: object) -> object:
        if isinstance(value, bool):
            raise ValueError(allowed)
        if isinstance(value, int | float):
            number = _as_float(value)
        elif isinstance(value, str):
            try:
                number = float(value.strip())
            except ValueError:
                raise ValueError(allowed) from None
        else:
            raise ValueError(allowed)
        # NaN fails every comparison; +inf is above any finite maximum.
        if not minimum <= number <= maximum or (strict and number == minimum):
            raise ValueError(allowed)
        return number

    return parse


def _choice(*options: str) -> Callable[[object], object]:
    allowed = "one of " + ", ".join(options)

    def parse(value: object) -> object:
        if not isinstance(value, str) or value.strip().lower() not in options:
            raise ValueError(allowed)
        return value.strip().lower()

    return parse


def _policy(value: object) -> object:
    try:
        return DeliveryPolicy(str(value).strip().lower())
    except ValueError:
        raise ValueError("one of " + ", ".join(p.value for p in DeliveryPolicy)) from None


_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")


def _bool(value: object) -> object:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower() if isinstance(value, str | int) else ""
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise ValueError("true or false (also 1/0, yes/no, on/off)")


def _text(value: object) -> object:
    if not isinstance(value, str) or not value.strip():
        raise ValueError("a non-empty string")
    return value.strip()


def _url_path(value: object) -> object:
    if not isinstance(value, str) or not value.strip().startswith("/"):
        raise ValueError("a URL path starting with '/', e.g. /metrics")
    return value.strip()


_URL_ALLOWED = "an http://, https://, ws:// or wss:// URL with a host, e.g. https://api.example.com"


def _url(value: object) -> object:
    if not isinstance(value, str):
        raise ValueError(_URL_ALLOWED)
    text = value.strip()
    try:
        parts = urlsplit(text)
        _ = parts.port  # raises ValueError on a bad port
    except ValueError:
        raise ValueError(_URL_ALLOWED) from None
    if parts.scheme.lower() not in ("http", "https", "ws", "wss") or not parts.hostname:
        raise ValueError(_URL_ALLOWED)
    if parts.username is not None or parts.password is not None:
        # Userinfo would be written into every report; credentials have their own options.
        raise ValueError(_URL_ALLOWED + ", without user:password (use the credentials options)")
    if parts.query or parts.fragment:
        raise ValueError(_URL_ALLOWED + ", without a query string or fragment")
    return text.rstrip("/")


def _path(value: object) -> object:
    if not isinstance(value, str | Path) or not str(value).strip():
        raise ValueError("a file or folder path")
    return Path(str(value).strip()).expanduser()


def _existing_file(value: object) -> object:
    path = _path(value)
    assert isinstance(path, Path)
    if not path.is_file():
        raise ValueError(f"an existing file (no file at {path})")
    return path


def _names(value: object) -> object:
    allowed = "a list of strings, or one comma-separated string"
    if isinstance(value, str):
        items = value.split(",")
    elif isinstance(value, list | tuple) and all(isinstance(item, str) for item in value):
        items = list(value)
    else:
        raise ValueError(allowed)
    return tuple(item.strip() for item in items if item.strip())


_DOTTED = r"[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*"


def _hook(value: object) -> object:
    if not isinstance(value, str) or not re.fullmatch(rf"{_DOTTED}:{_DOTTED}", value.strip()):
        raise ValueError("'package.module:function'")
    return value.strip()


#: Adapters that ship with isoharness (``harness.adapters.registry`` maps them to modules).
BUILTIN_ADAPTERS = ("aep", "json", "nats")


def _adapter(value: object) -> object:
    allowed = "one of " + ", ".join(BUILTIN_ADAPTERS) + ", or a hook 'package.module:factory'"
    if isinstance(value, str) and value.strip().lower() in BUILTIN_ADAPTERS:
        return value.strip().lower()
    try:
        return _hook(value)
    except ValueError:
        raise ValueError(allowed) from None


#: Parsers whose raw value is a path, resolved against its source's folder first.
_PATH_PARSERS: frozenset[Callable[[object], object]] = frozenset({_path, _existing_file})


# --- the option table ---------------------------------------------------------


@dataclass(frozen=True, slots=True)
class OptionSpec:
    """One setting, as every front end shows it.

    Attributes:
        name: the settings field and config-file key, e.g. ``connections_per_user``.
        flag: the command-line flag, e.g. ``--connections-per-user``.
        env: the environment variable, e.g. ``ISOHARNESS_CONNECTIONS_PER_USER``.
        help: one line shared by the CLI, the pytest option and its ini twin.
        parse: raw value → typed value; raises ``ValueError(<what is allowed>)``.
        default: the value when no source sets one (already typed).
        secret: never read from a config file and never printed.
    """

    name: str
    flag: str
    env: str | None
    help: str
    parse: Callable[[object], object]
    default: object
    secret: bool = False


def _opt(
    name: str,
    help: str,
    parse: Callable[[object], object],
    default: object,
    *,
    secret: bool = False,
) -> OptionSpec:
    flag = "--" + name.replace("_", "-")
    return OptionSpec(name, flag, "ISOHARNESS_" + name.upper(), help, parse, default, secret)


#: Users (and tenants) per scenario: ten processes' worth (README: 10,000 users per
#: process are measured), for a run split over workers.
MAX_USERS = 100_000
#: Seeds are written to summary.json, whose integers are 64-bit.
MAX_SEED = 2**63 - 1

OPTIONS: tuple[OptionSpec, ...] = (
    _opt(
        "target_url",
        "base URL of the target (default: start the embedded reference service)",
        _url,
        None,
    ),
    _opt(
        "jwt_secret",
        "HS256 secret to mint tokens with (prefer $ISOHARNESS_JWT_SECRET or jwt_secret_file)",
        _text,
        None,
        secret=True,
    ),
    _opt(
        "jwt_secret_file",
        "file holding the HS256 secret (surrounding whitespace ignored)",
        _path,
        None,
    ),
    _opt(
        "credentials",
        "credential provider: jwt, static (needs tokens_file) or hook (needs login_hook)",
        _choice("jwt", "static", "hook"),
        "jwt",
    ),
    _opt(
        "tokens_file",
        "file of '<tenant> <user> <token>' lines, for credentials = static",
        _existing_file,
        None,
    ),
    _opt(
        "login_hook",
        "'package.module:function' returning a user's token, for credentials = hook",
        _hook,
        None,
    ),
    _opt(
        "delivery_policy",
        "who may receive another user's events: owner_only or same_tenant",
        _policy,
        DeliveryPolicy.OWNER_ONLY,
    ),
    _opt("users", f"simulated users per scenario (2 to {MAX_USERS})", _int(2, MAX_USERS), 8),
    _opt("tenants", "tenants the users are spread over (at most users)", _int(1, MAX_USERS), 2),
    # A user's connections are its devices and tabs; users x connections is what the process holds.
    _opt("connections_per_user", "connections each user keeps open", _int(1, 100), 2),
    # test_volume sends ten rounds' worth: 1,000 is 10,000 messages per user and scenario.
    _opt("messages_per_user", "messages each user sends per round", _int(1, 1000), 3),
    _opt(
        "duration",
        "length of sustained scenarios: seconds, or 30s, 30m, 8h, 1h30m",
        parse_duration,
        5.0,
    ),
    # Sessions start at exponential intervals of mean 1/rate: below 0.1/s the first wait
    # alone outlasts a short run; 10,000/s is twice the handshakes one process makes (README).
    _opt("rate", "new sessions per second in churn and soak", _float(0.1, 10_000), 20.0),
    _opt(
        "seed",
        "seed for every random choice (default: chosen and reported)",
        _int(0, MAX_SEED),
        None,
    ),
    _opt("report_dir", "report folder (default: reports/<run id>)", _path, None),
    _opt(
        "scenarios",
        "folder of scenario files (default: the ones shipped with isoharness)",
        _path,
        None,
    ),
    _opt(
        "lifecycle_timeout",
        "seconds a run may take before a missing event counts as lost",
        _float(0, DAY_S, strict=True),
        10.0,
    ),
    _opt(
        "allowed_targets",
        "host or host:port patterns a non-loopback target must match (comma-separated)",
        _names,
        (),
    ),
    _opt(
        "ca_bundle", "CA bundle to verify the target's TLS certificate with", _existing_file, None
    ),
    _opt("insecure", "do not verify the target's TLS certificate", _bool, False),
    _opt(
        "transport",
        "WebSocket client: fast (batched sans-I/O client) or websockets (asyncio client)",
        _choice("fast", "websockets"),
        "fast",
    ),
    _opt(
        "adapter",
        "the target's protocol: aep, json, nats or 'package.module:factory' "
        "(its options: the [adapter] table of the config file)",
        _adapter,
        "aep",
    ),
    _opt(
        "memory_source",
        "where target memory is read: auto, prometheus, psutil, json or none",
        _choice("auto", "prometheus", "psutil", "json", "none"),
        "auto",
    ),
    _opt("metrics_path", "path of the Prometheus metrics endpoint", _url_path, "/metrics"),
    _opt(
        "memory_metric",
        "Prometheus metric holding the target's memory in bytes",
        _text,
        "process_resident_memory_bytes",
    ),
    _opt(
        "sessions_metric",
        "Prometheus counter of sessions the target served",
        _text,
        "aep_sessions_total",
    ),
    _opt(
        "gauges",
        "gauges that must return to idle after the run (comma-separated)",
        _names,
        ("aep_connections_active", "aep_runs_active"),
    ),
    _opt(
        "json_probe_url",
        "URL of a JSON endpoint reporting memory, for memory_source = json",
        _url,
        None,
    ),
    _opt(
        "json_probe_path",
        "dotted path to the memory number in that JSON, e.g. process.rss",
        _text,
        None,
    ),
    # Each sample is an HTTP request or a process read: at 20 per second the sampler is busy.
    _opt(
        "sample_interval",
        "seconds between memory and gauge samples",
        _float(0.05, DAY_S),
        1.0,
    ),
    _opt(
        "memory_floor_bytes_per_session",
        "growth per session at or below this many bytes is never a violation",
        _float(0, math.inf),  # any finite floor is safe: a huge one only never fires
        2048.0,
    ),
    _opt(
        "gauge_grace",
        "seconds gauges get to return to idle after the last user leaves",
        _float(0, DAY_S),
        5.0,
    ),
    # A line more often than every second is more than anyone reads.
    _opt(
        "progress_interval",
        "seconds between progress lines in long runs",
        _float(1, DAY_S),
        10.0,
    ),
    _opt(
        "events_max_mb",
        "the most events.jsonl may hold, in MiB (0: no cap); later records are checked, unwritten",
        _float(0, 2**20),  # 1 TiB
        2048.0,
    ),
)
#: :data:`OPTIONS` by name.
BY_NAME: Mapping[str, OptionSpec] = MappingProxyType({spec.name: spec for spec in OPTIONS})


@dataclass(frozen=True, slots=True)
class Settings:
    """Resolved settings; :data:`OPTIONS` documents each field.

    ``sources`` maps each key to where its value came from (a flag,
    ``$ENV``, a config file label, or ``"default"``), so later checks can name
    the source too: ``check_target_allowed(url, allowed, source=s.source_of("target_url"))``.
    """

    target_url: str | None = None
    jwt_secret: str | None = field(default=None, repr=False)
    jwt_secret_file: Path | None = None
    credentials: CredentialsKind = "jwt"
    tokens_file: Path | None = None
    login_hook: str | None = None
    delivery_policy: DeliveryPolicy = DeliveryPolicy.OWNER_ONLY
    users: int = 8
    tenants: int = 2
    connections_per_user: int = 2
    messages_per_user: int = 3
    duration: float = 5.0
    rate: float = 20.0
    seed: int | None = None
    report_dir: Path | None = None
    scenarios: Path | None = None
    lifecycle_timeout: float = 10.0
    allowed_targets: tuple[str, ...] = ()
    ca_bundle: Path | None = None
    insecure: bool = False
    transport: TransportKind = "fast"
    adapter: str = "aep"
    memory_source: MemorySource = "auto"
    metrics_path: str = "/metrics"
    memory_metric: str = "process_resident_memory_bytes"
    sessions_metric: str = "aep_sessions_total"
    gauges: tuple[str, ...] = ("aep_connections_active", "aep_runs_active")
    json_probe_url: str | None = None
    json_probe_path: str | None = None
    sample_interval: float = 1.0
    memory_floor_bytes_per_session: float = 2048.0
    gauge_grace: float = 5.0
    progress_interval: float = 10.0
    events_max_mb: float = 2048.0
    #: The config file's adapter table, without its ``name`` (not an option: no flag).
    adapter_options: Mapping[str, Any] = field(
        default_factory=lambda: MappingProxyType({}), repr=False
    )
    #: Where ``adapter_options`` came from, for the adapter's error messages.
    adapter_options_source: str = field(default="the adapter options", compare=False, repr=False)
    sources: Mapping[str, str] = field(
        default_factory=lambda: MappingProxyType({}), compare=False, repr=False
    )

    def source_of(self, key: str) -> str:
        """Where ``key`` came from: ``--users``, ``$ISOHARNESS_USERS``, a file, or ``default``."""
        return self.sources.get(key, DEFAULT_SOURCE)

    def public_dict(self) -> dict[str, Any]:
        """Every non-secret setting, JSON-safe (paths and enums as ``str``, tuples as lists).

        Secrets are left out entirely, not masked: the report never even says
        whether one was set.
        """
        out: dict[str, Any] = {}
        for spec in OPTIONS:
            if spec.secret:
                continue
            value = getattr(self, spec.name)
            if isinstance(value, Path | DeliveryPolicy):
                value = str(value)
            elif isinstance(value, tuple):
                value = list(value)
            out[spec.name] = value
        return out


# --- config files -------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _ConfigFile:
    values: dict[str, object]
    label: str  # the source named in errors
    folder: Path  # relative paths in the file are resolved against this
    adapter_table: dict[str, object] | None = None  # the [adapter] sub-table, minus ``name``
    adapter_label: str = ""  # its source, e.g. "isoharness.toml [adapter]"


_ISOHARNESS_TOML = "isoharness.toml"
_PYPROJECT = "pyproject.toml"
_TABLE = "[tool.isoharness]"
_ADAPTER_TABLE = "adapter"
_ADAPTER_NAME = "name"


def _load_config(cwd: Path, config_path: Path | None) -> _ConfigFile | None:
    if config_path is not None:
        path = config_path if config_path.is_absolute() else cwd / config_path
        if not path.is_file():
            raise ConfigError(
                "config", str(config_path), "--config", f"no such file ({path}); name a TOML file"
            )
        return _from_isoharness_toml(path, str(config_path))
    local = cwd / _ISOHARNESS_TOML
    if local.is_file():
        return _from_isoharness_toml(local, _ISOHARNESS_TOML)
    project = cwd / _PYPROJECT
    if project.is_file():
        data = _read_toml(project, _PYPROJECT)
        table = _tool_table(data, f"{_PYPROJECT} {_TABLE}")
        if table is not None:
            return _ConfigFile(table, f"{_PYPROJECT} {_TABLE}", project.parent)
    return None


def _from_isoharness_toml(path: Path, label: str) -> _ConfigFile:
    data = _read_toml(path, label)
    table = _tool_table(data, f"{label} {_TABLE}")
    top = {key: value for key, value in data.items() if key != "tool"}
    if table is None:
        return _ConfigFile(top, label, path.parent)
    if top:
        first = next(iter(top))
        raise ConfigError("key", first, label, f"use top-level keys or a {_TABLE} table, not both")
    return _ConfigFile(table, f"{label} {_TABLE}", path.parent)


def _tool_table(data: dict[str, Any], label: str) -> dict[str, object] | None:
    tool = data.get("tool")
    if not isinstance(tool, dict) or "isoharness" not in tool:
        return None
    table = tool["isoharness"]
    if not isinstance(table, dict):
        raise ConfigError("key", "tool.isoharness", label, "must be a table of settings")
    return dict(table)


_TOML_WHERE = re.compile(r"\s*\((at line \d+, column \d+|at end of document)\)$")


def _read_toml(path: Path, label: str) -> dict[str, Any]:
    """The parsed file; a syntax error becomes one line naming the file and the line."""
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ConfigError("config file", label, str(path), "not UTF-8 text") from None
    except OSError as exc:
        raise ConfigError("config file", label, str(path), f"unreadable ({exc.strerror})") from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        # tomllib says "Invalid value (at line 3, column 9)"; the line becomes the source.
        message = str(exc).splitlines()[0]
        where = _TOML_WHERE.search(message)
        source = where.group(1).removeprefix("at ") if where else "somewhere"
        reason = message[: where.start()] if where else message
        raise ConfigError("config file", label, source, f"not valid TOML: {reason}") from None


def _unknown_key(key: str, label: str) -> ConfigError:
    # Secret keys are not offered: they are refused in config files anyway.
    known = sorted(spec.name for spec in OPTIONS if not spec.secret)
    close = difflib.get_close_matches(key, known, n=1)
    hint = f"did you mean {close[0]!r}?" if close else "known keys: " + ", ".join(known)
    return ConfigError("key", key, label, f"unknown key; {hint}")


def _split_adapter_table(config: _ConfigFile) -> _ConfigFile:
    """Take the adapter's own table out of the settings.

    ``adapter = "json"`` is the setting; ``[adapter]`` (``[tool.isoharness.adapter]``)
    is a table of the adapter's options, whose ``name`` key, if any, is the setting.
    """
    table = config.values.get(_ADAPTER_TABLE)
    if not isinstance(table, dict):
        return config
    if config.label.endswith(_TABLE):
        label = config.label.removesuffix(_TABLE) + "[tool.isoharness.adapter]"
    else:
        label = f"{config.label} [adapter]"
    values = {key: value for key, value in config.values.items() if key != _ADAPTER_TABLE}
    options = dict(table)
    if _ADAPTER_NAME in options:
        values[_ADAPTER_TABLE] = options.pop(_ADAPTER_NAME)
    return _ConfigFile(values, config.label, config.folder, options, label)


def _check_keys(config: _ConfigFile) -> None:
    for key in config.values:
        spec = BY_NAME.get(key)
        if spec is None:
            # The key's value is never shown: a misspelt secret key would leak it.
            raise _unknown_key(key, config.label)
        if spec.secret:
            raise ConfigError(
                key,
                MASK,
                config.label,
                f"secrets are not read from config files; set ${spec.env} or jwt_secret_file",
            )


# --- resolution -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Raw:
    value: object
    source: str
    rank: int  # 0 flag, 1 environment, 2 config file
    folder: Path  # what a relative path is relative to


def _pick(
    spec: OptionSpec,
    cli: Mapping[str, object | None],
    env: Mapping[str, str],
    config: _ConfigFile | None,
    cwd: Path,
) -> _Raw | None:
    if cli.get(spec.name) is not None:
        return _Raw(cli[spec.name], spec.flag, 0, cwd)
    if spec.env is not None and env.get(spec.env, "").strip():
        return _Raw(env[spec.env], f"${spec.env}", 1, cwd)
    if config is not None and spec.name in config.values:
        return _Raw(config.values[spec.name], config.label, 2, config.folder)
    return None


def _shown(spec: OptionSpec, value: object) -> object:
    """The raw value as an error may show it: secrets masked, URL credentials removed."""
    if spec.secret:
        return MASK
    if isinstance(value, str) and spec.parse is _url:
        return safe_url(value)
    return value


def resolve_settings(
    cli: Mapping[str, object | None],
    *,
    env: Mapping[str, str],
    cwd: Path,
    config_path: Path | None = None,
) -> Settings:
    """Resolve every setting from the flags, the environment and the config file.

    Args:
        cli: option name → value from the command line; ``None`` (or a missing
            name) means the flag was not given. Values may be strings or typed.
        env: the environment (``os.environ``); empty variables count as unset.
        cwd: the working directory: where ``isoharness.toml`` and
            ``pyproject.toml`` are looked for, and what relative paths from
            flags and the environment are relative to.
        config_path: an explicit config file (``--config``), read like
            ``isoharness.toml``; it must exist.

    Returns:
        The settings, with ``jwt_secret`` already read from ``jwt_secret_file``
        when that is where it comes from, and ``sources`` filled in.

    Raises:
        ConfigError: for the first bad value found (config file problems first,
            then options in :data:`OPTIONS` order, then cross-field checks),
            naming the key, the value (``'***'`` for a secret), the source and
            what is allowed.
    """
    config = _load_config(cwd, config_path)
    if config is not None:
        config = _split_adapter_table(config)
        _check_keys(config)
    values: dict[str, object] = {}
    picked: dict[str, _Raw] = {}
    for spec in OPTIONS:
        raw = _pick(spec, cli, env, config, cwd)
        if raw is None:
            values[spec.name] = spec.default
            continue
        picked[spec.name] = raw
        given = raw.value
        if spec.parse in _PATH_PARSERS and isinstance(given, str | Path) and str(given).strip():
            given = raw.folder / Path(str(given).strip()).expanduser()
        try:
            values[spec.name] = spec.parse(given)
        except ValueError as exc:
            raise ConfigError(spec.name, _shown(spec, raw.value), raw.source, str(exc)) from None
    sources = {name: raw.source for name, raw in picked.items()}
    _resolve_secret(values, picked)
    _cross_check(values, sources)
    if config is not None and config.adapter_table is not None:
        values["adapter_options"] = MappingProxyType(config.adapter_table)
        values["adapter_options_source"] = config.adapter_label
    return Settings(**values, sources=MappingProxyType(sources))  # type: ignore[arg-type]


def _resolve_secret(values: dict[str, object], picked: Mapping[str, _Raw]) -> None:
    """Fill ``jwt_secret`` from ``jwt_secret_file`` when the file's source outranks it."""
    secret, secret_file = picked.get("jwt_secret"), picked.get("jwt_secret_file")
    if secret_file is None:
        return
    path = values["jwt_secret_file"]
    assert isinstance(path, Path)
    if secret is not None:
        if secret.rank == secret_file.rank:
            raise ConfigError(
                "jwt_secret_file",
                str(secret_file.value),
                secret_file.source,
                f"{secret.source} is set too; give the secret or the secret file, not both",
            )
        if secret.rank < secret_file.rank:
            return
    try:
        text = path.read_text(encoding="utf-8").strip()
    except OSError as exc:
        reason = "no such file" if isinstance(exc, FileNotFoundError) else exc.strerror
        raise ConfigError(
            "jwt_secret_file",
            str(path),
            secret_file.source,
            f"{reason}; name a file holding the secret",
        ) from None
    except UnicodeDecodeError:
        raise ConfigError(
            "jwt_secret_file", str(path), secret_file.source, "not UTF-8 text"
        ) from None
    if not text:
        raise ConfigError(
            "jwt_secret_file",
            str(path),
            secret_file.source,
            "the file is empty; put the secret in it",
        )
    values["jwt_secret"] = text


def _cross_check(values: Mapping[str, object], sources: Mapping[str, str]) -> None:
    """Rules between options; each error names the option that makes the demand."""

    def where(key: str) -> str:
        return sources.get(key, DEFAULT_SOURCE)

    def ways(key: str) -> str:
        spec = BY_NAME[key]
        return f"set {spec.flag}, ${spec.env} or {key} in the config file"

    if values["credentials"] == "static" and values["tokens_file"] is None:
        raise ConfigError(
            "credentials",
            "static",
            where("credentials"),
            f"needs tokens_file; {ways('tokens_file')}",
        )
    if values["credentials"] == "hook" and values["login_hook"] is None:
        raise ConfigError(
            "credentials", "hook", where("credentials"), f"needs login_hook; {ways('login_hook')}"
        )
    users, tenants = values["users"], values["tenants"]
    assert isinstance(users, int)
    assert isinstance(tenants, int)
    if tenants > users:
        raise ConfigError(
            "tenants",
            tenants,
            where("tenants"),
            f"at most users ({users} from {where('users')}); every tenant needs a user",
        )
    if values["memory_source"] == "json":
        for key in ("json_probe_url", "json_probe_path"):
            if values[key] is None:
                raise ConfigError(
                    "memory_source", "json", where("memory_source"), f"needs {key}; {ways(key)}"
                )


def flag_arguments(spec: OptionSpec, *, dest: str) -> dict[str, Any]:
    """``add_argument``/``addoption`` keyword arguments for ``spec``'s flag.

    The CLI and the pytest plugin both build their flags from :data:`OPTIONS`
    with this, so the two never drift apart. Every flag defaults to ``None``:
    an unset flag lets the environment and the config file decide.
    """
    env = f" [env ${spec.env}]" if spec.env else ""
    kwargs: dict[str, Any] = {"dest": dest, "default": None, "help": spec.help + env}
    if isinstance(spec.default, bool):
        kwargs |= {"action": "store_const", "const": True}
    else:
        kwargs["metavar"] = "VALUE"
    return kwargs
