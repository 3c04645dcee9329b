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
from collections.abc import Callable, Generator
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any, NoReturn

import pytest

from harness.coverage import CONDITIONS
from harness.settings import OPTIONS, flag_arguments

if TYPE_CHECKING:
    from harness.run import Run
    from harness.scenario import Scenario
    from harness.session import Session
    from harness.settings import Settings

CONFIG_HELP = (
    "configuration file (default: isoharness.toml, or [tool.isoharness] in pyproject.toml)"
)


SCENARIOS_HELP = (
    "this folder holds isolation scenarios: under pytest-xdist (-n N) the controller starts "
    "the isoharness session even when no isoharness setting is given"
)


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("isoharness", "isoharness: multi-tenant isolation checks")
    for spec in OPTIONS:
        group.addoption(spec.flag, **flag_arguments(spec, dest=f"isoharness_{spec.name}"))
    group.addoption("--isoharness-config", dest="isoharness_config", default=None, help=CONFIG_HELP)
    parser.addini("isoharness_scenarios", SCENARIOS_HELP, type="bool", default=False)


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
        #: The exit code pytest was stopped with before the scenarios (a bad setting, an
        #: unusable target), or None.
        self.stopped: int | None = None
        self.summary_path: Path | None = None
        self._settings: Settings | None = None
        self.verdict: str | None = None
        self._worker_index: dict[str, int] = {}
        self._worker_failure: Exception | None = None

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
        if self._worker_failure is not None:
            raise self._worker_failure
        if self.session is not None:
            return self.session
        if hasattr(self.config, "workerinput"):
            return self._join_controller()
        if self.started:
            pytest.exit("isoharness: the session failed to start (see above)", returncode=3)
        self.started = True
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
        if self.config.pluginmanager.hasplugin("dsession"):
            from harness.distributed import Workers

            session.workers = Workers()
        _terminate_as_interrupt()
        try:
            session.start()
        except ConfigError as exc:
            self._stop(session, 2, "config_error", str(exc))
        except TargetError as exc:
            # Under `isoharness run` the reason is printed once, on stderr, by the CLI.
            under_cli = "ISOHARNESS_COMMAND" in os.environ
            self._stop(session, 3, "target_unusable", str(exc), quiet=under_cli)
        except HarnessError as exc:
            self._stop(session, 3, "harness_error", str(exc))
        except Exception as exc:  # noqa: BLE001 - one line and a report, never a bare traceback
            what = session.redactor.redact(f"{type(exc).__name__}: {exc}")
            self._stop(session, 3, "harness_error", f"the session failed to start: {what}")
        except KeyboardInterrupt:
            # Ctrl-C or SIGTERM while starting (a slow login hook): an interrupted run.
            self.interrupted = True
            self.session = session if session.run is not None else None
            raise
        self.session = session
        session.on_progress = self.progress
        return session

    def _stop(
        self, session: Session, code: int, kind: str, detail: str, *, quiet: bool = False
    ) -> NoReturn:
        """End pytest before the scenarios with ``code`` and one line; the run's summary
        (if the run began) records why, with the verdict ``error``."""
        self.stopped = code
        if session.run is not None:
            self.session = session
            session.target_unusable = True  # the run could not go on: verdict error
            session.extra["exit_code"] = code  # 2 for a bad setting, not the verdict's 3
            session.run.error(kind, detail)
        line = "stopped before the scenarios (reason below)" if quiet else detail
        pytest.exit(f"isoharness: {line}", returncode=code)

    # -- distributed runs (pytest-xdist) ----------------------------------------------------------

    def in_play(self) -> bool:
        """Whether this pytest run uses isoharness: a setting from a flag, the environment or
        ``isoharness.toml``, or ``isoharness run``. Under pytest-xdist the controller starts
        the session before any scenario is collected, so it asks this instead (or the
        ``isoharness_scenarios`` ini key of the scenarios' folder)."""
        if "ISOHARNESS_COMMAND" in os.environ or self.config.option.isoharness_config:
            return True
        if self.config.getini("isoharness_scenarios"):
            return True
        if any(v is not None for v in self.cli_values().values()):
            return True
        if any(spec.env and os.environ.get(spec.env, "").strip() for spec in OPTIONS):
            return True
        return (Path(self.config.invocation_params.dir) / "isoharness.toml").is_file()

    def start_controller(self) -> None:
        """The controller of a distributed run: the session, the embedded service and the
        memory monitor run here, once; the workers drive the users."""
        s = self.settings()
        if s.target_url is None and s.jwt_secret is None:
            # The embedded service's secret, which the workers must mint tokens with.
            self._settings = dataclasses.replace(s, jwt_secret=secrets.token_urlsafe(32))
        try:
            self.ensure_started()
        except pytest.exit.Exception:
            # pytest_sessionfinish never runs after an exit from pytest_sessionstart.
            if self.session is not None and self.session.run is not None:
                self.summary_path = self.session.finish()[1]
            raise

    def worker_input(self, worker: str, count: int) -> dict[str, Any]:
        """What a worker needs to join the run (sent through xdist's ``workerinput``; the
        secret is never written anywhere)."""
        session = self.session
        assert session is not None
        assert session.run is not None
        index = self._worker_index.setdefault(worker, len(self._worker_index) % count)
        return {
            "run_id": session.run_id,
            "run_key": session.run_key.hex(),
            "seed": session.seed,
            "report_dir": str(session.report_dir.absolute()),
            "target_url": session.run.target.base_url,
            "embedded": session.embedded is not None,
            "settings": session.settings.public_dict(),
            "jwt_secret": session.settings.jwt_secret,
            "index": index,
            "count": count,
            "command": session.command,
        }

    def _join_controller(self) -> Session:
        """A worker: join the controller's run with this worker's share of the users."""
        from harness.errors import HarnessError, TargetError, UsageError

        if self._worker_failure is not None:
            raise self._worker_failure
        workerinput: dict[str, Any] = self.config.workerinput  # type: ignore[attr-defined]
        info = workerinput.get(XDIST_KEY)
        if info is None:
            raise UsageError(
                "this pytest-xdist worker got no isoharness session from the controller, which "
                "starts one only when an isoharness setting is given (a flag such as "
                "--target-url or --users, an ISOHARNESS_* variable, isoharness.toml); "
                "run `isoharness run -- -n N`, or run the scenarios with -n0"
            )
        from harness.distributed import Shard
        from harness.session import Session
        from harness.settings import resolve_settings

        worker = str(workerinput["workerid"])
        report_dir = Path(info["report_dir"]) / worker
        try:
            report_dir.mkdir(parents=True, exist_ok=True)
        except OSError:
            # Another machine (--tx ssh=…), where the controller's path cannot be made.
            report_dir = Path.cwd() / "reports" / info["run_id"] / worker
        values = dict(info["settings"]) | {
            "target_url": info["target_url"],
            "jwt_secret_file": None,
            "memory_source": "none",
            "report_dir": str(report_dir),
        }
        if info["embedded"]:
            values["credentials"] = "jwt"
        cap = values.get("events_max_mb")
        if isinstance(cap, int | float) and cap > 0:
            # The cap bounds the run's disk use: each worker's events.jsonl gets its share.
            values["events_max_mb"] = cap / int(info["count"])
        self.started = True
        session: Session | None = None
        try:
            settings = resolve_settings(values, env={}, cwd=Path(self.config.invocation_params.dir))
            settings = dataclasses.replace(settings, jwt_secret=info["jwt_secret"])
            session = Session(settings, cwd=Path.cwd(), command=info["command"])
            session.worker = True
            session.run_id = info["run_id"]
            session.run_key = bytes.fromhex(info["run_key"])
            session.seed = info["seed"]
            session.shard = Shard(info["index"], info["count"])
            session.resources_judged = True  # at the controller, after every worker is done
            _terminate_as_interrupt()
            session.start()
        except HarnessError as exc:
            # Raised in each scenario's setup (so the reason shows on every item) and
            # in the worker's summary, which the controller merges.
            self._worker_failure = exc
            if session is not None and session.run is not None:
                self.session = session
                session.target_unusable = isinstance(exc, TargetError)
                session.run.error("target_unusable", f"{worker}: {exc}")
            raise
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
XDIST_KEY = "isoharness"
"""The key of isoharness's entries in xdist's ``workerinput`` and ``workeroutput``."""


def pytest_report_header(config: pytest.Config) -> list[str]:
    """The target, its adapter, the seed and the sizes, when isoharness options are in play."""
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
    lines = [
        f"isoharness: target {target} ({s.adapter} adapter, {s.transport} transport)"
        f" · seed {s.seed} · {s.users} users in {s.tenants} tenants"
        f" · {s.connections_per_user} connections and {s.messages_per_user} messages per user"
        f" · duration {s.duration:g}s · policy {s.delivery_policy}"
    ]
    if config.pluginmanager.hasplugin("dsession"):
        # Said first, not only at the end of what may be an hours-long soak.
        lines.append(
            "isoharness: distributed run: each worker drives a share of every scenario's "
            "users; memory_growth is not judged (run without -n to judge it)"
        )
    return lines


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
    _judge_report(plugin.session.run, item, call, report)
    # What the terminal, junit.xml and xdist's controller show: secrets masked.
    _redact_report(report, plugin.session.redactor.redact)
    return report


def _redact_report(report: pytest.TestReport, redact: Callable[[str], str]) -> None:
    """Mask secrets in a report's traceback (or skip reason) and captured output."""
    longrepr = report.longrepr
    if isinstance(longrepr, tuple):
        report.longrepr = (longrepr[0], longrepr[1], redact(longrepr[2]))
    elif longrepr is not None:
        text = str(longrepr)
        masked = redact(text)
        if masked != text:  # keep pytest's own rendering where there is nothing to mask
            report.longrepr = masked
    report.sections = [(title, redact(content)) for title, content in report.sections]


def _judge_report(
    run: Run, item: pytest.Item, call: pytest.CallInfo[None], report: pytest.TestReport
) -> None:
    """Record a scenario's outcome in ``run`` (an inconclusive one becomes a skip)."""
    from harness.errors import ConfigError, IsolationViolation, UsageError
    from harness.scenario import Inconclusive, NotApplicable
    from harness.types import ScenarioId

    if item.nodeid not in run.scenarios:
        return
    result = run.scenarios[ScenarioId(item.nodeid)]
    if call.when == "call":
        result.duration_s = call.duration
        if call.excinfo is not None and call.excinfo.errisinstance(Inconclusive):
            report.outcome = "skipped"
            report.longrepr = (str(item.path), item.location[1] or 0, str(call.excinfo.value))
            result.outcome = "inconclusive"
        elif call.excinfo is not None and call.excinfo.errisinstance(NotApplicable):
            # The target's protocol cannot do what the scenario needs: a skip
            # that says why, neither a failure nor a missing condition.
            report.outcome = "skipped"
            report.longrepr = (str(item.path), item.location[1] or 0, str(call.excinfo.value))
            result.outcome = "skipped"
            result.notes.append(str(call.excinfo.value))
        elif report.passed:
            result.outcome = "passed"
        elif call.excinfo is not None and call.excinfo.errisinstance(IsolationViolation):
            result.outcome = "failed"
        else:
            result.outcome = "error"
            if call.excinfo is not None:
                run.error("scenario_error", f"{item.nodeid}: {call.excinfo.exconly()[:300]}")
            if call.excinfo is not None and call.excinfo.errisinstance((ConfigError, UsageError)):
                # Misuse is one line naming the fix, never a traceback (whose frames
                # could show a token).
                report.longrepr = f"isoharness: {call.excinfo.value}"
    elif report.failed:
        result.outcome = "error"
        run.error("scenario_error", f"{item.nodeid} ({call.when}): {report.longreprtext[-300:]}")


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
    plugin = session.config.stash[PLUGIN_KEY]
    _CURRENT[:] = [plugin]
    if session.config.pluginmanager.hasplugin("dsession") and plugin.in_play():
        # Before xdist starts its workers (its pytest_sessionstart is trylast):
        # they need the target, the run key and the seed from here.
        plugin.start_controller()


@pytest.hookimpl(tryfirst=True)
def pytest_cmdline_main(config: pytest.Config) -> None:
    """Under pytest-xdist every worker runs every scenario with its share of the users."""
    option = config.option
    distributing = getattr(option, "numprocesses", None) or getattr(option, "tx", None)
    if not distributing or hasattr(config, "workerinput"):
        return
    if not HarnessPlugin(config).in_play():
        return
    if option.dist not in ("no", "each") or getattr(option, "distload", False):
        raise pytest.UsageError(
            f"--dist {'load' if option.distload else option.dist} is incompatible with "
            "isoharness: every worker runs every scenario with its share of the users; "
            "use --dist each or leave --dist out"
        )
    option.dist = "each"


@pytest.hookimpl(optionalhook=True)
def pytest_configure_node(node: Any) -> None:
    """xdist, at the controller: hand each worker the run it joins."""
    plugin = node.config.stash.get(PLUGIN_KEY, None)
    if plugin is None or plugin.session is None or plugin.session.run is None:
        return
    node.workerinput[XDIST_KEY] = plugin.worker_input(
        str(node.workerinput["workerid"]), int(node.workerinput["workercount"])
    )


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node: Any, error: object) -> None:
    """xdist, at the controller: a worker is done; keep its summary for the merge."""
    plugin = node.config.stash.get(PLUGIN_KEY, None)
    if plugin is None or plugin.session is None or plugin.session.workers is None:
        return
    import orjson

    worker = str(node.gateway.id)
    output = (getattr(node, "workeroutput", None) or {}).get(XDIST_KEY)
    if output is None:
        if worker not in plugin.session.workers.lost:
            plugin.session.workers.lost.append(worker)
    elif output["summary"] is not None:
        plugin.session.workers.finished(worker, orjson.loads(output["summary"]), output["users"])
    elif output.get("failure"):
        plugin.session.workers.failed[worker] = output["failure"]
    from harness.types import Verdict

    plugin.session.write_summary(Verdict.INTERRUPTED, final=False)


def _plugin_of_running_session() -> HarnessPlugin | None:
    return _CURRENT[0] if _CURRENT else None


def pytest_keyboard_interrupt(excinfo: pytest.ExceptionInfo[BaseException]) -> None:
    plugin = _plugin_of_running_session()
    if plugin is not None and not excinfo.errisinstance(pytest.exit.Exception):
        plugin.interrupted = True


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    plugin = session.config.stash.get(PLUGIN_KEY, None)
    workeroutput = getattr(session.config, "workeroutput", None)
    if workeroutput is not None:
        # No scenario ran here, or the worker could not join the run.
        failure = None if plugin is None else plugin._worker_failure
        workeroutput[XDIST_KEY] = {
            "summary": None,
            "users": [],
            "failure": None if failure is None else str(failure),
        }
    if plugin is None or plugin.session is None or plugin.session.run is None:
        return
    from harness.run import EXIT_CODES

    # pytest's INTERRUPTED is 2, the code of a configuration error too.
    interrupted = plugin.interrupted or (
        exitstatus == pytest.ExitCode.INTERRUPTED and plugin.stopped is None
    )
    verdict, path = plugin.session.finish(interrupted=interrupted)
    plugin.summary_path = path
    plugin.verdict = str(verdict)
    if workeroutput is not None:
        # A worker: the controller merges this summary into the run's.
        workeroutput[XDIST_KEY] = {
            "summary": path.read_text(),
            "users": [str(user) for user in plugin.session.run.canaries.minted()],
        }
    if exitstatus in (pytest.ExitCode.INTERNAL_ERROR, pytest.ExitCode.USAGE_ERROR):
        return
    session.exitstatus = plugin.stopped if plugin.stopped is not None else EXIT_CODES[verdict]


def pytest_unconfigure(config: pytest.Config) -> None:
    """The controller of a distributed run whose workers never started: stop the embedded
    service and leave a final summary (pytest_sessionfinish did not run)."""
    plugin = config.stash.get(PLUGIN_KEY, None)
    if plugin is None or plugin.session is None or plugin.session.run is None:
        return
    if plugin.summary_path is None and plugin.session.workers is not None:
        _, plugin.summary_path = plugin.session.finish(error="pytest-xdist's workers did not start")


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
