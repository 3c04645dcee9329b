"""The isoharness pytest plugin: options, the ``harness`` fixture, the verdict.

A thin shell over :mod:`harness.session`: it turns command-line options into
settings, starts the session the first time a scenario asks for the
``harness`` fixture (so it is inert in test suites that never do), and at the
end writes ``summary.json`` and sets the exit code from the verdict:
0 pass, 1 violations, 2 configuration error, 3 target unusable,
4 inconclusive, 130 interrupted.
"""

from __future__ import annotations

import dataclasses
import os
import secrets
import signal
import threading
from collections.abc import Generator
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any

import pytest

from harness.coverage import CONDITIONS
from harness.settings import OPTIONS, flag_arguments

if TYPE_CHECKING:
    from harness.scenario import Scenario
    from harness.session import Session
    from harness.settings import Settings

CONFIG_HELP = (
    "configuration file (default: isoharness.toml, or [tool.isoharness] in pyproject.toml)"
)


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("isoharness", "isoharness: multi-tenant isolation checks")
    for spec in OPTIONS:
        group.addoption(spec.flag, **flag_arguments(spec, dest=f"isoharness_{spec.name}"))
    group.addoption("--isoharness-config", dest="isoharness_config", default=None, help=CONFIG_HELP)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "conditions(*names): conditions an isolation scenario must create for a clean result "
        f"to count ({', '.join(CONDITIONS)})",
    )
    config.addinivalue_line("markers", "soak: a long-running churn scenario (isoharness soak)")
    config.stash[PLUGIN_KEY] = HarnessPlugin(config)


class HarnessPlugin:
    """Per-pytest-session state, kept in ``config.stash``."""

    def __init__(self, config: pytest.Config) -> None:
        self.config = config
        self.session: Session | None = None
        self.interrupted = False
        self.started = False
        self.summary_path: Path | None = None
        self._settings: Settings | None = None
        self.verdict: str | None = None

    def settings(self) -> Settings:
        """The resolved settings, with the seed fixed at first use (so the header shows it)."""
        if self._settings is None:
            from harness.settings import resolve_settings

            config_path = self.config.option.isoharness_config
            settings = resolve_settings(
                self.cli_values(),
                env=os.environ,
                cwd=Path(self.config.invocation_params.dir),
                config_path=Path(config_path) if config_path else None,
            )
            if settings.seed is None:
                settings = dataclasses.replace(settings, seed=secrets.randbelow(2**31))
            self._settings = settings
        return self._settings

    def cli_values(self) -> dict[str, object | None]:
        return {
            spec.name: getattr(self.config.option, f"isoharness_{spec.name}") for spec in OPTIONS
        }

    def ensure_started(self) -> Session:
        """Start the session on first use; configuration or target trouble ends pytest."""
        if self.session is not None:
            return self.session
        if self.started:
            pytest.exit("isoharness: the session failed to start (see above)", returncode=3)
        self.started = True
        if hasattr(self.config, "workerinput"):
            from harness.errors import UsageError

            # Raised in each scenario's setup, so the reason shows on every item.
            self.started = False
            raise UsageError(
                "distributed runs (pytest-xdist -n) are not supported yet: each worker "
                "would start its own session; run the scenarios with -n0"
            )
        from harness.errors import ConfigError, HarnessError, TargetError
        from harness.session import Session

        try:
            settings = self.settings()
        except ConfigError as exc:
            pytest.exit(f"isoharness: {exc}", returncode=2)
        session = Session(
            settings,
            cwd=Path(self.config.invocation_params.dir),
            command=os.environ.get("ISOHARNESS_COMMAND")
            or " ".join(["pytest", *self.config.invocation_params.args]),
        )
        _terminate_as_interrupt()
        try:
            session.start()
        except ConfigError as exc:
            if session.run is not None:
                session.run.error("config_error", str(exc))
                self.session = session
            pytest.exit(f"isoharness: {exc}", returncode=2)
        except TargetError as exc:
            self.session = session
            session.target_unusable = True
            if session.run is not None:
                session.run.error("target_unusable", str(exc))
            # Under `isoharness run` the reason is printed once, on stderr, by the CLI.
            under_cli = "ISOHARNESS_COMMAND" in os.environ
            pytest.exit(
                "isoharness: stopped before the scenarios (reason below)"
                if under_cli
                else f"isoharness: {exc}",
                returncode=3,
            )
        except HarnessError as exc:
            self.session = session if session.run is not None else None
            pytest.exit(f"isoharness: {exc}", returncode=3)
        self.session = session
        session.on_progress = self.progress
        return session

    def progress(self, line: str) -> None:
        """Write a progress line now, past pytest's output capture."""
        capture = self.config.pluginmanager.getplugin("capturemanager")
        reporter = self.config.pluginmanager.getplugin("terminalreporter")
        if reporter is None:
            return
        if capture is not None:
            with capture.global_and_fixture_disabled():
                reporter.write_line(line)
        else:
            reporter.write_line(line)

    def scenario(self, nodeid: str) -> Scenario:
        return self.ensure_started().scenario(nodeid)


PLUGIN_KEY = pytest.StashKey[HarnessPlugin]()


def pytest_report_header(config: pytest.Config) -> list[str]:
    """The target, the seed and the sizes, when isoharness options are in play."""
    plugin = config.stash.get(PLUGIN_KEY, None)
    if plugin is None or not (
        any(v is not None for v in plugin.cli_values().values())
        or any(spec.env and spec.env in os.environ for spec in OPTIONS if spec.name == "target_url")
    ):
        return []
    from harness.errors import ConfigError

    try:
        s = plugin.settings()
    except ConfigError:
        return []  # reported, with exit code 2, when a scenario first needs the session
    target = s.target_url or "the embedded reference service"
    return [
        f"isoharness: target {target} · seed {s.seed} · {s.users} users in {s.tenants} tenants"
        f" · {s.connections_per_user} connections and {s.messages_per_user} messages per user"
        f" · duration {s.duration:g}s · policy {s.delivery_policy}"
    ]


def _terminate_as_interrupt() -> None:
    """SIGTERM ends the run like Ctrl-C: verdict ``interrupted``, evidence kept."""
    if threading.current_thread() is not threading.main_thread():
        return

    def handler(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, handler)


@pytest.fixture
def harness(request: pytest.FixtureRequest) -> Scenario:
    """The isolation harness for this scenario: users, workloads and ``verify()``."""
    scenario = request.config.stash[PLUGIN_KEY].scenario(request.node.nodeid)
    for marker in request.node.iter_markers("conditions"):
        scenario.conditions(*marker.args)
    return scenario


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    plugin = item.config.stash.get(PLUGIN_KEY, None)
    if plugin is None or plugin.session is None or plugin.session.run is None:
        return report
    run = plugin.session.run
    from harness.errors import IsolationViolation
    from harness.scenario import Inconclusive
    from harness.types import ScenarioId

    if item.nodeid not in run.scenarios:
        return report
    result = run.scenarios[ScenarioId(item.nodeid)]
    if call.when == "call":
        result.duration_s = call.duration
        if call.excinfo is not None and call.excinfo.errisinstance(Inconclusive):
            report.outcome = "skipped"
            report.longrepr = (str(item.path), item.location[1] or 0, str(call.excinfo.value))
            result.outcome = "inconclusive"
        elif report.passed:
            result.outcome = "passed"
        elif call.excinfo is not None and call.excinfo.errisinstance(IsolationViolation):
            result.outcome = "failed"
        else:
            result.outcome = "error"
            if call.excinfo is not None:
                run.error("scenario_error", f"{item.nodeid}: {call.excinfo.exconly()[:300]}")
    elif report.failed:
        result.outcome = "error"
        run.error("scenario_error", f"{item.nodeid} ({call.when}): {report.longreprtext[-300:]}")
    return report


def pytest_runtest_logfinish(nodeid: str, location: tuple[str, int | None, str]) -> None:
    """After each scenario, rewrite the provisional summary (a killed run keeps it)."""
    del location
    plugin = _plugin_of_running_session()
    if plugin is not None and plugin.session is not None and plugin.session.run is not None:
        if nodeid in plugin.session.run.scenarios:
            from harness.types import Verdict

            plugin.session.write_summary(Verdict.INTERRUPTED, final=False)


_CURRENT: list[HarnessPlugin] = []


def pytest_sessionstart(session: pytest.Session) -> None:
    _CURRENT[:] = [session.config.stash[PLUGIN_KEY]]


def _plugin_of_running_session() -> HarnessPlugin | None:
    return _CURRENT[0] if _CURRENT else None


def pytest_keyboard_interrupt(excinfo: pytest.ExceptionInfo[BaseException]) -> None:
    plugin = _plugin_of_running_session()
    if plugin is not None and not excinfo.errisinstance(pytest.exit.Exception):
        plugin.interrupted = True


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    plugin = session.config.stash.get(PLUGIN_KEY, None)
    if plugin is None or plugin.session is None or plugin.session.run is None:
        return
    from harness.run import EXIT_CODES

    interrupted = plugin.interrupted or exitstatus == pytest.ExitCode.INTERRUPTED
    verdict, path = plugin.session.finish(interrupted=interrupted)
    plugin.summary_path = path
    plugin.verdict = str(verdict)
    if exitstatus in (pytest.ExitCode.INTERNAL_ERROR, pytest.ExitCode.USAGE_ERROR):
        return
    session.exitstatus = EXIT_CODES[verdict]


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    plugin = config.stash.get(PLUGIN_KEY, None)
    if plugin is None or plugin.summary_path is None:
        return
    from harness.reporting.terminal import summary_lines

    lines = summary_lines(plugin.summary_path)
    if "ISOHARNESS_COMMAND" in os.environ:
        lines = lines[:-1]  # `isoharness run` ends with the verdict line itself, after pytest's
    for line in lines:
        terminalreporter.write_line(line)
