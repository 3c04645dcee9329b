"""A small AEP/1 target whose misbehaviour is switchable: the harness's punching bag.

It runs as its own process (``python tests/misbehaving_target.py --port 0``),
so it never shares an event loop, a heap or a GIL with the harness under test:
memory measured in the test process is the harness's alone. It speaks just
enough AEP/1 for the harness to drive it: ``/healthz``, ``/ws`` with correct
five-event lifecycles for ``user_message`` (delivered on the sending
connection), ``ping``/``pong``, and a per-user ``/api/state``. On top of that,
any set of :data:`FAULTS` can be switched on at start or later through
``POST /_control``.

:class:`MisbehavingTarget` starts it from a test, reconfigures it and restarts
it on the same port (the process is killed, as a crash or a deploy would).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterable
from pathlib import Path
from typing import Any

FAULTS: dict[str, str] = {
    # Extra frames after each run's agent_started (the run itself stays correct).
    "invalid_json": "an extra text frame that is not JSON",
    "binary": "an extra binary frame",
    "json_array": "an extra frame that is a JSON array",
    "json_number": "an extra frame that is a JSON number",
    "missing_fields": "an extra event of the run without run_id, seq and data",
    "mistyped_fields": "an extra event of the run with seq a string and data a list",
    "odd_types": "extra objects whose type is a list, an object, a new 100 000-character string",
    "large_garbage": "an extra non-JSON text frame of `large_size` characters (under 1 MiB)",
    "invalid_utf8": "an extra text frame that is not UTF-8 (the client closes 1007)",
    "huge_frame": "an extra 10 MB text frame (the client closes 1009)",
    # Changes to the run itself.
    "missing_fields_instead": "tool_executing is sent without run_id",
    "mistyped_fields_instead": "tool_executing is sent with seq a string",
    "flood": "`flood_count` agent_thinking events per run instead of one",
    "reset": "the TCP connection is reset after `reset_after` events on it",
    "silent": "the handshake succeeds and nothing is ever answered",
    # Handshake and HTTP.
    "refuse_403": "the WebSocket handshake is refused with 403",
    "refuse_500": "the WebSocket handshake is refused with 500",
    "close_4401": "the WebSocket is accepted, then closed with 4401 (unauthorized)",
    "http_5xx": "every /api/* request answers 503",
    "slow_http": "every /api/* request answers after `slow_s` seconds",
}
DEFAULTS: dict[str, Any] = {
    "event_delay_s": 0.002,
    "flood_count": 200_000,
    "large_size": 900_000,
    "reset_after": 2,
    "slow_s": 5.0,
}
LIFECYCLE = (
    "agent_started",
    "agent_thinking",
    "tool_executing",
    "tool_completed",
    "agent_completed",
)


# -- the server (runs in its own process) ----------------------------------------------------


class Behaviour:
    def __init__(self, faults: Iterable[str] = (), **options: Any) -> None:
        self.set(faults, options)

    def set(self, faults: Iterable[str], options: dict[str, Any]) -> None:
        unknown = set(faults) - set(FAULTS)
        if unknown:
            raise ValueError(f"unknown faults {sorted(unknown)}; known: {', '.join(FAULTS)}")
        self.faults = frozenset(faults)
        self.options = DEFAULTS | options

    def __contains__(self, fault: str) -> bool:
        return fault in self.faults

    def __getattr__(self, name: str) -> Any:
        try:
            return self.__dict__["options"][name]
        except KeyError:
            raise AttributeError(name) from None


def make_app(behaviour: Behaviour, secret: str) -> Any:
    import jwt
    from aiohttp import WSMsgType, web

    stats = {"connections": 0, "messages": 0, "events": 0, "api_requests": 0}
    state: dict[tuple[str, str, str], Any] = {}

    def owner_of(request: web.Request) -> tuple[str, str] | None:
        header = request.headers.get("Authorization", "")
        token = header[7:] if header.startswith("Bearer ") else request.query.get("token", "")
        try:
            claims = jwt.decode(token, secret, algorithms=["HS256"])
        except jwt.PyJWTError:
            return None
        return str(claims["tenant"]), str(claims["sub"])

    async def healthz(request: web.Request) -> web.Response:
        return web.Response(text="ok")

    async def control(request: web.Request) -> web.Response:
        if request.method == "POST":
            body = await request.json()
            behaviour.set(body.get("faults", ()), body.get("options", {}))
            stats.update(dict.fromkeys(stats, 0))
        return web.json_response({"faults": sorted(behaviour.faults), **stats})

    async def api(request: web.Request) -> web.Response:
        stats["api_requests"] += 1
        if "slow_http" in behaviour:
            await asyncio.sleep(behaviour.slow_s)
        if "http_5xx" in behaviour:
            return web.json_response({"error": "unavailable"}, status=503)
        owner = owner_of(request)
        if owner is None:
            return web.json_response({"error": "unauthorized"}, status=401)
        tail = request.match_info["tail"]
        if tail.startswith("state/"):
            key = (*owner, tail[len("state/") :])
            if request.method == "PUT":
                state[key] = (await request.json())["value"]
            if key not in state:
                return web.json_response({"error": "not_found"}, status=404)
            return web.json_response({"key": key[2], "value": state[key], "user_id": owner[1]})
        if tail == "threads":
            return web.json_response({"threads": []})
        return web.json_response({"error": "not_found"}, status=404)

    async def ws_endpoint(request: web.Request) -> web.StreamResponse:
        if "refuse_403" in behaviour:
            return web.json_response({"error": "forbidden"}, status=403)
        if "refuse_500" in behaviour:
            return web.json_response({"error": "internal"}, status=500)
        owner = owner_of(request)
        if owner is None:
            return web.json_response({"error": "unauthorized"}, status=401)
        ws = web.WebSocketResponse(max_msg_size=1 << 20)
        await ws.prepare(request)
        if "close_4401" in behaviour:
            await ws.close(code=4401, message=b"unauthorized")
            return ws
        stats["connections"] += 1
        sent = [0]
        runs: set[asyncio.Task[None]] = set()
        try:
            async for msg in ws:
                if msg.type is not WSMsgType.TEXT or "silent" in behaviour:
                    continue
                obj = json.loads(msg.data)
                if obj.get("type") == "ping":
                    await ws.send_str('{"type":"pong"}')
                elif obj.get("type") == "user_message":
                    stats["messages"] += 1
                    task = asyncio.create_task(run(ws, request, owner, obj, sent))
                    runs.add(task)
                    task.add_done_callback(runs.discard)
        finally:
            for task in runs:
                task.cancel()
        return ws

    async def run(
        ws: web.WebSocketResponse,
        request: web.Request,
        owner: tuple[str, str],
        msg: dict[str, Any],
        sent: list[int],
    ) -> None:
        tenant, user = owner
        content = msg["content"]
        thinking = behaviour.flood_count if "flood" in behaviour else 1
        kinds = ["agent_started", *["agent_thinking"] * thinking, *LIFECYCLE[2:]]
        data = {
            "agent_started": {},
            "agent_thinking": {"thought": f"thinking about {content}"},
            "tool_executing": {"tool": "echo", "input": content},
            "tool_completed": {"tool": "echo", "output": content},
            "agent_completed": {"result": content, "history": [msg["message_id"]]},
        }
        base = {
            "user_id": user,
            "tenant_id": tenant,
            "thread_id": msg["thread_id"],
            "message_id": msg["message_id"],
            "run_id": f"run-{msg['message_id']}",
        }
        try:
            for seq, kind in enumerate(kinds, 1):
                if thinking == 1 or kind != "agent_thinking":
                    await asyncio.sleep(behaviour.event_delay_s)
                event: dict[str, Any] = {"type": kind, **base, "seq": seq, "data": data[kind]}
                if kind == "tool_executing" and "missing_fields_instead" in behaviour:
                    del event["run_id"]
                if kind == "tool_executing" and "mistyped_fields_instead" in behaviour:
                    event["seq"] = str(seq)
                await ws.send_str(json.dumps(event))
                stats["events"] += 1
                sent[0] += 1
                if kind == "agent_started":
                    await extras(ws, {"type": "agent_thinking", **base})
                if "reset" in behaviour and sent[0] >= behaviour.reset_after:
                    reset(request)
                    return
        except (ConnectionError, RuntimeError):
            return  # the client went away (or closed on a frame it could not take)

    async def extras(ws: web.WebSocketResponse, base: dict[str, Any]) -> None:
        if "invalid_json" in behaviour:
            await ws.send_str('{"type": "agent_thinking", "user_id": ')
        if "binary" in behaviour:
            await ws.send_bytes(json.dumps({**base, "seq": 2, "data": {}}).encode())
        if "json_array" in behaviour:
            await ws.send_str('[1, "two", null]')
        if "json_number" in behaviour:
            await ws.send_str("42")
        if "missing_fields" in behaviour:
            event = {k: v for k, v in base.items() if k != "run_id"}
            await ws.send_str(json.dumps(event))
        if "mistyped_fields" in behaviour:
            await ws.send_str(json.dumps({**base, "seq": "2", "data": []}))
        if "odd_types" in behaviour:
            await ws.send_str(json.dumps({**base, "type": ["agent_thinking"]}))
            await ws.send_str(json.dumps({**base, "type": {"agent": "thinking"}}))
            await ws.send_str(json.dumps({**base, "type": "q" * 100_000 + os.urandom(4).hex()}))
        if "large_garbage" in behaviour:
            await ws.send_str("<" + "x" * (behaviour.large_size - 2) + ">")
        if "invalid_utf8" in behaviour:
            await ws.send_frame(b'{"type": "agent_thinking", "data": "\xff\xfe"}', WSMsgType.TEXT)
        if "huge_frame" in behaviour:
            await ws.send_str('"' + "y" * (10 * 1000 * 1000) + '"')

    def reset(request: web.Request) -> None:
        transport = request.transport
        if transport is None:
            return
        sock = transport.get_extra_info("socket")
        if sock is not None:
            # SO_LINGER 0: close() sends an RST, not a FIN (a real connection reset).
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00" * 2)
        transport.abort()

    app = web.Application()
    app.router.add_get("/healthz", healthz)
    app.router.add_route("*", "/_control", control)
    app.router.add_route("*", "/api/{tail:.*}", api)
    app.router.add_get("/ws", ws_endpoint)
    return app


async def serve(port: int, behaviour: Behaviour, secret: str) -> None:
    from aiohttp import web

    runner = web.AppRunner(make_app(behaviour, secret), access_log=None, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", port, reuse_address=True)
    await site.start()
    print(f"listening {runner.addresses[0][1]}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    try:
        await stop.wait()
    finally:
        await runner.cleanup()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--secret", required=True)
    parser.add_argument("--config", default="{}", help='JSON {"faults": [...], "options": {...}}')
    args = parser.parse_args(argv)
    config = json.loads(args.config)
    behaviour = Behaviour(config.get("faults", ()), **config.get("options", {}))
    asyncio.run(serve(args.port, behaviour, args.secret))


# -- the test side ----------------------------------------------------------------------------


class MisbehavingTarget:
    """Starts the target as a subprocess on 127.0.0.1 and controls it.

    Args:
        faults: names from :data:`FAULTS` switched on from the start.
        secret: the HS256 secret its tokens are verified with.
        options: overrides of :data:`DEFAULTS`.
    """

    def __init__(self, *faults: str, secret: str, **options: Any) -> None:
        self.faults = tuple(faults)
        self.options = options
        self.secret = secret
        self.port = 0
        self._proc: subprocess.Popen[str] | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws"

    def start(self, *, timeout_s: float = 15.0) -> MisbehavingTarget:
        config = json.dumps({"faults": list(self.faults), "options": self.options})
        proc = subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve()), "--port", str(self.port)]
            + ["--secret", self.secret, "--config", config],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        assert proc.stdout is not None
        line = proc.stdout.readline()
        proc.stdout.close()
        if not line.startswith("listening "):
            proc.kill()
            proc.wait(timeout_s)
            raise RuntimeError(f"the misbehaving target did not start: {line!r}")
        self.port = int(line.split()[1])
        self._proc = proc
        return self

    def configure(self, *faults: str, **options: Any) -> dict[str, Any]:
        """Switch to ``faults`` (replacing the current set) with ``options``."""
        self.faults, self.options = tuple(faults), options
        return self._control({"faults": list(faults), "options": options})

    def stats(self) -> dict[str, Any]:
        """Connections accepted, messages, events and API requests since the last
        :meth:`configure` (or start)."""
        return self._control(None)

    def _control(self, body: dict[str, Any] | None) -> dict[str, Any]:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.base_url + "/_control", data=data)
        with urllib.request.urlopen(req, timeout=5) as resp:  # noqa: S310 - loopback only
            result: dict[str, Any] = json.loads(resp.read())
            return result

    def kill(self) -> None:
        """Stop at once, as a crash would: every connection drops without a close frame."""
        if self._proc is not None:
            self._proc.kill()
            self._proc.wait(10)
            self._proc = None

    def restart(self, *, down_s: float = 0.2) -> None:
        """Kill the process and start it again on the same port after ``down_s``."""
        self.kill()
        time.sleep(down_s)
        deadline = time.monotonic() + 10
        while True:
            try:
                self.start()
                return
            except RuntimeError:
                # The port may still be held for a moment by the dead process.
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)

    def stop(self) -> None:
        if self._proc is not None:
            self._proc.terminate()
            try:
                self._proc.wait(5)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait(5)
            self._proc = None

    def __enter__(self) -> MisbehavingTarget:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        with contextlib.suppress(Exception):
            self.stop()


if __name__ == "__main__":
    main()
