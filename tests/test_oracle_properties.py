"""Properties of the streaming oracles, over frames and schedules Hypothesis makes up.

* No frame (any text, any JSON value, any event-shaped object with any field
  values) and no order of records makes ``parse_frame``, ``CrossDeliveryOracle``
  or ``LifecycleOracle`` raise, and every finding they return can be written to
  ``summary.json``.
* A foreign canary planted anywhere (any string or key of any JSON value, at
  any position, or in raw text) is found, with its owner.
* Any interleaving of complete, correct runs of a few users over a few
  connections yields no finding.
* Dropping any one event of any one run yields exactly one ``lost_event``, for
  that run.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from harness.aep import LIFECYCLE, Event, decode_batch, parse_frame, parse_object
from harness.canary import CanaryBook
from harness.findings import Finding
from harness.oracles.cross_delivery import CrossDeliveryOracle
from harness.oracles.lifecycle import LifecycleOracle
from harness.recording import Closed, Received, ReceivedBatch, Sent
from harness.types import ConnectionId, DeliveryPolicy, ScenarioId, TenantId, UserId, UserKey

SCENARIO = ScenarioId("tests/test_oracle_properties.py")
ALICE = UserKey(TenantId("acme"), UserId("alice"))
BOB = UserKey(TenantId("acme"), UserId("bob"))
EVE = UserKey(TenantId("globex"), UserId("alice"))  # same sub, another tenant
USERS = (ALICE, BOB, EVE)
BOOK = CanaryBook(b"oracle-properties-run-key-32-byt")
BOOK.register(USERS)
CANARY = {user: BOOK.canary_for(user) for user in USERS}

PROPERTIES = settings(
    max_examples=400,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)

# Text as the transport delivers it: valid UTF-8, so no lone surrogates.
texts = st.text(st.characters(codec="utf-8"), max_size=40)
json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | texts,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(texts, inner, max_size=4),
    max_leaves=8,
)


def dumps(value: Any) -> str:
    """JSON text as a target may write it (integers of any size included)."""
    return json.dumps(value, ensure_ascii=False)


def cross_oracle() -> CrossDeliveryOracle:
    return CrossDeliveryOracle(BOOK, policy=DeliveryPolicy.OWNER_ONLY, seed=1)


def received(receiver: UserKey, raw: str, *, conn: str, mono: float, binary: bool = False):
    return Received(
        SCENARIO,
        receiver,
        ConnectionId(conn),
        mono,
        1.7e9 + mono,
        raw,
        parse_frame(raw, binary=binary),
        binary,
    )


def sent(sender: UserKey, message_id: str, *, conn: str, mono: float) -> Sent:
    return Sent(SCENARIO, sender, ConnectionId(conn), mono, 1.7e9 + mono, message_id, "main")


def closed(user: UserKey, *, conn: str, mono: float) -> Closed:
    return Closed(SCENARIO, user, ConnectionId(conn), mono, 1.7e9 + mono, "error", None, "", 0)


def assert_reportable(findings: list[Finding]) -> None:
    for finding in findings:
        orjson.dumps(finding.to_json())
        assert str(finding)


# -- nothing breaks the oracles --------------------------------------------------------------

MESSAGE_IDS = [f"{CANARY[ALICE]}-m1", f"{CANARY[ALICE]}-m2"]
event_like = st.fixed_dictionaries(
    {},
    optional={
        "type": st.sampled_from([*LIFECYCLE, "pong", "error"]) | json_values,
        "user_id": st.sampled_from([u.user for u in USERS]) | json_values,
        "tenant_id": st.sampled_from([u.tenant for u in USERS]) | json_values,
        "thread_id": st.just("main") | json_values,
        "message_id": st.sampled_from(MESSAGE_IDS) | json_values,
        "run_id": st.sampled_from(["r1", "r2"]) | json_values,
        "seq": st.integers() | st.integers(-3, 8) | json_values,
        "data": st.dictionaries(texts, json_values, max_size=3) | json_values,
        "code": json_values,
        "message": json_values,
    },
)
well_formed = st.fixed_dictionaries(
    {
        "type": st.sampled_from(LIFECYCLE),
        "user_id": st.sampled_from([u.user for u in USERS]),
        "tenant_id": st.sampled_from([u.tenant for u in USERS]),
        "thread_id": st.just("main"),
        "message_id": st.sampled_from(MESSAGE_IDS),
        "run_id": st.sampled_from(["r1", "r2"]),
        "seq": st.integers(-3, 8) | st.integers(-(2**63), 2**63 - 1),
        "data": st.dictionaries(texts, json_values, max_size=2),
    }
)
frames = st.one_of(
    well_formed.map(lambda obj: (dumps(obj), False)),
    texts.map(lambda text: (text, False)),
    json_values.map(lambda value: (dumps(value), False)),
    event_like.map(lambda obj: (dumps(obj), False)),
    event_like.map(lambda obj: (dumps(obj), True)),
)
actions = st.lists(
    st.one_of(
        st.tuples(st.just("frame"), st.sampled_from(["c1", "c2"]), frames),
        st.tuples(st.just("sent"), st.sampled_from(["c1", "c2"]), st.sampled_from(MESSAGE_IDS)),
        st.tuples(st.just("sweep"), st.floats(0, 100)),
        st.tuples(st.just("close"), st.sampled_from(["c1", "c2"])),
        st.tuples(st.just("finish_connection"), st.sampled_from(["c1", "c2"])),
        st.tuples(st.just("abandon_connection"), st.sampled_from(["c1", "c2"])),
    ),
    max_size=16,
)


@PROPERTIES
@given(actions, st.floats(0, 200))
def test_no_frame_and_no_order_of_records_makes_an_oracle_raise(actions, end):
    cross = cross_oracle()
    lifecycle = LifecycleOracle(timeout_s=10.0, settle_s=1.0, seed=1)
    findings: list[Finding] = []
    for mono, action in enumerate(actions):
        match action:
            case ("frame", conn, (raw, binary)):
                rec = received(ALICE, raw, conn=conn, mono=mono, binary=binary)
                findings += cross.check(rec)
                findings += lifecycle.on_received(rec)
            case ("sent", conn, message_id):
                lifecycle.on_sent(sent(ALICE, message_id, conn=conn, mono=mono))
            case ("sweep", now):
                findings += lifecycle.sweep(now)
            case ("close", conn):
                findings += lifecycle.on_closed(closed(ALICE, conn=conn, mono=mono))
            case ("finish_connection", conn):
                findings += lifecycle.finish_connection(ConnectionId(conn), mono)
            case ("abandon_connection", conn):
                findings += lifecycle.abandon_connection(ConnectionId(conn), mono)
    findings += lifecycle.finish(end)
    assert lifecycle.in_flight == 0
    assert_reportable(findings)


def test_a_seq_of_a_billion_is_judged_at_once():
    lifecycle = LifecycleOracle(timeout_s=10.0)
    lifecycle.on_sent(sent(ALICE, "m1", conn="c1", mono=0))
    for n, kind in enumerate(LIFECYCLE):
        seq = 10**18 if kind == "agent_completed" else n + 1
        raw = orjson.dumps(event(ALICE, "m1", kind, seq)).decode()
        lifecycle.on_received(received(ALICE, raw, conn="c1", mono=n))
    [finding] = lifecycle.finish_connection(ConnectionId("c1"), 10)
    assert finding.detail.startswith("run of message m1 completed without seq 5, 6, 7")


# -- a foreign canary is found wherever it is --------------------------------------------------


def plant(value: Any, slot: int, offset: int, canary: str) -> tuple[Any, bool]:
    """``value`` with ``canary`` inserted into its ``slot``-th string or key (depth first)."""
    count = [0]

    def insert(text: str) -> str:
        at = offset % (len(text) + 1)
        return text[:at] + canary + text[at:]

    def walk(node: Any) -> Any:
        if isinstance(node, str):
            count[0] += 1
            return insert(node) if count[0] - 1 == slot else node
        if isinstance(node, list):
            return [walk(item) for item in node]
        if isinstance(node, dict):
            out = {}
            for key, item in node.items():
                count[0] += 1
                new_key = insert(key) if count[0] - 1 == slot else key
                out[new_key] = walk(item)
            return out
        return node

    planted = walk(value)
    return planted, slot < count[0]


@PROPERTIES
@given(
    json_values,
    st.integers(0, 40),
    st.integers(0, 60),
    st.sampled_from([BOB, EVE]),
    st.booleans(),
)
def test_a_foreign_canary_anywhere_in_a_json_frame_is_found_with_its_owner(
    value, slot, offset, owner, binary
):
    planted, ok = plant(value, slot, offset, CANARY[owner])
    if not ok:  # fewer strings than ``slot``: put it in a field of its own
        planted = {"extra": [planted, f"x{CANARY[owner]}y"]}
    raw = dumps(planted)
    findings = cross_oracle().check(received(ALICE, raw, conn="c1", mono=1.0, binary=binary))
    by_owner = {f.owner: f for f in findings}
    assert owner in by_owner
    assert by_owner[owner].victim == ALICE
    assert by_owner[owner].crosses_tenant is (owner.tenant != ALICE.tenant)
    assert_reportable(findings)


@PROPERTIES
@given(texts, texts, st.sampled_from([BOB, EVE]))
def test_a_foreign_canary_in_raw_text_is_found_with_its_owner(prefix, suffix, owner):
    raw = prefix + CANARY[owner] + suffix
    findings = cross_oracle().check(received(ALICE, raw, conn="c1", mono=1.0))
    assert owner in {f.owner for f in findings}
    assert_reportable(findings)


def test_a_canary_nested_a_thousand_deep_is_found_with_its_path():
    # orjson parses up to 1024 levels; finding the field must not hit the recursion limit.
    raw = "[" * 1000 + orjson.dumps({"k": CANARY[BOB]}).decode() + "]" * 1000
    [finding] = cross_oracle().check(received(ALICE, raw, conn="c1", mono=1.0))
    assert finding.owner == BOB
    assert finding.evidence["field"] == "[0]" * 1000 + ".k"


# -- schedules of complete runs ----------------------------------------------------------------


def event(owner: UserKey, message_id: str, kind: str, seq: int) -> dict[str, Any]:
    canary = CANARY[owner]
    return {
        "type": kind,
        "user_id": owner.user,
        "tenant_id": owner.tenant,
        "thread_id": "main",
        "message_id": message_id,
        "run_id": f"r-{message_id}",
        "seq": seq,
        "data": {"thought": f"{canary} thinking"} if kind == "agent_thinking" else {},
    }


@dataclass
class Plan:
    """Runs of a few users over their own connections, their events interleaved."""

    runs: list[tuple[UserKey, str, str, list[str]]]  # owner, connection, message id, events
    order: list[int]  # which run's next event comes next
    sweeps: set[int] = field(default_factory=set)  # sweep after these steps


@st.composite
def plans(draw: st.DrawFn) -> Plan:
    runs = []
    for owner in USERS:
        for conn_n in range(draw(st.integers(1, 2))):
            conn = f"{owner.tenant}-{owner.user}-c{conn_n}"
            for m in range(draw(st.integers(0, 2))):
                thinking = draw(st.integers(1, 3))
                kinds = ["agent_started", *["agent_thinking"] * thinking, *LIFECYCLE[2:]]
                runs.append((owner, conn, f"{CANARY[owner]}-{conn_n}-m{m}", kinds))
    pending = [i for i, run in enumerate(runs) for _ in run[3]]
    order = draw(st.permutations(pending)) if pending else []
    sweeps = draw(st.sets(st.integers(0, max(len(order) - 1, 0)), max_size=3))
    return Plan(runs, list(order), sweeps)


def play(plan: Plan, *, drop: tuple[int, int] | None = None) -> tuple[list[Finding], int]:
    """Feed ``plan`` to both oracles, optionally without event ``drop = (run, index)``.

    Every connection stays open to the end and is judged as open. Returns the
    findings and the number of runs the lifecycle oracle judged complete.
    """
    cross = cross_oracle()
    lifecycle = LifecycleOracle(timeout_s=1e9, settle_s=0.0, seed=1)
    findings: list[Finding] = []
    position = [0] * len(plan.runs)
    mono = 0.0
    for owner, conn, message_id, _ in plan.runs:
        lifecycle.on_sent(sent(owner, message_id, conn=conn, mono=mono))
    for step, index in enumerate(plan.order):
        mono += 1.0
        owner, conn, message_id, kinds = plan.runs[index]
        n = position[index]
        position[index] += 1
        if drop == (index, n):
            continue
        raw = orjson.dumps(event(owner, message_id, kinds[n], n + 1)).decode()
        rec = received(owner, raw, conn=conn, mono=mono)
        findings += cross.check(rec)
        findings += lifecycle.on_received(rec)
        if step in plan.sweeps:
            findings += lifecycle.sweep(mono)
    for conn in {run[1] for run in plan.runs}:
        findings += lifecycle.finish_connection(ConnectionId(conn), mono + 1)
    assert lifecycle.in_flight == 0
    return findings, lifecycle.completed


@PROPERTIES
@given(plans())
def test_any_interleaving_of_complete_runs_yields_no_finding(plan):
    findings, completed = play(plan)
    assert findings == []
    assert completed == len(plan.runs)


@PROPERTIES
@given(plans(), st.data())
def test_dropping_any_one_event_yields_exactly_one_lost_event_for_that_run(plan, data):
    if not plan.runs:
        return
    run = data.draw(st.integers(0, len(plan.runs) - 1), label="run")
    index = data.draw(st.integers(0, len(plan.runs[run][3]) - 1), label="event")
    findings, _ = play(plan, drop=(run, index))
    [finding] = findings
    assert str(finding.kind) == "lost_event"
    assert finding.evidence["message_id"] == plan.runs[run][2]
    assert finding.victim == plan.runs[run][0]


# -- a read's frames at once: the same findings as one by one ---------------------------------

# Alice's events with seqs and types near the right ones: in order, repeated, skipped.
nearly_right = st.builds(
    lambda message_id, kind, seq, run_id: (
        orjson.dumps(
            {
                "type": kind,
                "user_id": ALICE.user,
                "tenant_id": ALICE.tenant,
                "thread_id": "main",
                "message_id": message_id,
                "run_id": run_id,
                "seq": seq,
                "data": {},
            }
        ).decode(),
        False,
    ),
    st.sampled_from(MESSAGE_IDS),
    st.sampled_from(LIFECYCLE),
    st.integers(0, 6),
    st.sampled_from(["r1", "r1", "r1", "r2"]),
)
batch_actions = st.lists(
    st.one_of(
        st.tuples(
            st.just("batch"),
            st.sampled_from(["c1", "c2"]),
            st.sampled_from([ALICE, ALICE, *USERS]),
            st.lists(frames | nearly_right | nearly_right, max_size=6),
        ),
        st.tuples(st.just("sent"), st.sampled_from(["c1", "c2"]), st.sampled_from(MESSAGE_IDS)),
        st.tuples(st.just("sweep"), st.floats(0, 100)),
        st.tuples(st.just("close"), st.sampled_from(["c1", "c2"])),
    ),
    max_size=16,
)


def canonical(findings: list[Finding]) -> list[bytes]:
    return sorted(orjson.dumps(f.to_json(), option=orjson.OPT_SORT_KEYS) for f in findings)


@PROPERTIES
@given(batch_actions, st.floats(0, 200), st.sampled_from(list(DeliveryPolicy)))
def test_a_batch_of_frames_yields_what_its_frames_yield_one_by_one(actions, end, policy):
    one, batched = (
        CrossDeliveryOracle(BOOK, policy=policy, seed=1),
        CrossDeliveryOracle(BOOK, policy=policy, seed=1),
    )
    by_frame = LifecycleOracle(timeout_s=10.0, settle_s=1.0, seed=1)
    by_batch = LifecycleOracle(timeout_s=10.0, settle_s=1.0, seed=1)
    by_frame._in_order = False  # noqa: SLF001 - the reference: every sweep walks every run
    expected: list[Finding] = []
    got: list[Finding] = []
    for mono, action in enumerate(actions):
        match action:
            case ("batch", conn, receiver, batch_frames):
                records = [
                    received(receiver, raw, conn=conn, mono=mono, binary=binary)
                    for raw, binary in batch_frames
                ]
                for rec in records:
                    expected += one.check(rec)
                    expected += by_frame.on_received(rec)
                batch = ReceivedBatch(
                    SCENARIO,
                    receiver,
                    ConnectionId(conn),
                    mono,
                    1.7e9 + mono,
                    batch_frames,
                    [rec.frame for rec in records],
                )
                got += batched.check_batch(batch)
                got += by_batch.on_batch(batch)
            case ("sent", conn, message_id):
                by_frame.on_sent(sent(ALICE, message_id, conn=conn, mono=mono))
                by_batch.on_sent(sent(ALICE, message_id, conn=conn, mono=mono))
            case ("sweep", now):
                expected += by_frame.sweep(now)
                got += by_batch.sweep(now)
            case ("close", conn):
                expected += by_frame.on_closed(closed(ALICE, conn=conn, mono=mono))
                got += by_batch.on_closed(closed(ALICE, conn=conn, mono=mono))
        assert canonical(got) == canonical(expected)
    expected += by_frame.finish(end)
    got += by_batch.finish(end)
    assert canonical(got) == canonical(expected)
    counts = ("completed", "cut", "abandoned", "unresponsive")
    assert [getattr(by_batch, c) for c in counts] == [getattr(by_frame, c) for c in counts]


@PROPERTIES
@given(plans(), st.integers(1, 6))
def test_complete_runs_read_in_batches_yield_no_finding(plan, size):
    cross = cross_oracle()
    lifecycle = LifecycleOracle(timeout_s=1e9, settle_s=0.0, seed=1)
    position = [0] * len(plan.runs)
    for owner, conn, message_id, _ in plan.runs:
        lifecycle.on_sent(sent(owner, message_id, conn=conn, mono=0.0))
    findings: list[Finding] = []
    pending: dict[str, list[tuple[str, bool]]] = {}
    owners = {run[1]: run[0] for run in plan.runs}
    for step, index in enumerate(plan.order):
        owner, conn, message_id, kinds = plan.runs[index]
        n = position[index]
        position[index] += 1
        raw = orjson.dumps(event(owner, message_id, kinds[n], n + 1)).decode()
        pending.setdefault(conn, []).append((raw, False))
        if len(pending[conn]) >= size or step == len(plan.order) - 1:
            for c, batch_frames in pending.items():
                batch = ReceivedBatch(
                    SCENARIO,
                    owners[c],
                    ConnectionId(c),
                    float(step),
                    1.7e9,
                    batch_frames,
                    [parse_frame(raw) for raw, _ in batch_frames],
                )
                findings += cross.check_batch(batch)
                findings += lifecycle.on_batch(batch)
            pending = {}
    for conn in owners:
        findings += lifecycle.finish_connection(ConnectionId(conn), len(plan.order) + 1.0)
    assert findings == []
    assert lifecycle.completed == len(plan.runs)


@PROPERTIES
@given(well_formed | event_like)
def test_the_event_fast_path_decodes_as_parse_object(obj):
    # The JSON value is the one written: the standard library's reading, exact
    # integers of any size included, is the reference.
    text = dumps(obj)
    frames, every_event = decode_batch([(text, False)])
    assert frames == [parse_frame(text)] == [parse_object(json.loads(text))]
    assert every_event is (type(frames[0]) is Event)
