"""Transports: the only layer that touches sockets (websockets, aiohttp).

Users, probes and oracles talk to :class:`~harness.transport.base.Channel`,
:class:`~harness.transport.base.Connector` and
:class:`~harness.transport.base.HttpClient`; the in-memory twin in
:mod:`harness.transport.memory` lets them be tested without a server.
"""
