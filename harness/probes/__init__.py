"""Probes: read the target's memory and resource gauges while it runs.

A probe never imports an HTTP client: endpoint probes take an injected
``fetch(url) -> (status, body)`` coroutine function, so they are tested
against any server and wired to the transport layer's client by the caller.
:class:`~harness.probes.sampler.Sampler` polls probes on a timer and at the
idle points between cycles, writing ``timeline.jsonl`` as it goes.
"""
