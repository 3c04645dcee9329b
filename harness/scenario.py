"""The ``harness`` fixture: what a scenario test calls, in plain synchronous code.

A scenario is an ordinary pytest function. It asks for users, makes them do
something together (:meth:`Scenario.chat`, :meth:`Scenario.disconnect_and_reconnect`
…) and ends with :meth:`Scenario.verify`, which raises
:class:`~harness.errors.IsolationViolation` listing every violation the
oracles saw, or :class:`Inconclusive` when the scenario did not create the
conditions it declared. A step the target's protocol cannot do (reading state
through AEP/1's HTTP API, with an adapter that has no ``"http_state"``) raises
:class:`NotApplicable`: the scenario is skipped, not failed and not
inconclusive. Each call runs its own event loop, bounded in time.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass, replace
from typing import Any, Literal, Protocol, TypeVar
from urllib.parse import urlsplit, urlunsplit

from harness import workloads
from harness.adapters import Adapter, AdapterContext, AdapterFactory
from harness.coverage import CONDITIONS, DESCRIPTIONS
from harness.credentials import Credentials
from harness.distributed import Shard
from harness.errors import HarnessError, IsolationViolation, UsageError
from harness.gcpolicy import fewer_collections
from harness.run import Run
from harness.transport.base import HttpClient
from harness.types import ScenarioId
from harness.users import SimUser, plan_users, scenario_tag
from harness.workloads import Env

T = TypeVar("T")
CHURN_CONDITIONS = ("disconnects_mid_run", "overlapping_runs")
"""What session churn creates only while runs are in flight (waived for one-event runs)."""
STATE_CONDITIONS = (
    "same_path_concurrent_reads",
    "cross_user_probes",
    "requests_cancelled_mid_flight",
    "reads_after_delete",
)
"""Conditions only the HTTP state API creates (adapters with ``"http_state"``)."""
BAD_FRAME_CONDITIONS = ("bad_frames_interleaved",)
"""Conditions only bad frames create (adapters with ``"bad_frames"``)."""
MIXED_LOAD_BAD_FRAMES = 0.3
"""The share of the mixed load's sessions that also send a bad frame."""
ThreadIds = Literal["private", "shared"] | str
MessageIds = Literal["private", "shared"]


class Inconclusive(HarnessError):
    """The scenario did not create the conditions it declared; its clean result proves nothing."""

    def __init__(self, scenario: str, missing: Sequence[str]) -> None:
        self.scenario = scenario
        self.missing = tuple(missing)
        super().__init__(scenario, self.missing)

    def __str__(self) -> str:
        what = "; ".join(f"{name} ({DESCRIPTIONS[name]})" for name in self.missing)
        return f"inconclusive: the scenario created no {what}"


class NotApplicable(HarnessError):
    """The scenario needs a capability the target's adapter lacks: it is skipped.

    Attributes:
        scenario: the scenario id.
        adapter: the adapter's name.
        capability: what is missing (one of :data:`~harness.adapters.CAPABILITIES`).
        step: the scenario step that needs it (``write_state`` …).
    """

    def __init__(self, scenario: str, adapter: str, capability: str, step: str) -> None:
        self.scenario = scenario
        self.adapter = adapter
        self.capability = capability
        self.step = step
        super().__init__(scenario, adapter, capability, step)

    def __str__(self) -> str:
        return (
            f"not applicable: {self.step} needs the {self.capability!r} capability, "
            f"which the {self.adapter} adapter does not have"
        )


@dataclass(frozen=True, slots=True)
class Sizes:
    """How big a scenario is; the same scenario serves a CI run and a soak."""

    users: int = 8
    tenants: int = 2
    connections_per_user: int = 2
    messages_per_user: int = 3
    duration_s: float = 5.0
    rate: float = 20.0


class Observer(Protocol):
    """What long scenarios report to (the session): idle samples, progress, checkpoints."""

    def idle_sample(self, phase: str) -> None:
        """Sample the target at an idle point (no connections, no runs in flight)."""

    def progress(self, elapsed_s: float, total_s: float) -> None:
        """Show a progress line (elapsed, sessions, events, violations, memory)."""

    def checkpoint(self) -> None:
        """Rewrite the provisional summary, so a killed run leaves a valid report."""

    def judge_resources(self, scenario: ScenarioId) -> None:
        """Decide ``memory_growth`` and ``resource_leak`` for ``scenario`` now."""


@dataclass(frozen=True, slots=True)
class Wiring:
    """How to reach the target; factories are called inside each event loop.

    Attributes:
        context: the target's URLs and the settings the adapter is built from.
        adapter: builds the adapter (once per event loop, see
            :class:`~harness.adapters.Adapter`).
        http: builds the HTTP client of the state API.
        credentials: the users' tokens.
    """

    context: AdapterContext
    adapter: AdapterFactory
    http: Callable[[], HttpClient]
    credentials: Credentials

    @property
    def base_url(self) -> str:
        return self.context.base_url

    @property
    def ws_url(self) -> str:
        return self.context.ws_url

    def new_adapter(self, *, netloc: str | None = None) -> Adapter:
        """A fresh adapter; with ``netloc`` (``host:port``), one that connects there instead."""
        context = self.context
        if netloc is not None:
            context = replace(
                context,
                base_url=_with_netloc(context.base_url, netloc),
                ws_url=_with_netloc(context.ws_url, netloc),
            )
        return self.adapter(context)


class Scenario:
    """One scenario instance (one pytest item).

    Args:
        run: the run it belongs to.
        scenario_id: its pytest node id.
        sizes: users, tenants, connections, messages, duration, rate.
        wiring: the target and the transports.
    """

    def __init__(
        self,
        run: Run,
        scenario_id: str,
        *,
        sizes: Sizes,
        wiring: Wiring,
        observer: Observer | None = None,
        progress_interval_s: float = 10.0,
        shard: Shard | None = None,
    ) -> None:
        self.run = run
        self._shard = shard or Shard()
        self._observer = observer
        self._progress_every = progress_interval_s
        self.id = ScenarioId(scenario_id)
        self.sizes = sizes
        self._wiring = wiring
        self._adapter: Adapter | None = None
        self._started = time.monotonic()
        self.result = run.scenario(self.id)

    @property
    def adapter(self) -> Adapter:
        """The target's adapter, for its name, codec and capabilities (never opened)."""
        if self._adapter is None:
            self._adapter = self._wiring.new_adapter()
        return self._adapter

    def _require(self, capability: str, step: str) -> None:
        """Raise :class:`NotApplicable` unless the adapter has ``capability``.

        Violations already found win: a scenario that saw a leak before it
        reached a step it cannot do has failed, whatever comes after.
        """
        if capability in self.adapter.capabilities:
            return
        __tracebackhide__ = True
        self.run.sweep()
        findings = self.run.findings_of(self.id)
        if findings:
            raise IsolationViolation(findings)
        raise NotApplicable(self.id, self.adapter.name, capability, step)

    # -- declaring -----------------------------------------------------------------------------

    def _waive(self, names: Sequence[str], why: str) -> None:
        """Stop requiring ``names``: this target's protocol cannot create them (``why``)."""
        waived = [name for name in self.result.declared if name in names]
        if not waived:
            return
        self.result.declared = tuple(n for n in self.result.declared if n not in waived)
        note = f"not required: {', '.join(waived)} ({why})"
        if note not in self.result.notes:
            self.result.notes.append(note)

    def _lacks(self, capability: str) -> str:
        return f"the {self.adapter.name} adapter has no {capability!r}"

    def _can_send_bad_frames(self) -> bool:
        """Whether the adapter has ``"bad_frames"``; if not, stop requiring what they create."""
        if workloads.BAD_FRAMES in self.adapter.capabilities:
            return True
        self._waive(BAD_FRAME_CONDITIONS, self._lacks(workloads.BAD_FRAMES))
        return False

    def _waive_for_instant_runs(self, names: Sequence[str]) -> None:
        """A one-event run ends as it starts: nothing is in flight to cut or to overlap.

        Session churn sends a message or three per session; with one-event runs
        (NATS) those runs last a round trip, so the conditions that need a run
        in flight can only happen by chance and are not required.
        """
        if len(self.adapter.codec.lifecycle.events) == 1:
            self._waive(names, f"a {self.adapter.name} run is one event long")

    def conditions(self, *names: str) -> None:
        """Declare the conditions this scenario must create to prove anything."""
        unknown = [name for name in names if name not in CONDITIONS]
        if unknown:
            raise UsageError(
                f"unknown condition {unknown[0]!r}; use one of: {', '.join(CONDITIONS)}"
            )
        self.result.declared = tuple(dict.fromkeys(self.result.declared + names))

    # -- users ---------------------------------------------------------------------------------

    def users(self, count: int | None = None, *, tenants: int | None = None) -> list[SimUser]:
        """``count`` users over ``tenants`` tenants (defaults: the run's sizes).

        Users of a scenario are its own: ids carry a tag of the scenario id, and
        the same subs recur in every tenant (AEP/1 §1: different users).
        """
        count = self.sizes.users if count is None else count
        tenants = min(self.sizes.tenants if tenants is None else tenants, count)
        fixed = self._wiring.credentials.fixed_users()
        if fixed is not None:
            if len(fixed) < count:
                raise UsageError(
                    f"the tokens file has {len(fixed)} users and this scenario needs {count}; "
                    "add tokens or lower --users"
                )
            keys = fixed[:count]
        else:
            keys = plan_users(
                count=count, tenants=tenants, run_tag=self.run.tag, namespace=scenario_tag(self.id)
            )
        # A distributed run: this worker drives its share; the others drive the rest.
        keys = self._shard.select(keys)
        return self._loop(lambda env: workloads.make_users(env, keys))

    # -- doing ---------------------------------------------------------------------------------

    def chat(
        self,
        users: Sequence[SimUser],
        *,
        messages: int | None = None,
        connections: int | None = None,
        thread_ids: ThreadIds = "private",
        message_ids: MessageIds = "private",
        bad_frames: bool = False,
    ) -> int:
        """Every user sends ``messages`` messages at once over ``connections`` connections.

        ``thread_ids``: ``"private"`` (each user its own threads), ``"shared"``
        (every user uses the same thread ids ``main``, ``t1`` …) or one literal
        thread id for all. ``message_ids``: ``"private"`` (each id carries its
        user's canary) or ``"shared"`` (every user's ``n``-th message is
        ``shared-m<n>``; the content still carries the canary). ``bad_frames``:
        every user also sends a frame the target must refuse, while the others'
        runs are in flight; for an adapter without ``"bad_frames"`` none is sent
        and ``bad_frames_interleaved`` is not required. Returns the number of
        messages sent.
        """
        n = self.sizes.messages_per_user if messages is None else messages
        c = self.sizes.connections_per_user if connections is None else connections
        thread_of = _threads(thread_ids)
        shared_ids = message_ids == "shared"
        refuse = bad_frames and self._can_send_bad_frames()
        sent = self._loop(
            lambda env: workloads.chat(
                env,
                users,
                messages=n,
                connections=c,
                thread_of=thread_of,
                shared_ids=shared_ids,
                bad_frames=refuse,
            )
        )
        return len(sent)

    def closed_loop(
        self,
        users: Sequence[SimUser],
        *,
        messages: int | None = None,
        thread_ids: ThreadIds = "private",
    ) -> int:
        """Every user sends ``messages`` messages one after another on one connection.

        Each user keeps one message in flight and sends the next when the run
        before it completes: a load tool's closed loop, with every frame
        recorded and checked. Returns the number of messages sent.
        """
        n = self.sizes.messages_per_user if messages is None else messages
        thread_of = _threads(thread_ids)
        return self._loop(
            lambda env: workloads.closed_loop(env, users, messages=n, thread_of=thread_of)
        )

    def disconnect_and_reconnect(
        self, users: Sequence[SimUser], *, rounds: int = 2, thread_ids: ThreadIds = "shared"
    ) -> None:
        """Users drop connections while their runs are in flight, then reconnect."""
        self._waive_for_instant_runs(("disconnects_mid_run",))
        self._loop(
            lambda env: workloads.disconnect_and_reconnect(
                env, users, rounds=rounds, thread_of=_threads(thread_ids)
            )
        )

    def churn(
        self,
        users: Sequence[SimUser],
        *,
        duration_s: float | None = None,
        rate: float | None = None,
        max_sessions: int = 100_000,
        thread_ids: ThreadIds = "shared",
    ) -> int:
        """Sessions come and go at ``rate`` per second for ``duration_s``; returns how many."""
        self._waive_for_instant_runs(CHURN_CONDITIONS)
        duration = self.sizes.duration_s if duration_s is None else duration_s
        per_s = self.sizes.rate if rate is None else rate
        return self._loop(
            lambda env: workloads.churn(
                env,
                users,
                duration_s=duration,
                rate=per_s,
                max_sessions=max_sessions,
                thread_of=_threads(thread_ids),
            ),
            budget_s=duration,
        )

    def write_state(self, users: Sequence[SimUser], key: str) -> None:
        """Every user stores its canary under the same state ``key``."""
        self._require(workloads.HTTP_STATE, "write_state")
        self._loop(lambda env: workloads.write_state(env, users, key))

    def read_state_together(self, users: Sequence[SimUser], key: str, *, bursts: int = 4) -> None:
        """All users read state ``key`` at the same moment, ``bursts`` times."""
        self._require(workloads.HTTP_STATE, "read_state_together")
        path = workloads.state_path(key)
        self._loop(lambda env: workloads.concurrent_reads(env, users, path, bursts=bursts))

    def read_threads_together(
        self, users: Sequence[SimUser], thread_id: str, *, bursts: int = 4
    ) -> None:
        """All users read thread ``thread_id`` at the same moment, ``bursts`` times."""
        self._require(workloads.HTTP_STATE, "read_threads_together")
        path = workloads.thread_path(thread_id)
        self._loop(lambda env: workloads.concurrent_reads(env, users, path, bursts=bursts))

    def abort_requests(self, users: Sequence[SimUser], key: str, *, rounds: int = 4) -> None:
        """Half the users give up on reads of ``key`` mid-request while the rest read it."""
        self._require(workloads.HTTP_STATE, "abort_requests")
        path = workloads.state_path(key)
        self._loop(lambda env: workloads.aborted_requests(env, users, path, rounds=rounds))

    def probe_other_users(self, users: Sequence[SimUser], *, per_user: int = 2) -> None:
        """Each user tries other users' private state keys and threads with its own token."""
        self._require(workloads.HTTP_STATE, "probe_other_users")
        self._loop(lambda env: workloads.cross_user_probes(env, users, per_user=per_user))

    def mixed_load(
        self, users: Sequence[SimUser], *, duration_s: float | None = None, key: str = "profile"
    ) -> None:
        """Churn, simultaneous same-path reads, deletes and re-reads of state, thread
        listings and cross-user probes together for ``duration_s``; some sessions also
        send a frame the target must refuse.

        Without the adapter's ``"http_state"`` it is the churn alone, and the
        conditions only the state API creates are not required of the scenario;
        without ``"bad_frames"`` no bad frame is sent.
        """
        self._waive_for_instant_runs(CHURN_CONDITIONS)
        if workloads.HTTP_STATE not in self.adapter.capabilities:
            self._waive(STATE_CONDITIONS, self._lacks(workloads.HTTP_STATE))
        bad_frames = MIXED_LOAD_BAD_FRAMES if self._can_send_bad_frames() else 0.0
        duration = self.sizes.duration_s if duration_s is None else duration_s
        rate = self.sizes.rate
        self._loop(
            lambda env: workloads.mixed_load(
                env, users, duration_s=duration, rate=rate, key=key, bad_frames=bad_frames
            ),
            budget_s=duration,
        )

    def reconnect_storm(
        self,
        users: Sequence[SimUser],
        *,
        duration_s: float | None = None,
        reset_every_s: float = 0.5,
    ) -> int:
        """Churn through a fault proxy that resets every connection every ``reset_every_s``.

        Returns how many times the proxy cut live connections.
        """
        self._waive_for_instant_runs(CHURN_CONDITIONS)
        duration = min(self.sizes.duration_s, 4.0) if duration_s is None else duration_s
        rate = self.sizes.rate
        return self._loop(
            lambda env: workloads.reconnect_storm(
                env, users, duration_s=duration, rate=rate, reset_every_s=reset_every_s
            ),
            budget_s=duration,
        )

    def soak(
        self,
        users: Sequence[SimUser],
        *,
        duration_s: float | None = None,
        cycle_s: float | None = None,
        key: str = "profile",
    ) -> int:
        """Cycles of mixed load until ``duration_s``, sampling the target between cycles.

        Each cycle is :meth:`mixed_load` for ``cycle_s`` seconds (default: a
        twentieth of the duration, between 2 and 30 s), after which every user
        has left and every run has ended: an idle point where the target's
        memory and gauges are sampled for the ``memory_growth`` decision. A
        progress line is shown every ``progress_interval`` seconds and the
        summary is rewritten every minute. Returns the number of cycles.
        """
        duration = self.sizes.duration_s if duration_s is None else duration_s
        cycle = cycle_s if cycle_s is not None else min(30.0, max(2.0, duration / 20))
        began = time.monotonic()
        last_progress = last_checkpoint = began
        cycles = 0
        if self._observer is not None:
            self._observer.idle_sample("soak start")
        while (elapsed := time.monotonic() - began) < duration:
            length = min(cycle, duration - elapsed)
            self.mixed_load(users, duration_s=max(length, 0.5), key=key)
            cycles += 1
            self.run.sweep()
            if self._observer is None:
                continue
            self._observer.idle_sample(f"cycle {cycles}")
            now = time.monotonic()
            if now - last_progress >= self._progress_every:
                self._observer.progress(now - began, duration)
                last_progress = now
            if now - last_checkpoint >= 60:
                self._observer.checkpoint()
                last_checkpoint = now
        if self._observer is not None:
            self._observer.progress(time.monotonic() - began, duration)
        return cycles

    def verify_resources(self) -> None:
        """Decide ``memory_growth`` and ``resource_leak`` now, as findings of this scenario.

        Call after the last user has left (for example after :meth:`soak`);
        :meth:`verify` then reports them with the other findings.
        """
        if self._observer is None:
            raise UsageError("verify_resources needs a session that samples the target")
        self._observer.judge_resources(self.id)

    def list_threads(self, users: Sequence[SimUser]) -> None:
        """Every user lists its threads."""
        self._require(workloads.HTTP_STATE, "list_threads")
        self._loop(lambda env: workloads.list_threads(env, users))

    # -- judging -------------------------------------------------------------------------------

    def verify(self) -> None:
        """Raise if the oracles found violations, or if declared conditions were never created.

        Raises:
            IsolationViolation: with every finding of this scenario.
            Inconclusive: no violation, but a declared condition has a zero count.
        """
        __tracebackhide__ = True
        self.run.sweep()
        findings = self.run.findings_of(self.id)
        if findings:
            raise IsolationViolation(findings)
        missing = self.result.missing
        if missing:
            raise Inconclusive(self.id, missing)

    # -- plumbing ------------------------------------------------------------------------------

    def _loop(self, work: Callable[[Env], Coroutine[Any, Any, T]], *, budget_s: float = 0.0) -> T:
        limit = budget_s + 3 * self.run.lifecycle_timeout_s + 30
        with fewer_collections():
            return asyncio.run(self._with_env(work, limit))

    async def _with_env(self, work: Callable[[Env], Coroutine[Any, Any, T]], limit: float) -> T:
        w = self._wiring
        adapter = w.new_adapter()
        http = w.http()
        env = Env(
            run=self.run,
            scenario=self.id,
            adapter=adapter,
            http=http,
            credentials=w.credentials,
            base_url=w.base_url,
            ws_url=w.ws_url,
            reroute=lambda netloc: w.new_adapter(netloc=netloc),
        )
        try:
            async with asyncio.timeout(limit):
                return await work(env)
        finally:
            try:
                await adapter.aclose()
            finally:
                await http.aclose()


def _with_netloc(url: str, netloc: str) -> str:
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


def _threads(thread_ids: ThreadIds) -> Callable[[SimUser, int], str]:
    if thread_ids == "private":
        return lambda user, n: user.private_id(f"t{n % 2}")
    if thread_ids == "shared":
        return lambda user, n: "main" if n % 2 == 0 else "t1"
    return lambda user, n: thread_ids
