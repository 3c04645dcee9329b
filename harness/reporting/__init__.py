"""Reporting: what people read about a run.

:mod:`harness.reporting.html` reads a run's report folder and writes one
self-contained ``report.html`` with :func:`~harness.reporting.html.render_report`;
:mod:`harness.reporting.charts` holds its pure parts (bounded-memory
accumulators and inline-SVG charts).
"""
