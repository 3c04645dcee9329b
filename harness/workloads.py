"""Workloads: the async drivers that create the conditions isolation bugs need.

Each workload takes an :class:`Env` (the run, the scenario, the adapter)
and simulated users, does what real users do — at the same moment, with the
same ids, dropping connections mid-run, reading each other's ids — and
counts the conditions it created. Every loop is bounded in count and time.
Oracles judge the records as they arrive; workloads only drive.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any
from urllib.parse import quote, urlsplit, urlunsplit

from harness.adapters import Adapter
from harness.aep import BAD_FRAME_KINDS, bad_frame
from harness.canary import CANARY_RE
from harness.coverage import count_during, count_overlapping, shared_identifiers
from harness.credentials import Credentials
from harness.errors import AuthRefused, TargetError, UsageError
from harness.faultproxy import FaultProxy
from harness.gcpolicy import fewer_collections
from harness.oracles.shared_state import CrossProbe
from harness.recording import HttpExchange, OutsideWrite
from harness.run import Run
from harness.transport.base import ChannelClosed, HttpClient, OutsideAttempt
from harness.types import ConnectionId, ScenarioId, UserKey
from harness.users import PendingRun, SimUser, UserConnection, make_identity

HTTP_STATE = "http_state"
"""The adapter capability the state API workloads need (AEP/1 §2)."""
BAD_FRAMES = "bad_frames"
"""The adapter capability the bad-frame workloads need: the target answers an AEP/1 frame
it must refuse with an error frame and keeps the connection open (AEP/1 §3)."""
SETTLE_S = 0.3
"""Pause after the last run ends, before closing, so late duplicates are seen."""
REPLY_POLL_S = 0.05
"""How often :func:`finish` looks again when only replies to bad frames are still due."""
BAD_FRAME_AFTER_S = 0.5
"""In :func:`chat`, the longest a bad frame waits for the first event of its user's first run."""
ABANDON_AFTER_S = 2.0
"""Once the run has a violation, unfinished runs are waited for this long, not the full
lifecycle timeout: the verdict is already ``fail``, and a service that loses or misroutes
events would otherwise make every later scenario wait out the timeout."""


@dataclass(slots=True)
class Env:
    """Everything a workload needs; made per scenario call inside its event loop.

    Attributes:
        adapter: opens users' connections and speaks the target's protocol.
        http: the HTTP client of the state API (used only when the adapter
            has ``"http_state"``).
        reroute: the same adapter with its connections sent to another
            ``host:port`` (a fault proxy); ``None`` when it cannot be rerouted.
    """

    run: Run
    scenario: ScenarioId
    adapter: Adapter
    http: HttpClient
    credentials: Credentials
    base_url: str
    ws_url: str
    reroute: Callable[[str], Adapter] | None = None
    #: Connections go through a fault proxy the harness drives: drops are injected.
    injected_faults: bool = False
    connect_limit: asyncio.Semaphore = field(default_factory=lambda: asyncio.Semaphore(200))

    def cover(self, condition: str, count: int = 1) -> None:
        if count > 0:
            self.run.cover(self.scenario, condition, count)


async def make_users(env: Env, keys: Sequence[UserKey]) -> list[SimUser]:
    """Simulated users for ``keys``, with tokens and canaries."""
    users = []
    for key in keys:
        identity = make_identity(key, seed=env.run.seed)
        token = await env.credentials.token_for(key)
        rng = random.Random(f"{env.run.seed}:{env.scenario}:{key}")
        users.append(
            SimUser(identity, token=token, canary=env.run.canaries.canary_for(key), rng=rng)
        )
    return users


async def connect(
    env: Env, user: SimUser, *, reconnect: bool = False, attempts: int = 3
) -> UserConnection | None:
    """Open a connection for ``user``, retrying with jittered backoff.

    A refused or failed handshake is a target fault: it is counted in the
    run's errors and ``None`` is returned; the workload goes on without it.
    """
    for attempt in range(attempts):
        try:
            async with env.connect_limit:
                channel = await env.adapter.open(user)
        except AuthRefused as exc:
            env.run.error("connect_failed", exc.reason)
            await asyncio.sleep(user.rng.uniform(0.05, 0.2) * 2**attempt)
            continue
        except TargetError as exc:
            if env.injected_faults:
                # The harness's own fault proxy cut the connection while it opened.
                env.run.counts["connects_cut_by_injected_faults"] += 1
            else:
                env.run.error("connect_failed", exc.reason)
            await asyncio.sleep(user.rng.uniform(0.05, 0.2) * 2**attempt)
            continue
        conn = UserConnection(
            user,
            channel,
            connection_id=env.run.next_connection_id(),
            scenario=env.scenario,
            sink=env.run,
            clock=env.run.clock,
            reconnect=reconnect,
            drops_injected=env.injected_faults,
            codec=env.adapter.codec,
        )
        record_outside_attempts(env, conn, getattr(channel, "outside_attempts", ()))
        return conn
    return None


def record_outside_attempts(
    env: Env, conn: UserConnection, attempts: Sequence[OutsideAttempt]
) -> None:
    """Record the writes ``conn``'s channel tried outside its user's places as it opened
    (the run reports each one the target accepted)."""
    clock = env.run.clock
    for attempt in attempts:
        env.run.record(
            OutsideWrite(
                env.scenario,
                conn.user.key,
                conn.id,
                clock.mono(),
                clock.wall(),
                attempt.owner,
                attempt.target,
                attempt.accepted,
                attempt.answer,
            )
        )


async def send(
    env: Env, conn: UserConnection, thread_id: str, *, shared_id: bool = False
) -> PendingRun | None:
    """Send one message; a closed connection is a target fault, not a crash.

    ``shared_id``: the message id every user gives its message of this rank.
    """
    try:
        return await conn.send_message(thread_id, shared_id=shared_id)
    except ChannelClosed as exc:
        env.run.error("send_failed", str(exc))
        return None


async def send_bad_frame(env: Env, conn: UserConnection, thread_id: str) -> float | None:
    """Send a frame the target must refuse (AEP/1 §3), its content the user's canary.

    One of :data:`~harness.aep.BAD_FRAME_KINDS`, chosen by the user's seeded
    random source. Its ``bad_request`` reply is expected (see
    :meth:`~harness.run.Run.expect_rejection`): not a target fault, and no run.
    An error frame that echoes it to another user, or another user's request to
    this one, carries a foreign canary: ``cross_delivery``. Returns when it was
    sent, or ``None`` when the connection was closed.
    """
    if conn.closed is not None:
        return None
    message_id, content = conn.user.next_bad_frame()
    kind = conn.user.rng.choice(BAD_FRAME_KINDS)
    text = bad_frame(kind, message_id=message_id, thread_id=thread_id, content=content)
    at = env.run.clock.mono()
    env.run.expect_rejection(conn.id)
    try:
        await conn.send_frame(text)
    except ChannelClosed as exc:
        env.run.error("send_failed", str(exc))
        return None
    return at


async def finish(
    env: Env, conns: Sequence[UserConnection], *, abrupt: bool = False, waited_s: float = 0.0
) -> None:
    """Wait for every run, and every reply owed to a bad frame, judge them while the
    connections are open, then close.

    A run is judged lost, and a reply missing, only after the full lifecycle
    timeout. Once the run already has a violation, waiting stops after
    :data:`ABANDON_AFTER_S` and unfinished runs are counted as abandoned
    instead of judged. ``waited_s``: how long the caller has already waited for
    these runs.
    """
    loop = asyncio.get_running_loop()
    began = loop.time() - waited_s
    timeout = env.run.lifecycle_timeout_s
    abandoned = False
    due = env.run.rejections_due
    while (running := any(conn.in_flight for conn in conns)) or any(due(c.id) for c in conns):
        waited = loop.time() - began
        limit = ABANDON_AFTER_S if env.run.finding_counts else timeout
        if waited >= limit:
            abandoned = limit < timeout
            break
        if running:
            await asyncio.gather(*(conn.wait_runs(min(0.25, limit - waited)) for conn in conns))
        else:
            await asyncio.sleep(min(REPLY_POLL_S, limit - waited))  # only error replies are due
    await asyncio.sleep(SETTLE_S)
    for conn in conns:
        if conn.closed is None:
            if abandoned:
                env.run.abandon_connection(conn.id)
            else:
                env.run.judge_connection(conn.id)
    await asyncio.gather(*(conn.close(abrupt=abrupt) for conn in conns))


async def first_event(env: Env, run: PendingRun | None, *, within_s: float | None = None) -> None:
    """Wait for the first event of ``run`` (so a disconnect lands mid-run), bounded.

    Bounded by the lifecycle timeout, or by :data:`ABANDON_AFTER_S` once the
    run already has a violation (events may be going to someone else), and by
    ``within_s`` when given.
    """
    if run is None:
        return
    limit = ABANDON_AFTER_S if env.run.finding_counts else env.run.lifecycle_timeout_s
    if within_s is not None:
        limit = min(limit, within_s)
    try:
        await asyncio.wait_for(run.first_event.wait(), limit)
    except TimeoutError:
        return


def _intervals(
    runs: Sequence[tuple[UserKey, PendingRun]], now: float
) -> list[tuple[UserKey, float, float]]:
    return [(user, run.sent_mono, run.ended_mono or now) for user, run in runs]


async def chat(
    env: Env,
    users: Sequence[SimUser],
    *,
    messages: int,
    connections: int,
    thread_of: Callable[[SimUser, int], str],
    jitter_s: float = 0.01,
    shared_ids: bool = False,
    bad_frames: bool = False,
) -> list[tuple[UserKey, PendingRun]]:
    """Every user opens ``connections`` connections and sends ``messages`` at once.

    Messages go out round-robin over a user's connections without waiting
    for earlier runs, so runs overlap within a connection, across a user's
    connections and across users. Counts ``overlapping_runs`` and
    ``shared_identifiers`` (thread ids used by several users).

    ``shared_ids``: every user gives its ``n``-th message the same id
    (``shared-m<n>``); counts ``shared_message_ids``. ``bad_frames``: once the
    first event of its first run has arrived (the target has taken that
    message, and the others' first messages sent with it), every user sends a
    frame the target must refuse (:func:`send_bad_frame`) while the others' runs
    are in flight; counts ``bad_frames_interleaved``.
    """
    opened = await asyncio.gather(
        *(connect(env, user) for user in users for _ in range(connections))
    )
    by_user: dict[UserKey, list[UserConnection]] = {}
    for conn in opened:
        if conn is not None:
            by_user.setdefault(conn.user.key, []).append(conn)
    sent: list[tuple[UserKey, PendingRun]] = []
    threads: list[tuple[UserKey, str]] = []
    refused: list[tuple[UserKey, float]] = []
    refusing: list[asyncio.Task[None]] = []

    async def refuse(conn: UserConnection, run: PendingRun | None, thread: str) -> None:
        # Bounded short: a run whose events go astray must not hold the bad frame back.
        await first_event(env, run, within_s=BAD_FRAME_AFTER_S)
        at = await send_bad_frame(env, conn, thread)
        if at is not None:
            refused.append((conn.user.key, at))

    async def one_user(user: SimUser) -> None:
        conns = by_user.get(user.key, [])
        for n in range(messages if conns else 0):
            # Every user's first message goes out together, so runs overlap
            # across users even where a run lasts one round trip (NATS).
            if n:
                await asyncio.sleep(user.rng.uniform(0, jitter_s))
            thread = thread_of(user, n)
            threads.append((user.key, thread))
            conn = conns[n % len(conns)]
            run = await send(env, conn, thread, shared_id=shared_ids)
            if run is not None:
                sent.append((user.key, run))
            if bad_frames and n == 0:
                refusing.append(asyncio.create_task(refuse(conn, run, thread)))

    await asyncio.gather(*(one_user(user) for user in users))
    await asyncio.gather(*refusing)
    all_conns = [conn for conns in by_user.values() for conn in conns]
    await finish(env, all_conns)
    runs = _intervals(sent, env.run.clock.mono())
    env.cover("overlapping_runs", count_overlapping(runs))
    env.cover("shared_identifiers", shared_identifiers(threads))
    env.cover("bad_frames_interleaved", count_during(refused, runs))
    if shared_ids:
        env.cover("shared_message_ids", shared_identifiers(_message_ids(sent)))
    return sent


def _message_ids(sent: Sequence[tuple[UserKey, PendingRun]]) -> list[tuple[UserKey, str]]:
    return [(user, run.message_id) for user, run in sent]


async def closed_loop(
    env: Env,
    users: Sequence[SimUser],
    *,
    messages: int,
    thread_of: Callable[[SimUser, int], str],
) -> int:
    """Every user, on one connection, sends ``messages`` messages one after another.

    A closed loop, as load tools drive: each user keeps one message in
    flight and sends the next from the end of the previous run's lifecycle
    (the connection's ``on_run_end``, on its read path: no task or wait per
    message). Runs of different users overlap: ``overlapping_runs`` counts
    the runs sent while another user's run was in flight, and
    ``shared_identifiers`` the thread ids several users used. A user stops at a cut run or
    a failed send; when no run has ended for the lifecycle timeout (or
    :data:`ABANDON_AFTER_S` once the run has a violation), every user stops
    and :func:`finish` judges what is still in flight. Returns the number of
    messages sent.
    """
    with fewer_collections():
        return await _closed_loop(env, users, messages=messages, thread_of=thread_of)


async def _closed_loop(
    env: Env,
    users: Sequence[SimUser],
    *,
    messages: int,
    thread_of: Callable[[SimUser, int], str],
) -> int:
    opened = await asyncio.gather(*(connect(env, user) for user in users))
    conns = [conn for conn in opened if conn is not None]
    loop = asyncio.get_running_loop()
    # Done (set) once every user has stopped; also the signal to stop sending.
    all_done: asyncio.Future[None] = loop.create_future()
    current: dict[ConnectionId, PendingRun] = {}
    threads: set[tuple[UserKey, str]] = set()
    sent = overlapping = 0
    # Next messages are sent together once the loop has handled every read that is
    # ready, not one by one between reads: the target gets them in one burst, and
    # the client is woken once per burst of answers (about 10% less CPU per event).
    due: list[tuple[Callable[[PendingRun | None], None], PendingRun | None]] = []

    def send_due() -> None:
        batch = due[:]
        due.clear()
        for send, ended in batch:
            send(ended)

    def drive(conn: UserConnection) -> Callable[[PendingRun | None], None]:
        n = 0
        used: set[str] = set()  # this user's threads, in ``threads`` already

        def on_run_end(ended: PendingRun | None) -> None:
            if not due:
                loop.call_soon(send_due)
            due.append((next_message, ended))

        def next_message(ended: PendingRun | None) -> None:
            nonlocal n, sent, overlapping
            try:
                if n < messages and not all_done.done():
                    if ended is None or ended.outcome == "completed":
                        thread = thread_of(conn.user, n)
                        n += 1
                        if thread not in used:
                            used.add(thread)
                            threads.add((conn.user.key, thread))
                        current[conn.id] = conn.send_message_nowait(thread)
                        sent += 1
                        # One connection per user: another entry is another user's
                        # run in flight, which this one now overlaps.
                        overlapping += len(current) > 1
                        return
            except ChannelClosed as exc:
                env.run.error("send_failed", str(exc))
            except Exception as exc:  # a harness bug: raised by the workload, never swallowed
                if not all_done.done():
                    all_done.set_exception(exc)
            current.pop(conn.id, None)
            conn.on_run_end = None
            if not current and not all_done.done():
                all_done.set_result(None)

        return on_run_end

    for conn in conns:
        conn.on_run_end = start = drive(conn)
        start(None)
    send_due()
    if not current and not all_done.done():
        all_done.set_result(None)
    clock = env.run.clock
    waited = 0.0
    while not all_done.done():
        await asyncio.wait([all_done], timeout=0.25)
        limit = ABANDON_AFTER_S if env.run.finding_counts else env.run.lifecycle_timeout_s
        now = clock.mono()
        waited = now - min((run.sent_mono for run in current.values()), default=now)
        if waited >= limit and not all_done.done():
            all_done.set_result(None)  # a run is lost or abandoned: stop, and judge
    try:
        all_done.result()
    except Exception:
        await asyncio.gather(*(conn.close(abrupt=True) for conn in conns))
        raise
    await finish(env, conns, waited_s=waited)
    env.cover("overlapping_runs", overlapping)
    env.cover("shared_identifiers", shared_identifiers(threads))
    return sent


async def disconnect_and_reconnect(
    env: Env, users: Sequence[SimUser], *, rounds: int, thread_of: Callable[[SimUser, int], str]
) -> None:
    """Users drop their connection while runs are in flight, then reconnect.

    Each round a user connects, sends two messages, waits for the first
    event of the first run and then disconnects (half the time abruptly,
    without a close handshake) while the runs are still going. The last
    round ends normally, on a fresh connection, with runs judged complete.
    Counts ``disconnects_mid_run`` (only disconnects that really landed while
    a run was in flight) and ``reconnects``.
    """
    sent: list[tuple[UserKey, PendingRun]] = []

    async def one_user(user: SimUser) -> None:
        for r in range(rounds + 1):
            conn = await connect(env, user, reconnect=r > 0)
            if conn is None:
                continue
            if r > 0:
                env.cover("reconnects")
            runs = [await send(env, conn, thread_of(user, r)) for _ in range(2)]
            sent.extend((user.key, run) for run in runs if run is not None)
            if r == rounds:
                await finish(env, [conn])
                continue
            await first_event(env, runs[0])
            if conn.in_flight:
                env.cover("disconnects_mid_run")
            await conn.close(abrupt=user.rng.random() < 0.5)
            await asyncio.sleep(user.rng.uniform(0, 0.02))

    await asyncio.gather(*(one_user(user) for user in users))
    env.cover("overlapping_runs", count_overlapping(_intervals(sent, env.run.clock.mono())))


async def churn(
    env: Env,
    users: Sequence[SimUser],
    *,
    duration_s: float,
    rate: float,
    max_sessions: int,
    cut_probability: float = 0.3,
    thread_of: Callable[[SimUser, int], str],
    bad_frames: float = 0.0,
) -> int:
    """Sessions start at ``rate`` per second for ``duration_s`` (at most ``max_sessions``).

    A session is one user connecting, sending one to three messages and
    either waiting for them or, with ``cut_probability``, leaving mid-run.
    With probability ``bad_frames`` a session first sends a frame the target
    must refuse (:func:`send_bad_frame`), after other sessions' messages and
    before its own; those sent while another user's run was in flight count
    ``bad_frames_interleaved``.
    Returns the number of sessions started.
    """
    rng = random.Random(f"{env.run.seed}:{env.scenario}:churn")
    loop = asyncio.get_running_loop()
    deadline = loop.time() + duration_s
    sessions: list[asyncio.Task[None]] = []
    seen: set[UserKey] = set()
    sent: list[tuple[UserKey, PendingRun]] = []
    refused: list[tuple[UserKey, float]] = []

    async def session(user: SimUser, n: int, reconnect: bool) -> None:
        conn = await connect(env, user, reconnect=reconnect)
        if conn is None:
            return
        if reconnect:
            env.cover("reconnects")
        thread = thread_of(user, n)
        if bad_frames and user.rng.random() < bad_frames:
            at = await send_bad_frame(env, conn, thread)
            if at is not None:
                refused.append((user.key, at))
        runs = [await send(env, conn, thread) for _ in range(user.rng.randint(1, 3))]
        sent.extend((user.key, run) for run in runs if run is not None)
        if runs[0] is not None and user.rng.random() < cut_probability:
            await first_event(env, runs[0])
            if conn.in_flight:
                env.cover("disconnects_mid_run")
            await conn.close(abrupt=user.rng.random() < 0.5)
        else:
            await finish(env, [conn])

    n = 0
    while loop.time() < deadline and n < max_sessions:
        user = rng.choice(users)
        sessions.append(asyncio.create_task(session(user, n, user.key in seen)))
        seen.add(user.key)
        n += 1
        await asyncio.sleep(rng.expovariate(rate))
    await asyncio.gather(*sessions)
    runs = _intervals(sent, env.run.clock.mono())
    env.cover("overlapping_runs", count_overlapping(runs))
    env.cover("bad_frames_interleaved", count_during(refused, runs))
    return n


# -- HTTP ------------------------------------------------------------------------------------


async def http(
    env: Env,
    user: SimUser,
    method: str,
    path: str,
    *,
    body: Any = None,
    purpose: str = "",
    timeout_s: float = 10.0,
    record: bool = True,
) -> HttpExchange | None:
    """One API call as ``user``; recorded (and checked for foreign canaries)."""
    clock = env.run.clock
    start, wall = clock.mono(), clock.wall()
    try:
        resp = await env.http.request(
            method, env.base_url + path, token=user.token, json_body=body, timeout_s=timeout_s
        )
    except TargetError as exc:
        env.run.error("http_failed", f"{method} {path_shape(path)}: {exc.reason}")
        return None
    ex = HttpExchange(
        env.scenario,
        user.key,
        method,
        path,
        resp.status,
        resp.text,
        start,
        clock.mono(),
        wall,
        purpose,
    )
    if record:
        env.run.record(ex)
    return ex


def path_shape(path: str) -> str:
    """``path`` with user-specific ids replaced, so errors group by endpoint."""
    return CANARY_RE.sub("<id>", path)


def state_path(key: str) -> str:
    return "/api/state/" + quote(key, safe="")


def thread_path(thread_id: str) -> str:
    return "/api/threads/" + quote(thread_id, safe="")


async def write_state(
    env: Env, users: Sequence[SimUser], key: str | Callable[[SimUser], str]
) -> None:
    """Every user stores a canary-carrying value under ``key`` (one key for all, or per user)."""

    async def put(user: SimUser) -> None:
        name = key(user) if callable(key) else key
        value = {"owner": user.canary, "note": f"{user.identity.name} ({user.identity.email})"}
        await http(env, user, "PUT", state_path(name), body={"value": value}, purpose="write")

    await asyncio.gather(*(put(user) for user in users))
    if not callable(key) and len(users) > 1:
        env.cover("shared_identifiers")


async def concurrent_reads(env: Env, users: Sequence[SimUser], path: str, *, bursts: int) -> None:
    """All users read ``path`` at the same moment, ``bursts`` times.

    Counts ``same_path_concurrent_reads``: reads whose time on the wire
    overlapped a read of the same path by another user.
    """
    for _ in range(bursts):
        start = asyncio.Event()

        async def read(user: SimUser, start: asyncio.Event) -> HttpExchange | None:
            await start.wait()
            return await http(env, user, "GET", path, purpose="read")

        tasks = [asyncio.create_task(read(user, start)) for user in users]
        await asyncio.sleep(0)
        start.set()
        results = await asyncio.gather(*tasks)
        spans = [(ex.user, ex.mono_start, ex.mono_end) for ex in results if ex is not None]
        env.cover("same_path_concurrent_reads", count_overlapping(spans))


async def aborted_requests(env: Env, users: Sequence[SimUser], path: str, *, rounds: int) -> None:
    """Users give up on reads once they are on the wire, while other users read the same path.

    This is the disconnect-mid-request of the 2023 redis-py leak: a service
    that shares a backend pipe and does not clean it up when a request is
    cancelled hands the stale answer to the next user. Counts
    ``requests_cancelled_mid_flight`` only for requests really sent and
    cancelled before their answer.
    """
    for _ in range(rounds):

        async def impatient(user: SimUser) -> None:
            if await env.http.abandon("GET", env.base_url + path, token=user.token):
                env.cover("requests_cancelled_mid_flight")

        async def patient(user: SimUser) -> None:
            await asyncio.sleep(user.rng.uniform(0, 0.01))
            await http(env, user, "GET", path, purpose="read")

        half = len(users) // 2
        await asyncio.gather(
            *(impatient(u) for u in users[:half]), *(patient(u) for u in users[half:])
        )
        await asyncio.gather(*(patient(u) for u in users))


async def cross_user_probes(env: Env, users: Sequence[SimUser], *, per_user: int) -> None:
    """Each user tries to read other users' private resources with its own token.

    Owners first create a private state key and a private thread (by sending
    a message in it). Every probe is bracketed by positive controls: the
    owner reads its resource before and after, and the prober reads its own
    resource, so a refusal only counts as isolation when both sessions were
    valid and the object demonstrably existed.
    """
    await write_state(env, users, lambda u: u.private_id("private"))
    await chat(env, users, messages=1, connections=1, thread_of=lambda u, _: u.private_id("thread"))
    rng = random.Random(f"{env.run.seed}:{env.scenario}:probes")
    probes: list[Awaitable[None]] = []
    for prober in users:
        others = [u for u in users if u.key != prober.key]
        for owner in rng.sample(others, min(per_user, len(others))):
            for path in (
                state_path(owner.private_id("private")),
                thread_path(owner.private_id("thread")),
            ):
                probes.append(_probe(env, prober, owner, path))
    await asyncio.gather(*probes)


async def _probe(env: Env, prober: SimUser, owner: SimUser, path: str) -> None:
    before = await http(env, owner, "GET", path, purpose="owner_control")
    probe = await http(env, prober, "GET", path, purpose="cross_read")
    after = await http(env, owner, "GET", path, purpose="owner_control")
    control = await http(
        env, prober, "GET", state_path(prober.private_id("private")), purpose="prober_control"
    )
    if probe is None:
        return
    env.run.judge_probe(
        CrossProbe(env.scenario, prober.key, owner.key, owner.canary, before, probe, after, control)
    )


async def list_threads(env: Env, users: Sequence[SimUser]) -> None:
    """Every user lists its threads (a foreign canary there is shared state)."""
    await asyncio.gather(
        *(http(env, user, "GET", "/api/threads", purpose="read") for user in users)
    )


async def delete_and_reread(env: Env, users: Sequence[SimUser], key: str) -> None:
    """Every user at once deletes its value of ``key``, reads it, writes it again, reads
    it again and lists its threads.

    AEP/1 §2: after a delete the owner reads ``404``, and no user ever reads another
    user's value under the same key (any foreign canary in an answer is
    ``shared_state``). Exercises the delete and re-create paths (tombstones, undo
    buffers, caches invalidated by key) and the thread listing while other users
    do the same. Counts ``reads_after_delete`` (when several users share ``key``).
    """

    async def one(user: SimUser) -> None:
        path = state_path(key)
        if await http(env, user, "DELETE", path, purpose="delete") is None:
            return
        if await http(env, user, "GET", path, purpose="read") is not None and len(users) > 1:
            env.cover("reads_after_delete")
        value = {"owner": user.canary, "note": f"draft of {user.identity.name}"}
        await http(env, user, "PUT", path, body={"value": value}, purpose="write")
        await http(env, user, "GET", path, purpose="read")
        await http(env, user, "GET", "/api/threads", purpose="read")

    await asyncio.gather(*(one(user) for user in users))


async def mixed_load(
    env: Env,
    users: Sequence[SimUser],
    *,
    duration_s: float,
    rate: float,
    key: str,
    bad_frames: float = 0.0,
) -> None:
    """Churn, simultaneous reads of one path, deletes and cross-user probes, all at once.

    The sustained load of a real service: sessions come and go while other
    users read shared paths, delete and re-create their state under one key
    (``<key>-draft``, :func:`delete_and_reread`), list their threads and try
    each other's ids. ``bad_frames``: the probability that a session also sends
    a frame the target must refuse (see :func:`churn`). Without the adapter's
    ``"http_state"`` the load is the churn alone.
    """

    async def sessions() -> None:
        await churn(
            env,
            users,
            duration_s=duration_s,
            rate=rate,
            max_sessions=int(duration_s * rate) + 1,
            thread_of=lambda u, n: "main" if n % 2 else u.private_id("t"),
            bad_frames=bad_frames,
        )

    if HTTP_STATE not in env.adapter.capabilities:
        await sessions()
        return
    await write_state(env, users, key)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + duration_s

    async def readers() -> None:
        while loop.time() < deadline:
            await concurrent_reads(env, users, state_path(key), bursts=1)
            await asyncio.sleep(0.2)

    async def rewriters() -> None:
        while loop.time() < deadline:
            await delete_and_reread(env, users, f"{key}-draft")
            await asyncio.sleep(0.4)

    await asyncio.gather(
        sessions(), readers(), rewriters(), cross_user_probes(env, users, per_user=1)
    )


async def reconnect_storm(
    env: Env,
    users: Sequence[SimUser],
    *,
    duration_s: float,
    rate: float,
    reset_every_s: float,
) -> int:
    """Session churn through a fault proxy that resets every connection periodically.

    A proxy that cuts connections (a deploy, an idle timeout, a flaky load
    balancer) makes every user reconnect at once: the moment registries mix up
    whose socket is whose. Resets are target-side faults: they are counted in
    the run's errors, never as violations, and runs they cut are not lost.
    Returns the number of resets.
    """
    if env.reroute is None:
        raise UsageError("reconnect_storm needs an Env whose adapter can be rerouted (Env.reroute)")
    parts = urlsplit(env.base_url)
    proxy = FaultProxy(parts.hostname or "127.0.0.1", parts.port or 80, seed=env.run.seed)
    await proxy.start()
    netloc = f"127.0.0.1:{proxy.port}"
    via = replace(
        env,
        adapter=env.reroute(netloc),
        base_url=urlunsplit((parts.scheme, netloc, parts.path, "", "")),
        ws_url=_with_netloc(env.ws_url, netloc),
        injected_faults=True,
    )
    resets = 0

    async def resetter() -> None:
        nonlocal resets
        loop = asyncio.get_running_loop()
        deadline = loop.time() + duration_s
        while loop.time() + reset_every_s < deadline:
            await asyncio.sleep(reset_every_s)
            if await proxy.reset_all():
                resets += 1

    try:
        await asyncio.gather(
            churn(
                via,
                users,
                duration_s=duration_s,
                rate=rate,
                max_sessions=int(duration_s * rate) + 1,
                cut_probability=0.0,
                thread_of=lambda u, n: "main" if n % 2 else u.private_id("t"),
            ),
            resetter(),
        )
    finally:
        await via.adapter.aclose()
        await proxy.aclose()
    return resets


def _with_netloc(url: str, netloc: str) -> str:
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))
