"""Side-by-side bench: client CPU per 100k events for the harness, Locust and Artillery.

One workload for every tool: ``--users`` users, each on its own WebSocket,
closed loop (send a ``user_message``, wait for its ``agent_completed``, send
the next), ``--messages`` messages each; every message gets the five-event
AEP/1 lifecycle. The target is the same for every tool: the small AEP/1
server below (``--target fast``: JWT checked at the handshake, the five
events of a run written in one go, so a run costs it almost nothing), or the
reference service with ``--think-ms 0,0`` (``--target reference``: 1 to 3
``agent_thinking`` events per run, and slower).

The clients, each in its own process, started fresh for every run:

* ``harness``: :func:`harness.workloads.closed_loop` (what a scenario's
  ``Scenario.closed_loop`` runs: one connection per user, the next message
  sent when the run before it completes) on
  :class:`~harness.transport.fast.FastConnector` (``--transport websockets``
  for the simple one), writing every record to ``events.jsonl`` (a temp dir)
  and running the cross_delivery and lifecycle oracles through
  :class:`~harness.run.Run`, with the session's redactor;
* ``locust``: a locustfile with ``websocket-client`` on gevent, one request
  event per message (``.venv/bin/pip install locust``; not a project dependency);
* ``artillery``: Artillery's ws engine, one worker, the closed loop in a
  processor function (``cd bench/.tools/artillery && PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1
  npm install --ignore-scripts artillery``).

``--ablate`` adds three runs of the harness with parts switched off, to show
where its CPU goes (they check less, so they are not results): ``harness-nolog``
builds and writes no ``events.jsonl`` line, ``harness-nooracles`` runs neither
the cross_delivery nor the lifecycle oracle, ``harness-bare`` does neither
(what is left: the transport, decoding, the users and the closed loop).

A tool that is not installed is skipped with a line saying how to install it.
Runs alternate between the tools (the order rotates every round) and each
figure is the median of ``--runs`` runs. CPU is measured from outside, the
same way for every tool: the client process's user+system CPU (psutil,
sampled every 20 ms) between the target's first handshake and the moment its
last connection closed, so start-up (imports, Node, token minting) is not
counted; the whole-process figure is printed too. Peak RSS is ``ru_maxrss``
of the client process (``os.wait4``).

Usage::

    .venv/bin/python bench/compare.py [--users 100] [--messages 200] [--runs 3]
        [--tools harness,locust,artillery] [--target fast|reference]
        [--transport fast|websockets] [--ablate]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import jwt
import orjson
import psutil

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
ARTILLERY_DIR = HERE / ".tools" / "artillery"
ARTILLERY_BIN = ARTILLERY_DIR / "node_modules" / ".bin" / "artillery"
SECRET = "compare-bench-signing-secret-0123456789abcdef"
TENANTS = 10
SAMPLE_S = 0.02

INSTALL = {
    "locust": f"{sys.executable} -m pip install locust",
    "artillery": f"mkdir -p {ARTILLERY_DIR} && cd {ARTILLERY_DIR} && "
    "PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 npm install --ignore-scripts artillery",
}


# -- the target: a small, fast AEP/1 server -----------------------------------------------------


def serve_fast_target(port: int, backlog: int = 4096) -> None:
    """Run the fast AEP/1 target until killed; print ``port N`` once listening.

    Prints ``start <monotonic>`` at the first handshake and ``idle <monotonic>
    <events>`` whenever the last open connection closes.
    """
    from websockets.frames import Opcode
    from websockets.http11 import Request
    from websockets.server import ServerProtocol

    class Stats:
        open = 0
        events = 0
        started = False

    def say(line: str) -> None:
        sys.stdout.write(line + "\n")
        sys.stdout.flush()

    def identity(request: Request) -> tuple[str, str] | None:
        token = parse_qs(urlsplit(request.path).query).get("token", [None])[0]
        header = request.headers.get("Authorization", "")
        if token is None and header.startswith("Bearer "):
            token = header[7:]
        if token is None:
            return None
        try:
            claims = jwt.decode(token, SECRET, algorithms=["HS256"])
        except jwt.InvalidTokenError:
            return None
        return str(claims["sub"]), str(claims["tenant"])

    class Conn(asyncio.Protocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            assert isinstance(transport, asyncio.Transport)
            self.transport = transport
            self.ws = ServerProtocol(max_size=65536)
            self.who: tuple[str, str] | None = None
            self.accepted = False
            self.runs = 0

        def data_received(self, data: bytes) -> None:
            ws = self.ws
            ws.receive_data(data)
            for event in ws.events_received():
                if isinstance(event, Request):
                    self.who = identity(event)
                    if self.who is None:
                        ws.send_response(ws.reject(401, '{"error": "unauthorized"}\n'))
                    else:
                        ws.send_response(ws.accept(event))
                        self.accepted = True
                        Stats.open += 1
                        if not Stats.started:
                            Stats.started = True
                            say(f"start {time.monotonic()}")
                elif event.opcode is Opcode.TEXT:
                    self.on_text(event.data)
            self.flush()

        def on_text(self, data: Any) -> None:
            try:
                msg = orjson.loads(data)
            except orjson.JSONDecodeError:
                msg = None
            if not isinstance(msg, dict) or msg.get("type") not in ("user_message", "ping"):
                self.ws.send_text(b'{"type":"error","code":"bad_request","message":"?"}')
                return
            if msg["type"] == "ping":
                self.ws.send_text(b'{"type":"pong"}')
                return
            assert self.who is not None
            self.runs += 1
            sub, tenant = self.who
            content = str(msg.get("content", ""))
            mid = str(msg.get("message_id", ""))
            head = {
                "user_id": sub,
                "tenant_id": tenant,
                "thread_id": str(msg.get("thread_id", "")),
                "message_id": mid,
                "run_id": f"r{id(self):x}-{self.runs}",
            }
            # Every bench client uses a new thread per message: history is this message.
            steps = (
                ("agent_started", {}),
                ("agent_thinking", {"thought": f"step 1 of 1: considering {content}"}),
                ("tool_executing", {"tool": "echo", "input": content}),
                ("tool_completed", {"tool": "echo", "output": content}),
                ("agent_completed", {"result": content, "history": [mid]}),
            )
            for seq, (kind, body) in enumerate(steps, 1):
                self.ws.send_text(orjson.dumps({"type": kind, **head, "seq": seq, "data": body}))
            Stats.events += len(steps)

        def flush(self) -> None:
            # One write for everything queued (a run's five frames): one segment, one send.
            chunks = self.ws.data_to_send()
            data = b"".join(chunks)
            if data:
                self.transport.write(data)
            if chunks and not chunks[-1]:
                self.transport.close()

        def eof_received(self) -> None:
            self.ws.receive_eof()
            self.flush()

        def connection_lost(self, exc: Exception | None) -> None:
            if self.accepted:
                Stats.open -= 1
                if Stats.open == 0:
                    say(f"idle {time.monotonic()} {Stats.events}")

    async def main() -> None:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(Conn, "127.0.0.1", port, backlog=backlog)
        say(f"port {server.sockets[0].getsockname()[1]}")
        await asyncio.Event().wait()

    raise_fd_limit()
    asyncio.run(main())


def raise_fd_limit() -> int:
    """Raise this process's soft RLIMIT_NOFILE to the hard limit; return it."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


class TargetProcess:
    """A target in its own process, with its ``start``/``idle`` lines collected."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.start_t: float | None = None
        self.idle: list[tuple[float, int]] = []
        self.proc: subprocess.Popen[str] | None = None
        self.embedded: Any = None
        self.ws_url = ""

    def __enter__(self) -> TargetProcess:
        if self.kind == "reference":
            from harness.embedded import EmbeddedService

            self.embedded = EmbeddedService(jwt_secret=SECRET, think_ms=(0, 0))
            self.ws_url = self.embedded.start().replace("http", "ws", 1) + "/ws"
            return self
        self.proc = subprocess.Popen(
            [sys.executable, __file__, "--role", "target"],
            stdout=subprocess.PIPE,
            text=True,
            cwd=ROOT,
        )
        assert self.proc.stdout is not None
        first = self.proc.stdout.readline().split()
        self.ws_url = f"ws://127.0.0.1:{first[1]}/ws"
        threading.Thread(target=self._read, daemon=True).start()
        return self

    def _read(self) -> None:
        assert self.proc is not None
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            parts = line.split()
            if parts[0] == "start":
                self.start_t = float(parts[1])
            elif parts[0] == "idle":
                self.idle.append((float(parts[1]), int(parts[2])))

    def __exit__(self, *exc: object) -> None:
        if self.embedded is not None:
            self.embedded.stop()
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            assert self.proc.stdout is not None
            self.proc.stdout.close()


# -- the clients ----------------------------------------------------------------------------------


def token_for(index: int) -> str:
    claims = {"sub": f"bu{index}", "tenant": f"bench-t{index % TENANTS}", "exp": time.time() + 7200}
    return jwt.encode(claims, SECRET, algorithm="HS256")


#: The harness's ablations (``--ablate``): tool name → the parts switched off.
ABLATIONS = {
    "harness-nolog": ("log",),
    "harness-nooracles": ("oracles",),
    "harness-bare": ("log", "oracles"),
}


def ablate(run: Any, parts: Sequence[str]) -> None:
    """Switch parts of ``run`` off, for a bench only: the run then checks less.

    ``log``: no ``events.jsonl`` line is built or written. ``oracles``: the
    cross_delivery and lifecycle oracles see nothing (events are still
    decoded, counted and settle their users' runs).
    """
    if "log" in parts:
        run.log.write = lambda rec: None
        run.log.write_batch = lambda batch: None
    if "oracles" in parts:
        run._cross.check_batch = lambda batch: []
        run._lifecycle.on_batch = lambda batch: []
        run._lifecycle.on_sent = lambda rec: None


def harness_client(
    url: str, users: int, messages: int, transport: str, off: Sequence[str] = ()
) -> None:
    """The harness: UserConnections on the chosen transport, full recording and checking
    (less with ``off``: see :func:`ablate`)."""
    import resource

    from _harness_stubs import NoHttp

    from harness import workloads
    from harness.adapters.aep import AepAdapter
    from harness.credentials import JwtCredentials
    from harness.run import Run, Target
    from harness.safety import Redactor
    from harness.transport.base import Connector
    from harness.transport.fast import FastConnector
    from harness.transport.websocket import WebSocketConnector
    from harness.types import ScenarioId
    from harness.users import plan_users

    raise_fd_limit()
    report_dir = Path(tempfile.mkdtemp(prefix="isoharness-compare-"))
    redactor = Redactor([SECRET])
    run = Run(
        target=Target(url, url),
        report_dir=report_dir,
        seed=1,
        run_key=os.urandom(32),
        run_id="20260101T000000Z-b3nch0",
        redact=redactor.redact,
        # Redactor.needs_redaction (the cheap necessary condition) where it exists.
        needs_redaction=getattr(redactor, "needs_redaction", None),
    )
    ablate(run, off)
    connector: Connector = FastConnector() if transport == "fast" else WebSocketConnector()

    async def main() -> dict[str, Any]:
        env = workloads.Env(
            run=run,
            scenario=ScenarioId("bench/compare"),
            adapter=AepAdapter(connector, url),
            http=NoHttp(),  # type: ignore[arg-type]
            credentials=JwtCredentials(SECRET),
            base_url=url,
            ws_url=url,
        )
        keys = plan_users(count=users, tenants=TENANTS, run_tag=run.tag, namespace="b")
        sims = await workloads.make_users(env, keys)
        before = resource.getrusage(resource.RUSAGE_SELF)
        began = time.monotonic()
        # What Scenario.closed_loop runs (thread ids "private").
        await workloads.closed_loop(
            env, sims, messages=messages, thread_of=lambda u, n: u.private_id(f"t{n % 2}")
        )
        run.finish_lifecycles()
        after = resource.getrusage(resource.RUSAGE_SELF)
        user = after.ru_utime - before.ru_utime
        system = after.ru_stime - before.ru_stime
        return {
            "cpu_s": user + system,
            "user_s": user,
            "sys_s": system,
            "elapsed_s": time.monotonic() - began,
        }

    profile = os.environ.get("BENCH_PROFILE")
    if profile:  # BENCH_PROFILE=out.prof: cProfile the harness client
        import cProfile

        with cProfile.Profile() as prof:
            result = asyncio.run(main())
        prof.dump_stats(profile)
    else:
        result = asyncio.run(main())
    run.close()
    result |= {
        "events": run.counts["events_received"],
        "violations": dict(run.finding_counts),
        "errors": sum(e["count"] for e in run.errors.values()),
        "lines": run.log.lines,
        "redaction_gate": hasattr(redactor, "needs_redaction"),
    }
    shutil.rmtree(report_dir)
    print("RESULT " + orjson.dumps(result).decode(), flush=True)


LOCUSTFILE = """
import itertools, json, os, time

import gevent
import jwt
import websocket
from locust import User, constant, events, task
from locust.exception import StopUser

URL, SECRET = os.environ["BENCH_URL"], os.environ["BENCH_SECRET"]
USERS, MESSAGES = int(os.environ["BENCH_USERS"]), int(os.environ["BENCH_MESSAGES"])
TENANTS = int(os.environ["BENCH_TENANTS"])
ids = itertools.count()
finished = 0


class ChatUser(User):
    wait_time = constant(0)

    @task
    def chat(self):
        global finished
        index = next(ids)
        claims = {"sub": f"lu{index}", "tenant": f"bench-t{index % TENANTS}",
                  "exp": time.time() + 7200}
        token = jwt.encode(claims, SECRET, algorithm="HS256")
        ws = websocket.create_connection(URL, header=[f"Authorization: Bearer {token}"])
        marker = f"isolocust{index:011d}"
        for n in range(MESSAGES):
            mid = f"{marker}-m{n}"
            began = time.perf_counter()
            ws.send(json.dumps({"type": "user_message", "message_id": mid,
                                "thread_id": f"t{n}-{marker}",
                                "content": f"{marker} note {n} from Locust about t{n}-{marker}"}))
            received = 0
            while True:
                event = json.loads(ws.recv())
                received += 1
                if event.get("type") == "agent_completed" and event.get("message_id") == mid:
                    break
            events.request.fire(request_type="WS", name="user_message",
                                response_time=(time.perf_counter() - began) * 1000,
                                response_length=received, exception=None, context={})
        ws.close()
        finished += 1
        if finished == USERS:
            gevent.spawn(self.environment.runner.quit)
        raise StopUser()
"""

ARTILLERY_YML = """
config:
  target: "{url}"
  phases:
    - duration: 1
      arrivalCount: {users}
  processor: "./processor.js"
scenarios:
  - engine: ws
    flow:
      - connect:
          function: "connectWithToken"
      - function: "chat"
"""

ARTILLERY_JS = r"""
const crypto = require('crypto');
const SECRET = process.env.BENCH_SECRET;
const MESSAGES = parseInt(process.env.BENCH_MESSAGES, 10);
const TENANTS = parseInt(process.env.BENCH_TENANTS, 10);
let next = 0;

function b64(obj) { return Buffer.from(JSON.stringify(obj)).toString('base64url'); }
function token(index) {
  const body = b64({alg: 'HS256', typ: 'JWT'}) + '.' + b64({
    sub: `au${index}`, tenant: `bench-t${index % TENANTS}`,
    exp: Math.floor(Date.now() / 1000) + 7200});
  return body + '.' + crypto.createHmac('sha256', SECRET).update(body).digest('base64url');
}

function connectWithToken(params, context, done) {
  const index = next++;
  context.vars.index = index;
  params.target = `${params.target}?token=${token(index)}`;
  done();
}

function chat(context, ee, done) {
  const ws = context.ws;
  const marker = `isoartil${String(context.vars.index).padStart(11, '0')}`;
  let n = 0;
  let mid = null;
  function send() {
    if (n >= MESSAGES) { ws.removeAllListeners('message'); return done(); }
    mid = `${marker}-m${n}`;
    ws.send(JSON.stringify({type: 'user_message', message_id: mid, thread_id: `t${n}-${marker}`,
                            content: `${marker} note ${n} from Artillery about t${n}-${marker}`}));
    n += 1;
  }
  ws.on('message', (data) => {
    const event = JSON.parse(data);
    ee.emit('counter', 'aep.events_received', 1);
    if (event.type === 'agent_completed' && event.message_id === mid) send();
  });
  send();
}

module.exports = { connectWithToken, chat };
"""


def client_command(tool: str, url: str, args: argparse.Namespace, workdir: Path) -> list[str]:
    if tool == "harness" or tool in ABLATIONS:
        return [
            sys.executable,
            __file__,
            "--role",
            "harness",
            "--url",
            url,
            "--users",
            str(args.users),
            "--messages",
            str(args.messages),
            "--transport",
            args.transport,
            "--off",
            ",".join(ABLATIONS.get(tool, ())),
        ]
    if tool == "locust":
        (workdir / "locustfile.py").write_text(textwrap.dedent(LOCUSTFILE))
        return [
            sys.executable,
            "-m",
            "locust",
            "-f",
            str(workdir / "locustfile.py"),
            "--headless",
            "--users",
            str(args.users),
            "--spawn-rate",
            str(args.users),
            "--only-summary",
            "--loglevel",
            "WARNING",
            "--skip-log-setup",
        ]
    (workdir / "scenario.yml").write_text(ARTILLERY_YML.format(url=url, users=args.users))
    (workdir / "processor.js").write_text(ARTILLERY_JS)
    return [str(ARTILLERY_BIN), "run", "--quiet", str(workdir / "scenario.yml")]


def installed(tool: str) -> bool:
    if tool == "harness" or tool in ABLATIONS:
        return True
    if tool == "locust":
        import importlib.util

        return importlib.util.find_spec("locust") is not None
    return ARTILLERY_BIN.exists() and shutil.which("node") is not None


# -- measuring ------------------------------------------------------------------------------------


@dataclass
class Sample:
    tool: str
    events: int
    window_s: float
    window_cpu_s: float
    total_cpu_s: float
    peak_rss_kib: int
    ok: bool
    note: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def cpu_per_100k(self) -> float:
        return self.window_cpu_s / self.events * 1e5 if self.events else float("nan")

    @property
    def events_per_s(self) -> float:
        return self.events / self.window_s if self.window_s > 0 else float("nan")


class CpuSampler(threading.Thread):
    """Samples a process's user+system CPU every :data:`SAMPLE_S` seconds (monotonic clock)."""

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.proc = psutil.Process(pid)
        self.samples: list[tuple[float, float]] = []
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                times = self.proc.cpu_times()  # every client here is one process
                self.samples.append((time.monotonic(), times.user + times.system))
            except psutil.Error:
                return
            self.stop.wait(SAMPLE_S)

    def at(self, t: float) -> float:
        """CPU seconds used by time ``t`` (linear between samples)."""
        samples = self.samples
        if not samples:
            return 0.0
        if t <= samples[0][0]:
            return samples[0][1]
        for (t0, c0), (t1, c1) in zip(samples, samples[1:], strict=False):
            if t0 <= t <= t1:
                return c0 + (c1 - c0) * (t - t0) / (t1 - t0) if t1 > t0 else c1
        return samples[-1][1]


def measure(tool: str, args: argparse.Namespace) -> Sample:
    env = dict(
        os.environ,
        BENCH_SECRET=SECRET,
        BENCH_USERS=str(args.users),
        BENCH_MESSAGES=str(args.messages),
        BENCH_TENANTS=str(TENANTS),
        ARTILLERY_DISABLE_TELEMETRY="true",
        WORKERS="1",
        PYTHONUNBUFFERED="1",
    )
    with TargetProcess(args.target) as target, tempfile.TemporaryDirectory() as tmp:
        env["BENCH_URL"] = target.ws_url
        command = client_command(tool, target.ws_url, args, Path(tmp))
        proc = subprocess.Popen(
            command,
            cwd=tmp if tool == "artillery" else ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        sampler = CpuSampler(proc.pid)
        sampler.start()
        assert proc.stdout is not None
        output = proc.stdout.read()  # until the client exits
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        proc.stdout.close()
        sampler.stop.set()
        sampler.join()
        time.sleep(0.1)  # the target's last "idle" line
        total_cpu = usage.ru_utime + usage.ru_stime
        extra: dict[str, Any] = {}
        for line in output.splitlines():
            if line.startswith("RESULT "):
                extra = orjson.loads(line[7:])
        if args.target == "fast":
            if target.start_t is None or not target.idle:
                return Sample(tool, 0, 0, 0, total_cpu, usage.ru_maxrss, False, output[-2000:])
            end_t, events = target.idle[-1]
            start_t = target.start_t
        else:  # the reference service does not report: the harness's own window
            events = int(extra.get("events", 0))
            start_t, end_t = 0.0, float(extra.get("elapsed_s", 0.0))
        window_cpu = sampler.at(end_t) - sampler.at(start_t) if args.target == "fast" else 0.0
        if args.target != "fast":
            window_cpu = float(extra.get("cpu_s", 0.0))
        expected = args.users * args.messages * 5
        ok = proc.returncode == 0 and events >= expected
        note = ""
        if tool == "harness" or tool in ABLATIONS:
            ok = ok and extra.get("events") == events and not extra.get("violations")
            ok = ok and not extra.get("errors")
            note = (
                f"harness saw {extra.get('events')} events, {extra.get('lines')} lines, "
                f"violations {extra.get('violations')}, errors {extra.get('errors')}, "
                f"own CPU window {extra.get('cpu_s', 0):.2f}s "
                f"(user {extra.get('user_s', 0):.2f}, system {extra.get('sys_s', 0):.2f}), "
                f"redaction gate {'on' if extra.get('redaction_gate') else 'off'}"
            )
        if not ok:
            note += f" | exit {proc.returncode}, {events}/{expected} events: {output[-1500:]}"
        return Sample(
            tool, events, end_t - start_t, window_cpu, total_cpu, usage.ru_maxrss, ok, note, extra
        )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--role", choices=["compare", "target", "harness"], default="compare")
    parser.add_argument("--users", type=int, default=100)
    parser.add_argument("--messages", type=int, default=200)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--tools", default="harness,locust,artillery")
    parser.add_argument("--target", choices=["fast", "reference"], default="fast")
    parser.add_argument("--transport", choices=["fast", "websockets"], default="fast")
    parser.add_argument("--url", default="")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument(
        "--ablate", action="store_true", help="add runs of the harness with parts switched off"
    )
    parser.add_argument("--off", default="", help=argparse.SUPPRESS)  # the harness role's parts
    args = parser.parse_args()
    if args.role == "target":
        serve_fast_target(args.port)
        return 0
    if args.role == "harness":
        off = [part for part in args.off.split(",") if part]
        harness_client(args.url, args.users, args.messages, args.transport, off)
        return 0

    tools = []
    names = args.tools.split(",") + (list(ABLATIONS) if args.ablate else [])
    for tool in names:
        if installed(tool):
            tools.append(tool)
        else:
            print(f"skipping {tool}: not installed; install it with: {INSTALL[tool]}")
    print(
        f"workload: {args.users} users x {args.messages} messages x 5 events "
        f"= {args.users * args.messages * 5} events per run, closed loop, "
        f"target {args.target}, harness transport {args.transport}, "
        f"{args.runs} runs per tool, {os.cpu_count()} CPUs"
    )
    samples: dict[str, list[Sample]] = {tool: [] for tool in tools}
    for round_ in range(args.runs):
        order = tools[round_ % len(tools) :] + tools[: round_ % len(tools)]
        for tool in order:
            sample = measure(tool, args)
            samples[tool].append(sample)
            flag = "" if sample.ok else "  FAILED"
            print(
                f"  run {round_ + 1} {tool:17s} {sample.cpu_per_100k:6.2f} CPU-s/100k  "
                f"{sample.events_per_s:8.0f} events/s  peak RSS {sample.peak_rss_kib / 1024:6.1f} "
                f"MiB  (whole process {sample.total_cpu_s:.2f} CPU-s){flag}"
            )
            if sample.note:
                print(f"      {sample.note}")
    print()
    print(
        f"{'tool':17s} {'CPU-s/100k':>11s} {'events/s':>9s} {'peak RSS':>9s} "
        f"{'whole-proc CPU-s/100k':>22s} {'CPU ratio':>10s}"
    )
    medians: dict[str, tuple[float, float, float, float]] = {}
    for tool, runs in samples.items():
        good = [s for s in runs if s.ok] or runs
        medians[tool] = (
            statistics.median(s.cpu_per_100k for s in good),
            statistics.median(s.events_per_s for s in good),
            statistics.median(s.peak_rss_kib / 1024 for s in good),
            statistics.median(s.total_cpu_s / max(s.events, 1) * 1e5 for s in good),
        )
    base = medians.get("harness", (float("nan"),) * 4)[0]
    for tool, (cpu, rate, rss, whole) in medians.items():
        ratio = cpu / base if base == base and base > 0 else float("nan")
        print(f"{tool:17s} {cpu:11.2f} {rate:9.0f} {rss:7.1f}Mi {whole:22.2f} {ratio:9.2f}x")
    print("(CPU ratio: the tool's client CPU per event over the harness's; >1 means the harness")
    print(" spends less.)")
    if args.ablate:
        print("(harness-nolog, -nooracles, -bare: the harness with parts switched off, which check")
        print(" less: where its CPU goes, not results.)")
    return 0 if all(s.ok for runs in samples.values() for s in runs) else 1


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    sys.exit(main())
