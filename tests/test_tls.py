"""TLS toward staging targets: certificates are verified unless the user says --insecure."""

from __future__ import annotations

import asyncio
import ssl
import subprocess
from pathlib import Path

import pytest
from aiohttp import web

from harness.errors import TargetError
from harness.transport.base import make_ssl_context
from harness.transport.fast import FastConnector
from harness.transport.http import AiohttpClient
from harness.transport.websocket import WebSocketConnector


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-keyout", str(key), "-out", str(cert), "-subj", "/CN=127.0.0.1",
         "-addext", "subjectAltName=IP:127.0.0.1"],
        check=True, capture_output=True,
    )  # fmt: skip
    return cert, key


async def _healthz(request: web.Request) -> web.Response:
    return web.Response(text="ok")


async def _ws(request: web.Request) -> web.WebSocketResponse:
    ws = web.WebSocketResponse()
    await ws.prepare(request)
    await ws.send_str('{"type":"pong"}')
    await ws.close()
    return ws


async def with_tls_server(cert: Path, key: Path, client_side) -> object:
    server_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_tls.load_cert_chain(cert, key)
    app = web.Application()
    app.router.add_get("/healthz", _healthz)
    app.router.add_get("/ws", _ws)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=server_tls)
    await site.start()
    port = runner.addresses[0][1]
    try:
        return await client_side(port)
    finally:
        await runner.cleanup()


def http_get(certificate, *, ca_bundle: Path | None, insecure: bool) -> object:
    async def client(port: int) -> object:
        http = AiohttpClient(ssl_context=make_ssl_context(ca_bundle=ca_bundle, insecure=insecure))
        try:
            return (await http.request("GET", f"https://127.0.0.1:{port}/healthz")).text
        except TargetError as exc:
            return exc
        finally:
            await http.aclose()

    return asyncio.run(with_tls_server(*certificate, client))


def test_an_unknown_certificate_is_refused_by_default(certificate):
    outcome = http_get(certificate, ca_bundle=None, insecure=False)
    assert isinstance(outcome, TargetError)
    assert "certificate verify failed" in str(outcome)


def test_a_ca_bundle_makes_the_certificate_trusted(certificate):
    assert http_get(certificate, ca_bundle=certificate[0], insecure=False) == "ok"


def test_insecure_skips_verification_when_asked_explicitly(certificate):
    assert http_get(certificate, ca_bundle=None, insecure=True) == "ok"


@pytest.mark.parametrize("connector", [WebSocketConnector, FastConnector])
def test_wss_is_verified_too(certificate, connector):
    async def client(port: int) -> tuple[object, str]:
        url = f"wss://127.0.0.1:{port}/ws"
        strict = connector(ssl_context=make_ssl_context(ca_bundle=None, insecure=False))
        try:
            await strict.connect(url, token="t")
            refused: object = None
        except TargetError as exc:
            refused = exc
        trusted = make_ssl_context(ca_bundle=certificate[0], insecure=False)
        channel = await connector(ssl_context=trusted).connect(url, token="t")
        text, _ = await channel.recv()
        await channel.close()
        return refused, text

    refused, text = asyncio.run(with_tls_server(*certificate, client))
    assert isinstance(refused, TargetError)
    assert text == '{"type":"pong"}'
