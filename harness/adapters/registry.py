"""From the ``adapter`` setting to an adapter factory.

``aep``, ``json`` and ``nats`` are the adapters that ship with isoharness;
anything else is a hook, ``package.module:factory``, naming an
:data:`~harness.adapters.AdapterFactory` of your own. Modules are imported
only when named, so an adapter whose optional dependency is missing is a
one-line :class:`~harness.errors.ConfigError`, not a traceback.
"""

from __future__ import annotations

import importlib
import ssl
from typing import Any

from harness.adapters import Adapter, AdapterContext, AdapterFactory
from harness.errors import ConfigError
from harness.settings import Settings

BUILTIN: dict[str, str] = {
    "aep": "harness.adapters.aep:create",
    "json": "harness.adapters.json_ws:create",
    "nats": "harness.adapters.nats:create",
}
"""Built-in adapter names and the factories they stand for."""
_PIP_NAMES = {"nats": "nats-py"}
"""Import names whose pip package is named otherwise."""


def adapter_factory(settings: Settings) -> AdapterFactory:
    """The factory of the ``adapter`` setting (see :func:`load_factory`)."""
    return load_factory(settings.adapter, source=settings.source_of("adapter"))


def load_factory(name: str, *, source: str) -> AdapterFactory:
    """The factory ``name`` stands for: a built-in name or ``package.module:factory``.

    Args:
        name: the value of the ``adapter`` setting.
        source: where it came from (``--adapter``, ``isoharness.toml`` …), for errors.

    Raises:
        ConfigError: unknown name, a module that cannot be imported (a missing
            optional dependency), or a factory that is not there or not callable.
    """
    target = BUILTIN.get(name, name)
    module_name, sep, attr = target.partition(":")
    if not sep or not module_name or not attr:
        raise ConfigError(
            "adapter",
            name,
            source,
            f"one of {', '.join(BUILTIN)}, or a hook 'package.module:factory'",
        )
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        missing = getattr(exc, "name", None) or module_name
        if name in BUILTIN and missing != module_name:
            package = _PIP_NAMES.get(missing, missing)
            fix = f"it needs the {missing!r} package; install it (pip install {package})"
        else:
            fix = f"cannot import {module_name!r} ({type(exc).__name__}: {exc})"
        raise ConfigError("adapter", name, source, fix) from None
    except Exception as exc:  # noqa: BLE001 - a broken hook module is a configuration error
        raise ConfigError(
            "adapter",
            name,
            source,
            f"importing {module_name!r} failed ({type(exc).__name__}: {exc})",
        ) from exc
    factory: Any = module
    for part in attr.split("."):
        factory = getattr(factory, part, None)
        if factory is None:
            raise ConfigError(
                "adapter", name, source, f"{module_name!r} has no {attr!r}; name its factory"
            )
    if not callable(factory):
        raise ConfigError(
            "adapter", name, source, f"{target!r} is not callable; name a factory function"
        )
    result: AdapterFactory = factory
    return result


def adapter_context(
    settings: Settings, *, base_url: str, ws_url: str, ssl_context: ssl.SSLContext | None
) -> AdapterContext:
    """The :class:`~harness.adapters.AdapterContext` the settings describe."""
    return AdapterContext(
        base_url=base_url,
        ws_url=ws_url,
        ssl_context=ssl_context,
        transport=settings.transport,
        token_in_query=False,
        options=settings.adapter_options,
        options_source=settings.adapter_options_source,
    )


def build_adapter(factory: AdapterFactory, context: AdapterContext, *, name: str) -> Adapter:
    """Call ``factory``; what it raises, other than a ``ConfigError``, becomes one.

    Raises:
        ConfigError: the factory refused its options, or failed.
    """
    try:
        return factory(context)
    except ConfigError:
        raise
    except Exception as exc:  # noqa: BLE001 - a failing factory is a configuration error
        raise ConfigError(
            "adapter",
            name,
            context.options_source,
            f"its factory failed: {type(exc).__name__}: {exc}",
        ) from exc


def check_adapter(settings: Settings) -> None:
    """Build the configured adapter once, without I/O, so a bad table fails before the run.

    Raises:
        ConfigError: the adapter name, its factory or its options are wrong.
    """
    context = adapter_context(
        settings, base_url="http://127.0.0.1", ws_url="ws://127.0.0.1/ws", ssl_context=None
    )
    build_adapter(adapter_factory(settings), context, name=settings.adapter)
