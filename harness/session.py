"""A harness session: from settings to a usable target, a run, and a report folder.

Shared by the pytest plugin and the soak loop, so both build the same run,
write the same ``summary.json`` and stop the embedded service the same way.
"""

from __future__ import annotations

import asyncio
import os
import random
import secrets
import time
from collections.abc import Callable
from contextlib import suppress
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import orjson

from harness.adapters import JsonMemoryProbe
from harness.adapters.registry import adapter_context, adapter_factory, build_adapter
from harness.credentials import (
    Credentials,
    HookCredentials,
    JwtCredentials,
    require_jwt_secret,
    static_credentials,
)
from harness.distributed import Shard, Workers
from harness.embedded import EmbeddedService
from harness.errors import ConfigError, HarnessError, TargetError
from harness.monitor import MEMORY, SESSIONS, Monitor, ProbePlan, gauge_idle_values
from harness.preflight import preflight
from harness.resources import (
    NOT_JUDGED_DISTRIBUTED,
    decision_json,
    gauge_findings,
    memory_decision,
    memory_finding,
    memory_not_judged,
)
from harness.run import Run, Target
from harness.safety import Redactor, check_target_allowed
from harness.scenario import Scenario, Sizes, Wiring
from harness.settings import Settings
from harness.transport.base import make_ssl_context
from harness.transport.http import AiohttpClient
from harness.types import ScenarioId, TenantId, UserId, UserKey, Verdict
from harness.users import SimUser, make_identity

RUN_END = ScenarioId("isoharness::end_of_run")
"""The scenario id of findings judged after every scenario (gauges, memory)."""


def _clock(seconds: float) -> str:
    whole = int(seconds)
    return f"{whole // 3600:02d}:{whole % 3600 // 60:02d}:{whole % 60:02d}"


def new_run_id() -> str:
    """``20261124T153000Z-ab12cd``: sortable, unique enough for a report folder."""
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    return f"{stamp}-{secrets.token_hex(3)}"


def split_target(url: str) -> tuple[str, str]:
    """``(http base URL, ws URL of /ws)`` from a target URL given as http(s) or ws(s)."""
    parts = urlsplit(url)
    scheme = {"http": "http", "ws": "http", "https": "https", "wss": "https"}[parts.scheme]
    prefix = parts.path.rstrip("/")
    if prefix.endswith("/ws"):
        prefix = prefix[: -len("/ws")]
    base = urlunsplit((scheme, parts.netloc, prefix, "", ""))
    ws = urlunsplit(("ws" if scheme == "http" else "wss", parts.netloc, prefix + "/ws", "", ""))
    return base, ws


def make_report_dir(path: Path, source: str) -> None:
    """Make the report folder ``path`` (and its parents) if it is not there.

    Raises:
        ConfigError: it cannot be made (a file is in the way, no permission), exit 2.
    """
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise _unmakeable(path, source, exc.strerror or str(exc)) from None


def check_report_dir(path: Path, source: str) -> None:
    """Check that the report folder ``path`` could be made, without making it.

    Raises:
        ConfigError: as :func:`make_report_dir` would.
    """
    existing = path.absolute()
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if existing == path.absolute() and existing.is_dir():
        return
    if not existing.is_dir():
        raise _unmakeable(
            path, source, "Not a directory" if existing != path.absolute() else "File exists"
        )
    if not os.access(existing, os.W_OK | os.X_OK):
        raise _unmakeable(path, source, "Permission denied")


def _unmakeable(path: Path, source: str, why: str) -> ConfigError:
    return ConfigError("report_dir", str(path), source, f"a folder that can be made ({why})")


class Session:
    """Everything one run needs, built from :class:`~harness.settings.Settings`.

    Args:
        settings: the resolved settings.
        cwd: where ``reports/`` is made when no report folder is given.
        command: the command line, for the report (secrets redacted).
    """

    def __init__(self, settings: Settings, *, cwd: Path, command: str = "") -> None:
        self.settings = settings
        self.command = command
        self.seed = settings.seed if settings.seed is not None else secrets.randbelow(2**31)
        self.run_id = new_run_id()
        self.report_dir = (
            settings.report_dir if settings.report_dir else cwd / "reports" / self.run_id
        )
        secret_values = [s for s in (settings.jwt_secret,) if s]
        self.redactor = Redactor(secret_values)
        self.embedded: EmbeddedService | None = None
        self.monitor: Monitor | None = None
        self.resources_judged = False
        #: Where progress lines go (the plugin writes them past pytest's capture).
        self.on_progress: Callable[[str], None] = print
        self.run: Run | None = None
        self.wiring: Wiring | None = None
        self.sizes = Sizes(
            users=settings.users,
            tenants=settings.tenants,
            connections_per_user=settings.connections_per_user,
            messages_per_user=settings.messages_per_user,
            duration_s=settings.duration,
            rate=settings.rate,
        )
        self.target_unusable = False
        #: The secret canaries derive from; a distributed run's workers share the controller's.
        self.run_key = secrets.token_bytes(32)
        #: Which of a scenario's users this process drives (a pytest-xdist worker: its share).
        self.shard = Shard()
        #: A worker of a distributed run: the controller links ``reports/latest``.
        self.worker = False
        #: The controller of a distributed run: its workers' summaries, merged into its own.
        self.workers: Workers | None = None
        self.extra: dict[str, Any] = {}
        #: The target's own memory figure, when its adapter knows one (NATS ``/varz``).
        self.memory_probe: JsonMemoryProbe | None = None
        #: The gauges judged for ``resource_leak`` (AEP/1's, unless the adapter is another's).
        self.gauges: tuple[str, ...] = settings.gauges

    def start(self) -> Run:
        """Open the run, start the embedded service if no target is set, check the target.

        The run (and a provisional ``summary.json``) exists before anything can
        fail, so even an unusable target leaves a report folder behind.

        Raises:
            ConfigError: a setting is missing or not allowed (exit 2).
            TargetError: the target is unusable (exit 3).
            HarnessError: the embedded service did not start.
        """
        s = self.settings
        secret = s.jwt_secret
        if s.target_url is not None:
            check_target_allowed(s.target_url, s.allowed_targets, source=s.source_of("target_url"))
        make_report_dir(self.report_dir, s.source_of("report_dir"))
        # The embedded service verifies JWTs minted with its own secret (below).
        credentials = self._credentials(secret) if s.target_url is not None else None
        factory = adapter_factory(s)
        self.run = Run(
            target=Target(base_url=s.target_url or "embedded", ws_url=""),
            report_dir=self.report_dir,
            seed=self.seed,
            run_key=self.run_key,
            run_id=self.run_id,
            policy=s.delivery_policy,
            lifecycle_timeout_s=s.lifecycle_timeout,
            redact=self.redactor.redact,
            needs_redaction=self.redactor.needs_redaction,
            events_max_bytes=round(s.events_max_mb * 2**20) or None,
        )
        if not self.worker:
            self._link_latest()
        self.write_summary(Verdict.INTERRUPTED, final=False)
        if s.target_url is None:
            secret = secret or secrets.token_urlsafe(32)
            self.redactor.add(secret)
            credentials = JwtCredentials(secret)
            self.embedded = EmbeddedService(jwt_secret=secret)
            url = self.embedded.start()
        else:
            url = s.target_url
        assert credentials is not None
        base_url, ws_url = split_target(url)
        tls = None
        if base_url.startswith("https"):
            tls = make_ssl_context(ca_bundle=s.ca_bundle, insecure=s.insecure)
        context = adapter_context(s, base_url=base_url, ws_url=ws_url, ssl_context=tls)
        adapter = build_adapter(factory, context, name=s.adapter)
        self.run.use_codec(adapter.codec)
        self.memory_probe = adapter.memory_probe()
        if "http_state" not in adapter.capabilities and s.source_of("gauges") == "default":
            self.gauges = ()  # the default gauges are AEP/1's (§5)
        self.wiring = Wiring(
            context=context,
            adapter=factory,
            http=lambda: AiohttpClient(ssl_context=tls),
            credentials=credentials,
        )
        self.run.target = Target(
            base_url=base_url,
            ws_url=ws_url,
            embedded=self.embedded is not None,
            pid=self.embedded.pid if self.embedded else None,
            adapter=adapter.name,
        )
        if self.worker:
            # The controller checked the target before any worker started and samples
            # it; a check from here would run while other workers' scenarios do.
            return self.run
        try:
            asyncio.run(self._preflight(credentials))
        except TargetError:
            self.target_unusable = True
            raise
        # After the preflight: the first sample is the gauges' idle baseline.
        self._start_monitor(base_url)
        return self.run

    def _start_monitor(self, base_url: str) -> None:
        s, run = self.settings, self.run
        assert run is not None
        source = s.memory_source
        json_url, json_path = s.json_probe_url, s.json_probe_path
        json_gauges: tuple[tuple[str, str], ...] = ()
        if source == "auto" and self.embedded is None and self.memory_probe is not None:
            source, json_url, json_path = "json", self.memory_probe.url, self.memory_probe.path
            json_gauges = self.memory_probe.gauges
        elif source == "auto":
            source = "psutil" if self.embedded is not None else "prometheus"
        gauges: tuple[str, ...] = ()
        if source != "none" and (self.gauges or source == "prometheus"):
            gauges = tuple(dict.fromkeys((*self.gauges, s.sessions_metric)))
        plan = ProbePlan(
            source=source,
            pid=self.embedded.pid if self.embedded is not None else None,
            metrics_url=None if source == "none" else base_url + s.metrics_path,
            memory_metric=s.memory_metric,
            gauges=gauges,
            json_url=json_url,
            json_path=json_path,
            json_gauges=json_gauges,
        )
        if json_gauges and s.source_of("gauges") == "default":
            # The adapter's own gauges (NATS /varz connections), judged for resource_leak.
            self.gauges = tuple(name for name, _ in json_gauges)
        self.monitor = Monitor(
            plan,
            report_dir=self.report_dir,
            started_at=run.clock.origin,
            counters=lambda: {
                SESSIONS: run.counts["connections"],
                "messages": run.counts["messages_sent"],
                "events": run.counts["events_received"],
            },
            interval_s=s.sample_interval,
        )
        self.monitor.start()

    def judge_resources(self, scenario: ScenarioId = RUN_END) -> None:
        """``resource_leak`` and ``memory_growth`` over the timeline so far.

        Call when every user has disconnected: samples the gauges (idle points)
        until they are back at their first values or the grace period is over.
        """
        run, monitor, s = self.run, self.monitor, self.settings
        if run is None or monitor is None or self.resources_judged:
            return
        self.resources_judged = True
        quiet = run.clock.mono()
        idle_values = gauge_idle_values(monitor.samples, self.gauges)
        for gauge in self.gauges:
            if gauge not in idle_values and monitor.plan.source != "none":
                run.error("gauge_unreadable", f"{gauge}: no reading; resource_leak not judged")
        deadline = quiet + s.gauge_grace
        while True:
            sample = monitor.sample("quiet", idle=True)
            settled = sample is not None and all(
                sample.values.get(g, float("inf")) <= v for g, v in idle_values.items()
            )
            if settled or run.clock.mono() >= deadline:
                break
            time.sleep(0.25)
        samples = monitor.samples
        run.add_findings(
            gauge_findings(
                samples,
                idle_values=idle_values,
                quiet_since_s=quiet,
                grace_s=s.gauge_grace,
                scenario=scenario,
                seed=self.seed,
            )
        )
        if self.workers is not None:  # a distributed run's controller: no sessions here
            self.extra["memory"] = memory_not_judged(NOT_JUDGED_DISTRIBUTED)
        else:
            decision = memory_decision(
                samples, floor_bytes_per_session=s.memory_floor_bytes_per_session, seed=self.seed
            )
            self.extra["memory"] = decision_json(decision, samples)
            finding = memory_finding(decision, scenario, self.seed)
            if finding is not None:
                run.add_findings([finding])
        if scenario == RUN_END and RUN_END in run.scenarios:
            end = run.scenarios[RUN_END]
            end.outcome = "failed" if end.violations else "passed"

    def _credentials(self, secret: str | None) -> Credentials:
        s = self.settings
        if s.credentials == "static":
            assert s.tokens_file is not None
            static = static_credentials(s)
            self.redactor.add(*static.tokens)
            return static
        if s.credentials == "hook":
            assert s.login_hook is not None
            return HookCredentials(
                s.login_hook, source=s.source_of("login_hook"), aep_claims=s.adapter == "aep"
            )
        return JwtCredentials(require_jwt_secret(secret))

    async def _preflight(self, credentials: Credentials) -> None:
        assert self.wiring is not None
        assert self.run is not None
        fixed = credentials.fixed_users()
        probe_user = fixed[0] if fixed else UserKey(TenantId(f"{self.run.tag}-pre"), UserId("pre"))
        token = await credentials.token_for(probe_user)
        self.redactor.add(token)
        user = SimUser(
            make_identity(probe_user, seed=self.seed),
            token=token,
            canary="preflight",  # sends no canary: nothing of it may leak
            rng=random.Random(self.seed),
        )
        adapter = self.wiring.new_adapter()
        http = self.wiring.http()
        try:
            await preflight(
                adapter=adapter,
                user=user,
                http=http,
                base_url=self.wiring.base_url,
                ws_url=self.wiring.ws_url,
                timeout_s=self.settings.lifecycle_timeout,
            )
        finally:
            try:
                await adapter.aclose()
            finally:
                await http.aclose()

    def scenario(self, nodeid: str) -> Scenario:
        """The ``harness`` object for one scenario instance."""
        assert self.run is not None, "start() the session first"
        assert self.wiring is not None
        return Scenario(
            self.run,
            nodeid,
            sizes=self.sizes,
            wiring=self.wiring,
            observer=self,
            progress_interval_s=self.settings.progress_interval,
            shard=self.shard,
        )

    # -- Observer: what long scenarios report to -------------------------------------------------

    def idle_sample(self, phase: str) -> None:
        if self.monitor is not None:
            self.monitor.sample(phase, idle=True)

    def progress(self, elapsed_s: float, total_s: float) -> None:
        run = self.run
        if run is None:
            return
        memory = ""
        if self.monitor is not None:
            samples = self.monitor.samples
            now = next(
                (x.values.get(MEMORY) for x in reversed(samples) if MEMORY in x.values),
                None,
            )
            if now is not None:
                decision = memory_decision(
                    samples,
                    floor_bytes_per_session=self.settings.memory_floor_bytes_per_session,
                    seed=self.seed,
                )
                slope = decision.slope_bytes_per_session
                trend = (
                    f"{slope:+,.0f} B/session ({decision.status})"
                    if slope == slope
                    else decision.status
                )
                memory = f" · memory {now / 2**20:,.1f} MiB, {trend}"
        sessions = run.counts["connections"]
        events = run.counts["events_received"]
        violations = sum(run.finding_counts.values())
        line = (
            f"isoharness {_clock(elapsed_s)}/{_clock(total_s)} · {sessions:,} sessions"
            f" · {events:,} events · {violations} violations{memory}"
        )
        self.on_progress(line)

    def checkpoint(self) -> None:
        if self.run is not None:
            self.write_summary(Verdict.INTERRUPTED, final=False)

    def _link_latest(self) -> None:
        latest = self.report_dir.parent / "latest"
        with suppress(OSError):
            if latest.is_symlink() or latest.exists():
                latest.unlink()
            latest.symlink_to(self.report_dir.name, target_is_directory=True)

    def summary(self, verdict: Verdict, *, final: bool) -> dict[str, Any]:
        """The summary document, redacted."""
        assert self.run is not None
        doc = self.run.summary(verdict, extra=self.extra)
        doc["final"] = final
        doc["run"] |= {
            "command": self.command,
            "finished_at": time.time() if final else None,
            "settings": self.settings.public_dict(),
            "sizes": {
                "users": self.sizes.users,
                "tenants": self.sizes.tenants,
                "connections_per_user": self.sizes.connections_per_user,
                "messages_per_user": self.sizes.messages_per_user,
                "duration_s": self.sizes.duration_s,
                "rate": self.sizes.rate,
            },
        }
        doc["target"]["faults"] = list(self.embedded.faults) if self.embedded else []
        if self.workers is not None:
            doc = self.workers.merge(doc, interrupted=verdict is Verdict.INTERRUPTED)
        redacted: dict[str, Any] = self.redactor.redact_obj(doc)
        return redacted

    def write_summary(self, verdict: Verdict, *, final: bool) -> Path:
        """Write ``summary.json`` atomically (a killed run leaves the last complete one)."""
        path = self.report_dir / "summary.json"
        tmp = path.with_suffix(".json.tmp")
        tmp.write_bytes(
            orjson.dumps(self.summary(verdict, final=final), option=orjson.OPT_INDENT_2)
        )
        os.replace(tmp, path)
        return path

    def finish(
        self, *, interrupted: bool = False, error: str | None = None
    ) -> tuple[Verdict, Path]:
        """Judge what is left, write the final summary and report, stop the embedded service.

        Args:
            interrupted: the run was stopped by SIGINT/SIGTERM.
            error: why the run could not go on (the target became unusable…).

        Returns:
            The verdict and the path of ``summary.json``.
        """
        try:
            if self.run is None:
                raise HarnessError("the session never started; nothing to report")
            if error is not None:
                self.run.error("target_error", error)
            self.run.finish_lifecycles()
            if not interrupted:
                self.judge_resources()
            self.run.log.flush()
            verdict = self.run.verdict(
                interrupted=interrupted, target_unusable=self.target_unusable or error is not None
            )
            if self.workers is not None:
                verdict = Verdict(self.summary(verdict, final=True)["verdict"])
            path = self.write_summary(verdict, final=True)
            self.render_report()
            return verdict, path
        finally:
            if self.monitor is not None:
                self.monitor.stop()
            if self.run is not None:
                self.run.close()
                events = self.report_dir / "events.jsonl"
                if self.workers is not None and events.exists() and not events.stat().st_size:
                    # The workers recorded everything (gwN/events.jsonl); an empty
                    # file next to the merged summary would read as "nothing seen".
                    events.unlink()
            if self.embedded is not None:
                self.embedded.stop()
                self.embedded = None

    def render_report(self) -> Path | None:
        """Write ``report.html``; a failure to render is reported, never fatal."""
        try:
            from harness.reporting.html import render_report
        except ImportError:  # pragma: no cover - reporting is part of the package
            return None
        try:
            return render_report(self.report_dir)
        except Exception as exc:  # noqa: BLE001 - the summary is the evidence; keep it
            (self.report_dir / "report-error.txt").write_text(f"report.html failed: {exc!r}\n")
            return None
