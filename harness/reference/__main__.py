"""Command line of the reference service: ``python -m harness.reference``.

Once listening, prints its base URL (the real bound port) as one line on
stdout; everything else goes to stderr. SIGINT or SIGTERM shuts it down
cleanly (exit 0). A bad argument or a missing secret is one line on stderr and
exit 2. ``isoharness serve`` is the same command line under its own name, which
its usage and error lines show.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import resource
import signal
import sys
import warnings
from typing import NoReturn

from aiohttp import web
from jwt.warnings import InsecureKeyLengthWarning

from harness.reference.app import Service, Settings
from harness.reference.dialect import DIALECTS
from harness.reference.faults import FAULTS, conflict

PROG = "python -m harness.reference"
MAX_THINK_MS = 60_000
SHUTDOWN_TIMEOUT_S = 3.0
MIN_SECRET_BYTES = 32

log = logging.getLogger("harness.reference")


class _UsageError(Exception):
    """A bad command line; the message is the one line to print."""


class _ListenError(Exception):
    """The service could not bind its address; the message is the one line to print."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise _UsageError(message)


def _think_ms(text: str) -> tuple[int, int]:
    low_text, sep, high_text = text.partition(",")
    try:
        low, high = int(low_text), int(high_text)
    except ValueError:
        low = high = -1
    if not sep or not 0 <= low <= high <= MAX_THINK_MS:
        raise argparse.ArgumentTypeError(
            f"expected MIN,MAX integers with 0 <= MIN <= MAX <= {MAX_THINK_MS} "
            f"(e.g. 2,10), got {text!r}"
        )
    return low, high


def _port(text: str) -> int:
    if not text.isdigit() or int(text) > 65535:
        raise argparse.ArgumentTypeError(f"expected 0-65535, got {text!r}")
    return int(text)


def _leak_kb(text: str) -> int:
    if not text.isdigit() or int(text) > 1024 * 1024:
        raise argparse.ArgumentTypeError(f"expected 0-1048576, got {text!r}")
    return int(text)


def _parser(prog: str) -> argparse.ArgumentParser:
    parser = _Parser(prog=prog, description="The AEP/1 reference service.")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    parser.add_argument("--port", type=_port, default=0, help="port to bind; 0 picks a free one")
    parser.add_argument("--jwt-secret", help="HS256 secret (default: $AEP_JWT_SECRET)")
    parser.add_argument(
        "--fault",
        action="append",
        default=[],
        metavar="NAME",
        help=f"enable a fault mode (repeatable): {', '.join(FAULTS)}",
    )
    parser.add_argument(
        "--think-ms",
        type=_think_ms,
        default=(2, 10),
        metavar="MIN,MAX",
        help="think time between lifecycle events, in ms (default 2,10)",
    )
    parser.add_argument(
        "--leak-kb",
        type=_leak_kb,
        default=64,
        metavar="N",
        help="KiB kept per session by the session_leak fault (default 64)",
    )
    parser.add_argument("--seed", type=int, default=None, help="seed for think times")
    parser.add_argument(
        "--dialect",
        choices=DIALECTS,
        default="aep",
        help="/ws wire format: aep (AEP/1, default) or renamed (other field names, "
        "the token in the first message)",
    )
    return parser


def parse_settings(argv: list[str], *, prog: str = PROG) -> tuple[Settings, str, int]:
    """Turn a command line into settings, host and port (``prog`` names it in ``--help``).

    Raises:
        _UsageError: a bad argument, unknown fault or missing secret.
    """
    args = _parser(prog).parse_args(argv)
    for name in args.fault:
        if name not in FAULTS:
            raise _UsageError(f"unknown fault {name!r}; valid faults: {', '.join(FAULTS)}")
    problem = conflict(args.fault)
    if problem is not None:
        raise _UsageError(problem)
    secret = args.jwt_secret or os.environ.get("AEP_JWT_SECRET", "")
    if not secret:
        raise _UsageError("no JWT secret: pass --jwt-secret or set AEP_JWT_SECRET")
    settings = Settings(
        jwt_secret=secret,
        faults=frozenset(args.fault),
        think_ms=args.think_ms,
        leak_kb=args.leak_kb,
        seed=args.seed,
        dialect=args.dialect,
    )
    return settings, args.host, args.port


def raise_fd_limit() -> None:
    """Raise the soft RLIMIT_NOFILE to the hard limit (one fd per connection)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (ValueError, OSError) as exc:
            log.warning("could not raise RLIMIT_NOFILE from %d to %d: %s", soft, hard, exc)


def _base_url(host: str, port: int) -> str:
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


async def serve(settings: Settings, host: str, port: int) -> None:
    """Serve until SIGINT or SIGTERM; print the base URL once listening."""
    service = Service(settings)
    runner = web.AppRunner(
        service.application(),
        access_log=None,
        handle_signals=False,
        handler_cancellation=True,
        shutdown_timeout=SHUTDOWN_TIMEOUT_S,
    )
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port, backlog=4096, reuse_address=True)
        try:
            await site.start()
        except OSError as exc:
            raise _ListenError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from exc
        bound_host, bound_port = runner.addresses[0][:2]
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stop.set)
        print(_base_url(bound_host, bound_port), flush=True)
        if settings.faults:
            log.warning("fault modes on: %s", ", ".join(sorted(settings.faults)))
        await stop.wait()
    finally:
        await runner.cleanup()


def main(argv: list[str] | None = None, *, prog: str = PROG) -> int:
    """Run the reference service until SIGINT/SIGTERM.

    Args:
        argv: the arguments (default: ``sys.argv[1:]``).
        prog: the command's name in usage and error lines (``isoharness serve``).

    Returns:
        The exit code: 0 after a clean shutdown, 1 when the address cannot be
        bound, 2 for a bad command line or a missing secret.
    """
    try:
        settings, host, port = parse_settings(sys.argv[1:] if argv is None else argv, prog=prog)
    except _UsageError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 2
    except SystemExit as exc:  # --help
        return exc.code if isinstance(exc.code, int) else 0
    logging.basicConfig(
        level=logging.INFO,
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
    )
    logging.getLogger("aiohttp.access").disabled = True
    raise_fd_limit()
    if len(settings.jwt_secret.encode()) < MIN_SECRET_BYTES:
        log.warning("the JWT secret is shorter than %d bytes (RFC 7518 §3.2)", MIN_SECRET_BYTES)
    warnings.filterwarnings("ignore", category=InsecureKeyLengthWarning)  # said once, above
    try:
        asyncio.run(serve(settings, host, port))
    except _ListenError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:  # SIGINT before the handlers were installed
        return 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
