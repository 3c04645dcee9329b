"""The ``harness`` fixture: what a scenario test calls, in plain synchronous code.

A scenario is an ordinary pytest function. It asks for users, makes them do
something together (:meth:`Scenario.chat`, :meth:`Scenario.disconnect_and_reconnect`
…) and ends with :meth:`Scenario.verify`, which raises
:class:`~harness.errors.IsolationViolation` listing every violation the
oracles saw, or :class:`Inconclusive` when the scenario did not create the
conditions it declared. Each call runs its own event loop, bounded in time.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol, TypeVar

from harness import workloads
from harness.coverage import CONDITIONS, DESCRIPTIONS
from harness.credentials import Credentials
from harness.errors import HarnessError, IsolationViolation, UsageError
from harness.run import Run
from harness.transport.base import Connector, HttpClient
from harness.types import ScenarioId
from harness.users import SimUser, plan_users, scenario_tag
from harness.workloads import Env

T = TypeVar("T")
ThreadIds = Literal["private", "shared"] | str


class Inconclusive(HarnessError):
    """The scenario did not create the conditions it declared; its clean result proves nothing."""

    def __init__(self, scenario: str, missing: Sequence[str]) -> None:
        self.scenario = scenario
        self.missing = tuple(missing)
        super().__init__(scenario, self.missing)

    def __str__(self) -> str:
        what = "; ".join(f"{name} ({DESCRIPTIONS[name]})" for name in self.missing)
        return f"inconclusive: the scenario created no {what}"


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
    """How to reach the target; factories are called inside each event loop."""

    base_url: str
    ws_url: str
    connector: Callable[[], Connector]
    http: Callable[[], HttpClient]
    credentials: Credentials
    token_in_query: bool = False


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
    ) -> None:
        self.run = run
        self._observer = observer
        self._progress_every = progress_interval_s
        self.id = ScenarioId(scenario_id)
        self.sizes = sizes
        self._wiring = wiring
        self._started = time.monotonic()
        self.result = run.scenario(self.id)

    # -- declaring -----------------------------------------------------------------------------

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
        return self._loop(lambda env: workloads.make_users(env, keys))

    # -- doing ---------------------------------------------------------------------------------

    def chat(
        self,
        users: Sequence[SimUser],
        *,
        messages: int | None = None,
        connections: int | None = None,
        thread_ids: ThreadIds = "private",
    ) -> int:
        """Every user sends ``messages`` messages at once over ``connections`` connections.

        ``thread_ids``: ``"private"`` (each user its own threads), ``"shared"``
        (every user uses the same thread ids ``main``, ``t1`` …) or one literal
        thread id for all. Returns the number of messages sent.
        """
        n = self.sizes.messages_per_user if messages is None else messages
        c = self.sizes.connections_per_user if connections is None else connections
        thread_of = _threads(thread_ids)
        sent = self._loop(
            lambda env: workloads.chat(env, users, messages=n, connections=c, thread_of=thread_of)
        )
        return len(sent)

    def disconnect_and_reconnect(
        self, users: Sequence[SimUser], *, rounds: int = 2, thread_ids: ThreadIds = "shared"
    ) -> None:
        """Users drop connections while their runs are in flight, then reconnect."""
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
        self._loop(lambda env: workloads.write_state(env, users, key))

    def read_state_together(self, users: Sequence[SimUser], key: str, *, bursts: int = 4) -> None:
        """All users read state ``key`` at the same moment, ``bursts`` times."""
        path = workloads.state_path(key)
        self._loop(lambda env: workloads.concurrent_reads(env, users, path, bursts=bursts))

    def read_threads_together(
        self, users: Sequence[SimUser], thread_id: str, *, bursts: int = 4
    ) -> None:
        """All users read thread ``thread_id`` at the same moment, ``bursts`` times."""
        path = workloads.thread_path(thread_id)
        self._loop(lambda env: workloads.concurrent_reads(env, users, path, bursts=bursts))

    def abort_requests(self, users: Sequence[SimUser], key: str, *, rounds: int = 4) -> None:
        """Half the users give up on reads of ``key`` mid-request while the rest read it."""
        path = workloads.state_path(key)
        self._loop(lambda env: workloads.aborted_requests(env, users, path, rounds=rounds))

    def probe_other_users(self, users: Sequence[SimUser], *, per_user: int = 2) -> None:
        """Each user tries other users' private state keys and threads with its own token."""
        self._loop(lambda env: workloads.cross_user_probes(env, users, per_user=per_user))

    def mixed_load(
        self, users: Sequence[SimUser], *, duration_s: float | None = None, key: str = "profile"
    ) -> None:
        """Churn, simultaneous same-path reads and cross-user probes together for ``duration_s``."""
        duration = self.sizes.duration_s if duration_s is None else duration_s
        rate = self.sizes.rate
        self._loop(
            lambda env: workloads.mixed_load(env, users, duration_s=duration, rate=rate, key=key),
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
        return asyncio.run(self._with_env(work, limit))

    async def _with_env(self, work: Callable[[Env], Coroutine[Any, Any, T]], limit: float) -> T:
        w = self._wiring
        http = w.http()
        env = Env(
            run=self.run,
            scenario=self.id,
            connector=w.connector(),
            http=http,
            credentials=w.credentials,
            base_url=w.base_url,
            ws_url=w.ws_url,
            token_in_query=w.token_in_query,
        )
        try:
            async with asyncio.timeout(limit):
                return await work(env)
        finally:
            await http.aclose()


def _threads(thread_ids: ThreadIds) -> Callable[[SimUser, int], str]:
    if thread_ids == "private":
        return lambda user, n: user.private_id(f"t{n % 2}")
    if thread_ids == "shared":
        return lambda user, n: "main" if n % 2 == 0 else "t1"
    return lambda user, n: thread_ids
