"""harness.settings: one option table, three sources, one precedence, exact errors."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from pathlib import Path

import orjson
import pytest

from harness.errors import ConfigError
from harness.settings import (
    BY_NAME,
    DURATION_ALLOWED,
    OPTIONS,
    Settings,
    parse_duration,
    resolve_settings,
)
from harness.types import DeliveryPolicy

SECRET = "s3cr3t-value-never-shown"


def resolve(
    cwd: Path,
    cli: Mapping[str, object | None] | None = None,
    env: Mapping[str, str] | None = None,
    config_path: Path | None = None,
) -> Settings:
    return resolve_settings(cli or {}, env=env or {}, cwd=cwd, config_path=config_path)


def error(
    cwd: Path,
    cli: Mapping[str, object | None] | None = None,
    env: Mapping[str, str] | None = None,
    config_path: Path | None = None,
) -> str:
    with pytest.raises(ConfigError) as info:
        resolve(cwd, cli, env, config_path)
    return str(info.value)


def write(folder: Path, name: str, text: str) -> Path:
    path = folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


# --- the option table -----------------------------------------------------------


def test_every_option_is_a_settings_field_with_the_same_default() -> None:
    not_options = ("sources", "adapter_options", "adapter_options_source")
    fields = {f.name: f for f in dataclasses.fields(Settings) if f.name not in not_options}
    assert list(fields) == [spec.name for spec in OPTIONS]
    for spec in OPTIONS:
        assert fields[spec.name].default == spec.default, spec.name


def test_flags_and_environment_variables_follow_the_option_names() -> None:
    for spec in OPTIONS:
        assert spec.flag == "--" + spec.name.replace("_", "-")
        assert spec.env == "ISOHARNESS_" + spec.name.upper()
        assert spec.help
        assert "\n" not in spec.help
    assert [spec.name for spec in OPTIONS if spec.secret] == ["jwt_secret"]
    assert BY_NAME["users"].flag == "--users"


def test_nothing_set_gives_the_defaults(tmp_path: Path) -> None:
    settings = resolve(tmp_path)
    assert settings == Settings()
    assert settings.target_url is None
    assert settings.delivery_policy is DeliveryPolicy.OWNER_ONLY
    assert settings.gauges == ("aep_connections_active", "aep_runs_active")
    assert settings.source_of("users") == "default"


# --- precedence -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("cli", "env", "file", "expected", "source"),
    [
        (None, None, None, 8, "default"),
        (None, None, 3, 3, "isoharness.toml"),
        (None, "4", 3, 4, "$ISOHARNESS_USERS"),
        ("5", "4", 3, 5, "--users"),
        ("5", None, 3, 5, "--users"),
        ("5", "4", None, 5, "--users"),
        (None, "4", None, 4, "$ISOHARNESS_USERS"),
        (6, None, None, 6, "--users"),
    ],
)
def test_cli_beats_environment_beats_config_file_beats_default(
    tmp_path: Path,
    cli: object | None,
    env: str | None,
    file: int | None,
    expected: int,
    source: str,
) -> None:
    if file is not None:
        write(tmp_path, "isoharness.toml", f"users = {file}\n")
    settings = resolve(
        tmp_path,
        cli={"users": cli},
        env={"ISOHARNESS_USERS": env} if env is not None else {},
    )
    assert settings.users == expected
    assert settings.source_of("users") == source


def test_an_empty_environment_variable_counts_as_unset(tmp_path: Path) -> None:
    write(tmp_path, "isoharness.toml", "users = 3\n")
    assert resolve(tmp_path, env={"ISOHARNESS_USERS": ""}).users == 3


@pytest.mark.parametrize(
    ("cli", "env", "file", "message"),
    [
        ("-3", None, None, "invalid users '-3' from --users: an integer from 2 to 100000"),
        (
            None,
            "-3",
            None,
            "invalid users '-3' from $ISOHARNESS_USERS: an integer from 2 to 100000",
        ),
        (None, None, "-3", "invalid users -3 from isoharness.toml: an integer from 2 to 100000"),
        (
            None,
            "many",
            "4",
            "invalid users 'many' from $ISOHARNESS_USERS: an integer from 2 to 100000",
        ),
    ],
)
def test_errors_name_the_source_the_bad_value_came_from(
    tmp_path: Path, cli: str | None, env: str | None, file: str | None, message: str
) -> None:
    if file is not None:
        write(tmp_path, "isoharness.toml", f"users = {file}\n")
    env_map = {"ISOHARNESS_USERS": env} if env is not None else {}
    assert error(tmp_path, cli={"users": cli}, env=env_map) == message


# --- config files ---------------------------------------------------------------


def test_isoharness_toml_top_level_keys(tmp_path: Path) -> None:
    write(tmp_path, "isoharness.toml", 'users = 4\ndelivery_policy = "same_tenant"\n')
    settings = resolve(tmp_path)
    assert (settings.users, settings.delivery_policy) == (4, DeliveryPolicy.SAME_TENANT)


def test_isoharness_toml_tool_table(tmp_path: Path) -> None:
    write(tmp_path, "isoharness.toml", "[tool.isoharness]\nusers = 4\n")
    settings = resolve(tmp_path)
    assert settings.users == 4
    assert settings.source_of("users") == "isoharness.toml [tool.isoharness]"


def test_isoharness_toml_refuses_top_level_keys_and_a_tool_table_together(tmp_path: Path) -> None:
    write(tmp_path, "isoharness.toml", "users = 4\n[tool.isoharness]\ntenants = 2\n")
    assert error(tmp_path) == (
        "invalid key 'users' from isoharness.toml: "
        "use top-level keys or a [tool.isoharness] table, not both"
    )


def test_pyproject_tool_table(tmp_path: Path) -> None:
    write(tmp_path, "pyproject.toml", '[project]\nname = "x"\n[tool.isoharness]\nusers = 5\n')
    settings = resolve(tmp_path)
    assert settings.users == 5
    assert settings.source_of("users") == "pyproject.toml [tool.isoharness]"


def test_pyproject_errors_name_the_table(tmp_path: Path) -> None:
    write(tmp_path, "pyproject.toml", "[tool.isoharness]\nusers = 1\n")
    assert error(tmp_path) == (
        "invalid users 1 from pyproject.toml [tool.isoharness]: an integer from 2 to 100000"
    )


def test_pyproject_without_the_table_is_no_config(tmp_path: Path) -> None:
    write(tmp_path, "pyproject.toml", '[project]\nname = "x"\n[tool.ruff]\nline-length = 1\n')
    assert resolve(tmp_path) == Settings()


def test_isoharness_toml_wins_over_pyproject(tmp_path: Path) -> None:
    write(tmp_path, "isoharness.toml", "users = 4\n")
    write(tmp_path, "pyproject.toml", "[tool.isoharness]\nusers = 5\ntenants = 3\n")
    settings = resolve(tmp_path)
    assert (settings.users, settings.tenants) == (4, 2)


def test_an_explicit_config_path_replaces_discovery(tmp_path: Path) -> None:
    write(tmp_path, "isoharness.toml", "users = 4\n")
    write(tmp_path, "conf/staging.toml", "users = 1\n")
    assert error(tmp_path, config_path=Path("conf/staging.toml")) == (
        "invalid users 1 from conf/staging.toml: an integer from 2 to 100000"
    )


def test_a_missing_explicit_config_file_is_named(tmp_path: Path) -> None:
    assert error(tmp_path, config_path=Path("nope.toml")) == (
        f"invalid config 'nope.toml' from --config: "
        f"no such file ({tmp_path / 'nope.toml'}); name a TOML file"
    )


def test_unknown_key_suggests_the_closest(tmp_path: Path) -> None:
    write(tmp_path, "isoharness.toml", "user = 4\n")
    assert error(tmp_path) == (
        "invalid key 'user' from isoharness.toml: unknown key; did you mean 'users'?"
    )


def test_unknown_key_without_a_close_match_lists_the_known_keys(tmp_path: Path) -> None:
    write(tmp_path, "isoharness.toml", "zzz = 4\n")
    message = error(tmp_path)
    assert message.startswith(
        "invalid key 'zzz' from isoharness.toml: unknown key; "
        "known keys: adapter, allowed_targets, "
    )
    assert "users" in message
    assert "jwt_secret," not in message  # refused in files anyway


def test_a_misspelt_secret_key_is_not_echoed(tmp_path: Path) -> None:
    write(tmp_path, "isoharness.toml", f'jwt_secrt = "{SECRET}"\n')
    message = error(tmp_path)
    assert message == (
        "invalid key 'jwt_secrt' from isoharness.toml: unknown key; did you mean 'jwt_secret_file'?"
    )


def test_invalid_toml_is_one_line_with_the_file_and_line(tmp_path: Path) -> None:
    write(tmp_path, "isoharness.toml", "users = 4\ntenants = = 2\n")
    assert error(tmp_path) == (
        "invalid config file 'isoharness.toml' from line 2, column 11: "
        "not valid TOML: Invalid value"
    )


def test_invalid_toml_never_echoes_the_line(tmp_path: Path) -> None:
    write(tmp_path, "pyproject.toml", 'jwt_secret = "unterminated\n')
    message = error(tmp_path)
    assert message == (
        "invalid config file 'pyproject.toml' from line 1, column 27: "
        "not valid TOML: Illegal character '\\n'"
    )
    assert "unterminated" not in message


def test_invalid_toml_at_the_end_of_the_file(tmp_path: Path) -> None:
    write(tmp_path, "isoharness.toml", 'gauges = ["a",\n')
    assert error(tmp_path) == (
        "invalid config file 'isoharness.toml' from end of document: not valid TOML: Invalid value"
    )


# --- values ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        (90, 90.0),
        (2.5, 2.5),
        ("90", 90.0),
        (" 90 ", 90.0),
        ("0.5", 0.5),
        ("30s", 30.0),
        ("30m", 1800.0),
        ("8h", 28800.0),
        ("1h30m", 5400.0),
        ("1h30m15s", 5415.0),
        ("2m30s", 150.0),
        ("1.5h", 5400.0),
        ("10S", 10.0),
    ],
)
def test_parse_duration(text: object, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize(
    "text",
    ["", " ", "0", "0s", "-5", "-5s", "abc", "30x", "30 s", "1m1h", "1h1h", "s", "nan", "inf",
     True, None, [30], float("inf")],
)  # fmt: skip
def test_parse_duration_refuses(text: object) -> None:
    with pytest.raises(ValueError, match="^a positive number of seconds") as info:
        parse_duration(text)
    assert str(info.value) == DURATION_ALLOWED


def test_duration_error_message(tmp_path: Path) -> None:
    assert error(tmp_path, env={"ISOHARNESS_DURATION": "soon"}) == (
        "invalid duration 'soon' from $ISOHARNESS_DURATION: a positive number of seconds, "
        "or a duration such as 30s, 30m, 8h, 1h30m, at most 720h (30 days)"
    )


@pytest.mark.parametrize(
    ("text", "expected"),
    [("1", True), ("true", True), ("Yes", True), ("on", True),
     ("0", False), ("false", False), ("NO", False), ("off", False)],
)  # fmt: skip
def test_insecure_from_the_environment(tmp_path: Path, text: str, expected: bool) -> None:
    assert resolve(tmp_path, env={"ISOHARNESS_INSECURE": text}).insecure is expected


def test_bad_boolean(tmp_path: Path) -> None:
    assert error(tmp_path, env={"ISOHARNESS_INSECURE": "maybe"}) == (
        "invalid insecure 'maybe' from $ISOHARNESS_INSECURE: "
        "true or false (also 1/0, yes/no, on/off)"
    )


@pytest.mark.parametrize(
    ("toml", "message"),
    [
        ("tenants = 0", "invalid tenants 0 from isoharness.toml: an integer from 1 to 100000"),
        ("users = 2.5", "invalid users 2.5 from isoharness.toml: an integer from 2 to 100000"),
        ("users = true", "invalid users True from isoharness.toml: an integer from 2 to 100000"),
        ("rate = 0", "invalid rate 0 from isoharness.toml: a number from 0.1 to 10000"),
        (
            "gauge_grace = -1",
            "invalid gauge_grace -1 from isoharness.toml: a number from 0 to 86400",
        ),
        (
            "memory_floor_bytes_per_session = -1",
            "invalid memory_floor_bytes_per_session -1 from isoharness.toml: a number >= 0",
        ),
        (
            'seed = "x"',
            "invalid seed 'x' from isoharness.toml: an integer from 0 to 9223372036854775807",
        ),
        (
            'credentials = "oauth"',
            "invalid credentials 'oauth' from isoharness.toml: one of jwt, static, hook",
        ),
        (
            'delivery_policy = "anyone"',
            "invalid delivery_policy 'anyone' from isoharness.toml: one of owner_only, same_tenant",
        ),
        (
            'memory_source = "top"',
            "invalid memory_source 'top' from isoharness.toml: "
            "one of auto, prometheus, psutil, json, none",
        ),
        (
            'metrics_path = "metrics"',
            "invalid metrics_path 'metrics' from isoharness.toml: "
            "a URL path starting with '/', e.g. /metrics",
        ),
        (
            'login_hook = "mod.func"',
            "invalid login_hook 'mod.func' from isoharness.toml: 'package.module:function'",
        ),
        (
            "gauges = [1, 2]",
            "invalid gauges [1, 2] from isoharness.toml: "
            "a list of strings, or one comma-separated string",
        ),
        (
            'target_url = "ftp://example.com"',
            "invalid target_url 'ftp://example.com' from isoharness.toml: an http://, https://, "
            "ws:// or wss:// URL with a host, e.g. https://api.example.com",
        ),
        (
            'target_url = "https://example.com/?token=x"',
            "invalid target_url 'https://example.com/?token=x' from isoharness.toml: an http://, "
            "https://, ws:// or wss:// URL with a host, e.g. https://api.example.com, "
            "without a query string or fragment",
        ),
    ],
)
def test_bad_values_from_the_config_file(tmp_path: Path, toml: str, message: str) -> None:
    write(tmp_path, "isoharness.toml", toml + "\n")
    assert error(tmp_path) == message


def test_a_url_with_credentials_is_refused_without_showing_them(tmp_path: Path) -> None:
    message = error(tmp_path, cli={"target_url": "https://bob:hunter22@api.example.com"})
    assert message == (
        "invalid target_url 'https://***@api.example.com' from --target-url: an http://, "
        "https://, ws:// or wss:// URL with a host, e.g. https://api.example.com, "
        "without user:password (use the credentials options)"
    )


def test_typed_values(tmp_path: Path) -> None:
    write(
        tmp_path,
        "isoharness.toml",
        'target_url = "https://api.staging.example.com/"\n'
        'allowed_targets = ["*.staging.example.com", "api.example.com:8443"]\n'
        'duration = "1h30m"\n'
        "rate = 5\n"
        'credentials = "Hook"\n'
        'login_hook = "myorg.auth:login"\n',
    )
    settings = resolve(tmp_path, env={"ISOHARNESS_GAUGES": "a_active, b_active,"})
    assert settings.target_url == "https://api.staging.example.com"
    assert settings.allowed_targets == ("*.staging.example.com", "api.example.com:8443")
    assert settings.duration == 5400.0
    assert settings.rate == 5.0
    assert isinstance(settings.rate, float)
    assert settings.credentials == "hook"
    assert settings.gauges == ("a_active", "b_active")


def test_allowed_targets_from_a_comma_separated_flag(tmp_path: Path) -> None:
    settings = resolve(tmp_path, cli={"allowed_targets": "a.example.com,*.b.example.com"})
    assert settings.allowed_targets == ("a.example.com", "*.b.example.com")


def test_relative_paths_from_the_file_are_relative_to_its_folder(tmp_path: Path) -> None:
    write(tmp_path, "conf/tokens.txt", "t u tok\n")
    write(tmp_path, "conf/iso.toml", 'credentials = "static"\ntokens_file = "tokens.txt"\n')
    settings = resolve(tmp_path, config_path=tmp_path / "conf" / "iso.toml")
    assert settings.tokens_file == tmp_path / "conf" / "tokens.txt"


def test_relative_paths_from_flags_are_relative_to_cwd(tmp_path: Path) -> None:
    settings = resolve(tmp_path, cli={"report_dir": "out/run1"})
    assert settings.report_dir == tmp_path / "out" / "run1"


def test_a_missing_ca_bundle_is_named(tmp_path: Path) -> None:
    assert error(tmp_path, cli={"ca_bundle": "ca.pem"}) == (
        f"invalid ca_bundle 'ca.pem' from --ca-bundle: an existing file (no file at "
        f"{tmp_path / 'ca.pem'})"
    )


# --- ranges: every number has a maximum, so a typo fails here and not deep in the run ------


#: key, a value just above the maximum (or the audit's) as a flag's text and as a TOML value
#: (written as Python shows it, so it appears in the message as written), and what is allowed.
ABOVE_THE_MAXIMUM = [
    ("users", "100001", "100001", "an integer from 2 to 100000"),
    ("users", "99999999999999999999999", "99999999999999999999999", "an integer from 2 to 100000"),
    ("tenants", "100001", "100001", "an integer from 1 to 100000"),
    ("connections_per_user", "101", "101", "an integer from 1 to 100"),
    ("messages_per_user", "1001", "1001", "an integer from 1 to 1000"),
    ("seed", "9223372036854775808", "9223372036854775808",
     "an integer from 0 to 9223372036854775807"),
    ("seed", "99999999999999999999999", "99999999999999999999999",
     "an integer from 0 to 9223372036854775807"),
    ("duration", "720h1s", "'720h1s'", DURATION_ALLOWED),
    ("duration", "99999999999h", "'99999999999h'", DURATION_ALLOWED),
    ("duration", "2592001", "2592001", DURATION_ALLOWED),
    ("rate", "10001", "10001", "a number from 0.1 to 10000"),
    ("lifecycle_timeout", "86401", "86401", "a number > 0 and <= 86400"),
    ("lifecycle_timeout", "1e15", "1000000000000000.0", "a number > 0 and <= 86400"),
    ("sample_interval", "86401", "86401", "a number from 0.05 to 86400"),
    ("gauge_grace", "86401", "86401", "a number from 0 to 86400"),
    ("progress_interval", "86401", "86401", "a number from 1 to 86400"),
    ("events_max_mb", "1048577", "1048577", "a number from 0 to 1048576"),
]  # fmt: skip


@pytest.mark.parametrize(("key", "flag_text", "toml_value", "allowed"), ABOVE_THE_MAXIMUM)
def test_a_value_above_the_maximum_is_refused_from_the_command_line_naming_the_range(
    tmp_path: Path, key: str, flag_text: str, toml_value: str, allowed: str
) -> None:
    assert error(tmp_path, cli={key: flag_text}) == (
        f"invalid {key} '{flag_text}' from {BY_NAME[key].flag}: {allowed}"
    )


@pytest.mark.parametrize(("key", "flag_text", "toml_value", "allowed"), ABOVE_THE_MAXIMUM)
def test_a_value_above_the_maximum_is_refused_from_the_config_file_naming_the_range(
    tmp_path: Path, key: str, flag_text: str, toml_value: str, allowed: str
) -> None:
    write(tmp_path, "isoharness.toml", f"{key} = {toml_value}\n")
    assert error(tmp_path) == f"invalid {key} {toml_value} from isoharness.toml: {allowed}"


@pytest.mark.parametrize(("key", "flag_text", "toml_value", "allowed"), ABOVE_THE_MAXIMUM)
def test_the_range_is_the_same_from_the_environment_and_pyproject(
    tmp_path: Path, key: str, flag_text: str, toml_value: str, allowed: str
) -> None:
    env = {f"ISOHARNESS_{key.upper()}": flag_text}
    assert error(tmp_path, env=env) == (
        f"invalid {key} '{flag_text}' from $ISOHARNESS_{key.upper()}: {allowed}"
    )
    write(tmp_path, "pyproject.toml", f"[tool.isoharness]\n{key} = {toml_value}\n")
    assert error(tmp_path) == (
        f"invalid {key} {toml_value} from pyproject.toml [tool.isoharness]: {allowed}"
    )


@pytest.mark.parametrize(
    ("toml", "message"),
    [
        # Too large for a float, or for int(): still above the maximum, never a crash.
        pytest.param("rate = 1" + "0" * 400, "a number from 0.1 to 10000", id="int-beyond-float"),
        pytest.param("duration = 1" + "0" * 400, DURATION_ALLOWED, id="duration-beyond-float"),
        pytest.param("duration = '1" + "0" * 400 + "h'", DURATION_ALLOWED, id="hours-beyond-float"),
        pytest.param("lifecycle_timeout = inf", "a number > 0 and <= 86400", id="inf"),
        pytest.param(
            "users = '1" + "0" * 5000 + "'", "an integer from 2 to 100000", id="beyond-int-digits"
        ),
    ],
)
def test_numbers_too_large_to_convert_are_above_the_maximum(
    tmp_path: Path, toml: str, message: str
) -> None:
    write(tmp_path, "isoharness.toml", toml + "\n")
    with pytest.raises(ConfigError) as info:
        resolve(tmp_path)
    assert (info.value.source, info.value.allowed) == ("isoharness.toml", message)


@pytest.mark.parametrize(
    ("key", "text", "allowed"),
    [
        ("sample_interval", "1e-300", "a number from 0.05 to 86400"),  # busy-looped the sampler
        ("sample_interval", "0.049", "a number from 0.05 to 86400"),
        ("progress_interval", "0.5", "a number from 1 to 86400"),
        ("rate", "0.09", "a number from 0.1 to 10000"),
        ("lifecycle_timeout", "0", "a number > 0 and <= 86400"),
        ("users", "1", "an integer from 2 to 100000"),
        ("seed", "-1", "an integer from 0 to 9223372036854775807"),
        ("duration", "0", DURATION_ALLOWED),
        ("memory_floor_bytes_per_session", "-1", "a number >= 0"),  # no maximum: the minimum
    ],
)
def test_a_value_below_the_minimum_is_told_the_whole_range(
    tmp_path: Path, key: str, text: str, allowed: str
) -> None:
    assert error(tmp_path, cli={key: text}) == (
        f"invalid {key} '{text}' from {BY_NAME[key].flag}: {allowed}"
    )
    write(tmp_path, "isoharness.toml", f"{key} = {text}\n")
    assert error(tmp_path) == f"invalid {key} {text} from isoharness.toml: {allowed}"


#: The largest value of every bounded number (and the smallest of the new minimums), as TOML.
AT_THE_LIMITS = {
    "users": ("100000", 100_000),
    "tenants": ("100000", 100_000),
    "connections_per_user": ("100", 100),
    "messages_per_user": ("1000", 1000),
    "seed": ("9223372036854775807", 2**63 - 1),
    "duration": ("'720h'", 2_592_000.0),
    "rate": ("10000", 10_000.0),
    "lifecycle_timeout": ("86400", 86_400.0),
    "sample_interval": ("0.05", 0.05),
    "gauge_grace": ("86400", 86_400.0),
    "progress_interval": ("1", 1.0),
    "events_max_mb": ("1048576", 1_048_576.0),
}


def test_the_limits_themselves_are_accepted_from_the_config_file(tmp_path: Path) -> None:
    write(
        tmp_path, "isoharness.toml", "".join(f"{k} = {v}\n" for k, (v, _) in AT_THE_LIMITS.items())
    )
    settings = resolve(tmp_path)
    assert {key: getattr(settings, key) for key in AT_THE_LIMITS} == {
        key: value for key, (_, value) in AT_THE_LIMITS.items()
    }
    # summary.json is written with orjson, whose integers are 64-bit.
    assert orjson.loads(orjson.dumps(settings.public_dict()))["seed"] == 2**63 - 1


def test_the_limits_themselves_are_accepted_from_the_command_line(tmp_path: Path) -> None:
    cli = {key: text.strip("'") for key, (text, _) in AT_THE_LIMITS.items()}
    settings = resolve(tmp_path, cli=cli)
    assert {key: getattr(settings, key) for key in AT_THE_LIMITS} == {
        key: value for key, (_, value) in AT_THE_LIMITS.items()
    }
    assert resolve(tmp_path, cli={"sample_interval": "86400", "progress_interval": "86400"}) == (
        Settings(sample_interval=86_400.0, progress_interval=86_400.0)
    )


#: The one number without a maximum: a floor above any growth only keeps memory_growth quiet.
UNBOUNDED = {"memory_floor_bytes_per_session"}


def test_every_numeric_setting_has_a_maximum() -> None:
    numeric = [
        spec for spec in OPTIONS if spec.name == "seed" or type(spec.default) in (int, float)
    ]
    assert {spec.name for spec in numeric} == set(AT_THE_LIMITS) | UNBOUNDED
    for spec in numeric:
        if spec.name in UNBOUNDED:
            assert spec.parse("1e300") == 1e300
            continue
        with pytest.raises(ValueError, match="from .* to |and <=|at most"):
            spec.parse("1" + "0" * 30)


# --- secrets --------------------------------------------------------------------


def test_a_secret_in_the_config_file_is_refused_without_echoing_it(tmp_path: Path) -> None:
    write(tmp_path, "isoharness.toml", f'jwt_secret = "{SECRET}"\n')
    with pytest.raises(ConfigError) as info:
        resolve(tmp_path)
    assert str(info.value) == (
        "invalid jwt_secret '***' from isoharness.toml: "
        "secrets are not read from config files; set $ISOHARNESS_JWT_SECRET or jwt_secret_file"
    )
    assert SECRET not in repr(info.value.args)
    assert info.value.value == "***"


def test_a_secret_in_pyproject_is_refused_too(tmp_path: Path) -> None:
    write(tmp_path, "pyproject.toml", f'[tool.isoharness]\njwt_secret = "{SECRET}"\n')
    assert error(tmp_path).startswith("invalid jwt_secret '***' from pyproject.toml")


def test_secret_from_the_environment_and_the_flag(tmp_path: Path) -> None:
    env = {"ISOHARNESS_JWT_SECRET": "from-env"}
    assert resolve(tmp_path, env=env).jwt_secret == "from-env"
    assert resolve(tmp_path, cli={"jwt_secret": "from-cli"}, env=env).jwt_secret == "from-cli"


def test_a_bad_secret_is_masked_in_the_error(tmp_path: Path) -> None:
    assert error(tmp_path, cli={"jwt_secret": "   "}) == (
        "invalid jwt_secret '***' from --jwt-secret: a non-empty string"
    )


def test_secret_from_a_file_named_in_the_config_file(tmp_path: Path) -> None:
    write(tmp_path, "secret.txt", f"\n  {SECRET}  \n")
    write(tmp_path, "isoharness.toml", 'jwt_secret_file = "secret.txt"\n')
    settings = resolve(tmp_path)
    assert settings.jwt_secret == SECRET
    assert settings.jwt_secret_file == tmp_path / "secret.txt"
    assert SECRET not in repr(settings)


def test_a_missing_secret_file_is_named(tmp_path: Path) -> None:
    env = {"ISOHARNESS_JWT_SECRET_FILE": "nope.txt"}
    assert error(tmp_path, env=env) == (
        f"invalid jwt_secret_file '{tmp_path / 'nope.txt'}' from $ISOHARNESS_JWT_SECRET_FILE: "
        "no such file; name a file holding the secret"
    )


def test_an_empty_secret_file_is_refused(tmp_path: Path) -> None:
    write(tmp_path, "secret.txt", "\n")
    assert error(tmp_path, cli={"jwt_secret_file": "secret.txt"}) == (
        f"invalid jwt_secret_file '{tmp_path / 'secret.txt'}' from --jwt-secret-file: "
        "the file is empty; put the secret in it"
    )


def test_the_higher_precedence_of_secret_and_secret_file_wins(tmp_path: Path) -> None:
    write(tmp_path, "secret.txt", "from-file")
    # The environment's secret beats the config file's secret file, which is not even read.
    write(tmp_path, "isoharness.toml", 'jwt_secret_file = "missing.txt"\n')
    assert resolve(tmp_path, env={"ISOHARNESS_JWT_SECRET": "from-env"}).jwt_secret == "from-env"
    # A secret file on the command line beats the environment's secret.
    settings = resolve(
        tmp_path,
        cli={"jwt_secret_file": "secret.txt"},
        env={"ISOHARNESS_JWT_SECRET": "from-env"},
    )
    assert settings.jwt_secret == "from-file"


def test_secret_and_secret_file_from_the_same_source_is_an_error(tmp_path: Path) -> None:
    write(tmp_path, "secret.txt", "from-file")
    env = {"ISOHARNESS_JWT_SECRET": SECRET, "ISOHARNESS_JWT_SECRET_FILE": "secret.txt"}
    message = error(tmp_path, env=env)
    assert message == (
        "invalid jwt_secret_file 'secret.txt' from $ISOHARNESS_JWT_SECRET_FILE: "
        "$ISOHARNESS_JWT_SECRET is set too; give the secret or the secret file, not both"
    )


# --- cross-field checks ---------------------------------------------------------


def test_static_credentials_need_a_tokens_file(tmp_path: Path) -> None:
    write(tmp_path, "isoharness.toml", 'credentials = "static"\n')
    assert error(tmp_path) == (
        "invalid credentials 'static' from isoharness.toml: needs tokens_file; "
        "set --tokens-file, $ISOHARNESS_TOKENS_FILE or tokens_file in the config file"
    )


def test_hook_credentials_need_a_login_hook(tmp_path: Path) -> None:
    assert error(tmp_path, cli={"credentials": "hook"}) == (
        "invalid credentials 'hook' from --credentials: needs login_hook; "
        "set --login-hook, $ISOHARNESS_LOGIN_HOOK or login_hook in the config file"
    )


def test_tenants_may_not_outnumber_users(tmp_path: Path) -> None:
    write(tmp_path, "isoharness.toml", "users = 3\n")
    assert error(tmp_path, cli={"tenants": "4"}) == (
        "invalid tenants 4 from --tenants: at most users (3 from isoharness.toml); "
        "every tenant needs a user"
    )
    assert resolve(tmp_path, cli={"tenants": "3"}).tenants == 3


def test_json_memory_source_needs_url_and_path(tmp_path: Path) -> None:
    env = {"ISOHARNESS_MEMORY_SOURCE": "json", "ISOHARNESS_JSON_PROBE_URL": "http://127.0.0.1/m"}
    assert error(tmp_path, env=env) == (
        "invalid memory_source 'json' from $ISOHARNESS_MEMORY_SOURCE: needs json_probe_path; "
        "set --json-probe-path, $ISOHARNESS_JSON_PROBE_PATH or json_probe_path in the config file"
    )
    env["ISOHARNESS_JSON_PROBE_PATH"] = "mem.rss"
    assert resolve(tmp_path, env=env).json_probe_path == "mem.rss"


# --- the report's view ----------------------------------------------------------


def test_public_dict_is_json_safe_and_omits_secrets(tmp_path: Path) -> None:
    write(tmp_path, "secret.txt", SECRET)
    settings = resolve(
        tmp_path,
        cli={"jwt_secret_file": "secret.txt", "report_dir": "out", "users": "4"},
    )
    public = settings.public_dict()
    assert "jwt_secret" not in public
    assert public["jwt_secret_file"] == str(tmp_path / "secret.txt")
    assert public["report_dir"] == str(tmp_path / "out")
    assert public["users"] == 4
    assert public["delivery_policy"] == "owner_only"
    assert public["gauges"] == ["aep_connections_active", "aep_runs_active"]
    assert set(public) == {spec.name for spec in OPTIONS if not spec.secret}
    text = json.dumps(public)
    assert SECRET not in text
    assert json.loads(text) == public
