"""The ``isoharness`` command: ``run``, ``soak``, ``serve``, ``report``.

Exit codes (a contract other tools and CI depend on): 0 no violation,
1 at least one isolation violation, 2 usage or configuration error, 3 the
target was unusable, 4 inconclusive (the scenarios did not create the
conditions they need), 130 interrupted.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

import orjson

import harness
from harness.errors import ConfigError, UsageError
from harness.settings import OPTIONS, Settings, flag_arguments, resolve_settings

EXIT_USAGE = 2
#: RFC 7518 §3.2: an HS256 key is at least 256 bits.
MIN_SECRET_BYTES = 32


def default_scenarios() -> Path:
    """The scenarios shipped with isoharness (the repository's ``scenarios/`` in a checkout)."""
    package = Path(harness.__file__).resolve().parent
    packaged = package / "_scenarios"
    return packaged if packaged.is_dir() else package.parent / "scenarios"


def _add_settings_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group(
        "settings (flags override the environment and the config file)"
    )
    for spec in OPTIONS:
        group.add_argument(spec.flag, **flag_arguments(spec, dest=spec.name))
    group.add_argument(
        "--config",
        dest="config",
        default=None,
        type=Path,
        help="configuration file (default: isoharness.toml or [tool.isoharness] in pyproject.toml)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="isoharness",
        description="Multi-tenant isolation test harness: no cross-user delivery, "
        "no shared state, no memory growth.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    run = sub.add_parser(
        "run",
        help="run the isolation scenarios (against the embedded reference service "
        "unless --target-url is given)",
        description="Run the isolation scenarios. Arguments after '--' go to pytest.",
    )
    _add_settings_options(run)
    soak = sub.add_parser(
        "soak",
        help="continuous session churn for --duration (30m, 8h): isolation, memory growth "
        "and resource leaks",
        description="Run the soak scenario: cycles of mixed load for --duration, with the "
        "target's memory sampled between cycles. Arguments after '--' go to pytest.",
    )
    _add_settings_options(soak)
    sub.add_parser(
        "serve", help="start the AEP/1 reference service (isoharness serve --help)", add_help=False
    )
    report = sub.add_parser("report", help="(re)write report.html for a report folder")
    report.add_argument("folder", type=Path)
    return parser


def _split_passthrough(argv: Sequence[str]) -> tuple[list[str], list[str]]:
    args = list(argv)
    if "--" in args:
        at = args.index("--")
        return args[:at], args[at + 1 :]
    return args, []


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``isoharness`` console script; returns the exit code."""
    args = list(sys.argv[1:] if argv is None else argv)
    if args and args[0] == "serve":
        from harness.reference.__main__ import main as serve

        return serve(args[1:], prog="isoharness serve")
    own, pytest_args = _split_passthrough(args)
    ns = build_parser().parse_args(own)
    ns.argv = args
    if ns.command == "report":
        return _report(ns.folder)
    if ns.command == "soak":
        return _run(ns, ["-m", "soak", *pytest_args])
    return _run(ns, pytest_args)


def _report(folder: Path) -> int:
    from harness.reporting.html import render_report

    if not (folder / "summary.json").is_file():
        print(
            f"isoharness: error: {folder} has no summary.json; pass a report folder",
            file=sys.stderr,
        )
        return EXIT_USAGE
    try:
        # A summary.json that is not a run's is refused; report.html is left as it was.
        out = render_report(folder)
    except UsageError as exc:
        print(f"isoharness: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except OSError as exc:
        print(
            f"isoharness: error: cannot re-render {folder / 'report.html'}: {exc}; "
            "check that the folder's files are readable and the folder is writable",
            file=sys.stderr,
        )
        return EXIT_USAGE
    print(out)
    return 0


def _run(ns: argparse.Namespace, pytest_args: list[str]) -> int:
    import pytest

    from harness.adapters.registry import check_adapter
    from harness.credentials import check_credentials
    from harness.safety import check_target_allowed
    from harness.session import check_report_dir, new_run_id

    cli = {spec.name: getattr(ns, spec.name) for spec in OPTIONS}
    try:
        settings = resolve_settings(cli, env=os.environ, cwd=Path.cwd(), config_path=ns.config)
        if settings.target_url is not None:
            check_target_allowed(
                settings.target_url,
                settings.allowed_targets,
                source=settings.source_of("target_url"),
            )
        check_adapter(settings)
        check_credentials(settings)  # before pytest: one line, no report folder
    except ConfigError as exc:
        print(f"isoharness: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    report_dir = settings.report_dir or Path("reports") / new_run_id()
    scenarios = settings.scenarios or default_scenarios()
    if not scenarios.is_dir():
        print(f"isoharness: error: no scenarios at {scenarios}; set --scenarios", file=sys.stderr)
        return EXIT_USAGE
    try:
        # Checked, not made: a run refused later (by pytest) leaves no folder behind.
        check_report_dir(report_dir, settings.source_of("report_dir"))
    except ConfigError as exc:
        print(f"isoharness: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    argv = [str(scenarios.resolve()), f"--report-dir={report_dir.absolute()}"]
    if _remote_gateways(pytest_args) and not any(
        arg == "--rsyncdir" or arg.startswith("--rsyncdir=") for arg in pytest_args
    ):
        # xdist runs path arguments on a remote gateway only from the copies it
        # rsyncs there: the scenarios go with the workers.
        argv.append(f"--rsyncdir={scenarios.resolve()}")
        print(
            "isoharness: remote workers get the scenarios through xdist's --rsyncdir "
            "(deprecated by xdist 3: its DeprecationWarning at the end is about this)",
            flush=True,
        )
        if settings.target_url is None:
            print(
                "isoharness: the embedded service listens on this machine's loopback only: "
                "workers on other machines need a --target-url they can reach",
                flush=True,
            )
    argv += [
        f"--junitxml={(report_dir / 'junit.xml').absolute()}",
        "-o",
        "junit_suite_name=isoharness",
    ]
    argv += ["-o", "junit_logging=no", f"--timeout={_timeout(settings)}"]
    # This command imported harness (and faker) before pytest started; that is expected.
    argv += ["-W", "ignore::pytest.PytestAssertRewriteWarning"]
    if ns.config is not None:
        argv.append(f"--isoharness-config={ns.config.absolute()}")
    for spec in OPTIONS:
        value = cli[spec.name]
        if value is None or spec.name == "report_dir":
            continue
        if spec.secret:
            # Through the environment, never argv: argv shows in ps and in reports.
            os.environ[spec.env or "ISOHARNESS_JWT_SECRET"] = str(value)
        elif isinstance(spec.default, bool):
            argv.append(spec.flag)
        else:
            argv.append(f"{spec.flag}={value}")
    _warn_if_short_secret(settings)
    # The report shows the command the user typed (secrets are masked there).
    os.environ["ISOHARNESS_COMMAND"] = " ".join(["isoharness", *ns.argv])
    code = int(pytest.main(argv + pytest_args))
    summary = _final_summary(report_dir / "summary.json")
    if summary is not None:
        from harness.reporting.terminal import verdict_line

        # The last line of the run, after pytest's own summary.
        print(verdict_line(report_dir / "summary.json"))
    if summary is not None and summary.get("verdict") == "error":
        reasons = [e for e in summary.get("errors", []) if isinstance(e, dict)]  # type: ignore[attr-defined]
        first = next((e for e in reasons if e.get("kind") == "target_unusable"), None)
        if first is not None:
            print(f"isoharness: error: {first.get('detail')}", file=sys.stderr)
    if summary is not None:
        # The verdict decides; pytest's own codes (4 = usage error) overlap ours.
        exit_code = summary.get("exit_code", code)
        return exit_code if isinstance(exit_code, int) else code
    if code == pytest.ExitCode.NO_TESTS_COLLECTED:
        print(
            "isoharness: error: no scenario was selected; check -k/-m and --scenarios",
            file=sys.stderr,
        )
        return EXIT_USAGE
    if code == pytest.ExitCode.USAGE_ERROR:
        return EXIT_USAGE
    return code


def _warn_if_short_secret(settings: Settings) -> None:
    """One line on stderr when tokens are signed with a secret under ``MIN_SECRET_BYTES``.

    The run goes on: the secret is often the target's, not ours to choose.
    """
    # The embedded service, and a target given with the jwt provider, verify tokens
    # signed with this secret; static and hook credentials never use it.
    signs = settings.target_url is None or settings.credentials == "jwt"
    secret = settings.jwt_secret
    if signs and secret is not None and len(secret.encode()) < MIN_SECRET_BYTES:
        print(
            f"isoharness: warning: the JWT signing secret is shorter than {MIN_SECRET_BYTES} "
            f"bytes (RFC 7518 §3.2); sign with {MIN_SECRET_BYTES} or more random bytes, e.g. "
            "python -c 'import secrets; print(secrets.token_urlsafe(32))'",
            file=sys.stderr,
            flush=True,
        )


def _remote_gateways(pytest_args: Sequence[str]) -> bool:
    """Whether a ``--tx`` spec starts a worker away from this directory (``ssh=``,
    ``socket=``, or ``//chdir=``), where pytest-xdist runs path arguments only from
    the copies it rsyncs (``--rsyncdir``). A spec xdist cannot read is its to report."""
    import execnet

    # A "--tx" with no value after it is xdist's to refuse.
    specs = [
        value for flag, value in zip(pytest_args, pytest_args[1:], strict=False) if flag == "--tx"
    ]
    specs += [arg.removeprefix("--tx=") for arg in pytest_args if arg.startswith("--tx=")]
    for text in specs:
        count, star, rest = text.partition("*")
        try:
            spec = execnet.XSpec(rest if star and count.isdigit() else text)
        except Exception:  # noqa: BLE001, S112 - xdist refuses it with its own message
            continue
        if not spec.popen or spec.chdir:
            return True
    return False


def _final_summary(path: Path) -> dict[str, object] | None:
    try:
        doc = orjson.loads(path.read_bytes())
    except (OSError, orjson.JSONDecodeError):
        return None
    return doc if isinstance(doc, dict) and doc.get("final") else None


def _timeout(settings: Settings) -> int:
    """pytest-timeout's per-scenario limit: the last guard, well past any workload's own."""
    return int(settings.duration * 2 + settings.lifecycle_timeout * 4 + 120)
