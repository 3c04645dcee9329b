"""Chart data and inline-SVG charts for the HTML report; no I/O.

Two halves, both pure:

* bounded-memory accumulators fed one record at a time, so a soak's
  millions of lines fit in a fixed budget: :class:`Decimator` (uniform
  down-sampling of a series), :class:`RateHistogram` (events per second with
  bins that widen as the run lengthens) and :class:`LatencyTracker`
  (per-event-type latency percentiles from a seeded reservoir sample);
* :func:`line_chart`, which draws :class:`Series` as one ``<svg>`` element:
  title, legend, labelled axes with units, and a "no data" state. The SVG is
  well-formed XML with no scripts, no external references and every piece of
  text escaped, and it is returned as :class:`markupsafe.Markup` so an
  autoescaping template inserts it verbatim.
"""

from __future__ import annotations

import math
import random
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

from markupsafe import Markup, escape

__all__ = [
    "AEP_LIFECYCLE",
    "Decimator",
    "LatencyRow",
    "LatencyTracker",
    "RateHistogram",
    "Series",
    "line_chart",
    "percentile",
]

T = TypeVar("T")

#: AEP/1 lifecycle event types in the order a run emits them; the latency
#: chart lists them in this order, then any other type alphabetically.
AEP_LIFECYCLE = (
    "agent_started",
    "agent_thinking",
    "tool_executing",
    "tool_completed",
    "agent_completed",
)

OTHER_TYPES = "(other types)"


# --------------------------------------------------------------------------
# Accumulators


class Decimator(Generic[T]):
    """Keep a uniform sample of at most ``limit`` items from a stream of unknown length.

    Items at stream positions ``0, s, 2s, …`` are kept, where the stride ``s``
    doubles whenever the kept list reaches ``2 × limit``; the last item seen is
    always kept too, so a chart reaches the end of the run. Memory is
    O(``limit``) whatever the stream length.

    Args:
        limit: the most items :meth:`items` returns (at least 2).

    Raises:
        ValueError: ``limit`` is below 2.
    """

    def __init__(self, limit: int = 1000) -> None:
        if limit < 2:
            raise ValueError(f"a decimator keeps at least 2 items, not {limit}")
        self._limit = limit
        self._stride = 1
        self._seen = 0
        self._kept: list[T] = []
        self._last: T | None = None
        self._last_kept = False

    def add(self, item: T) -> None:
        """Offer the next item of the stream."""
        self._last = item
        self._last_kept = self._seen % self._stride == 0
        if self._last_kept:
            self._kept.append(item)
            if len(self._kept) >= 2 * self._limit:
                self._kept = self._kept[::2]
                self._stride *= 2
                self._last_kept = False
        self._seen += 1

    @property
    def seen(self) -> int:
        """How many items were offered."""
        return self._seen

    def items(self) -> list[T]:
        """The sample, in stream order: at most ``limit`` items, the last one included."""
        kept = self._kept
        if self._last is not None and not self._last_kept:
            kept = [*kept, self._last]
        if len(kept) <= self._limit:
            return list(kept)
        body, last = kept[:-1], kept[-1]
        step = math.ceil(len(body) / (self._limit - 1))
        return [*body[::step], last]


class RateHistogram:
    """Count events per time bin and report a rate in events per second.

    Bins start one second wide; when an event falls beyond ``max_bins`` bins
    the width doubles and neighbouring bins merge, so memory stays
    O(``max_bins``) however long the run, and a chart has at most that many
    points. Events may arrive in any order.

    Args:
        max_bins: the most bins kept (at least 2).
    """

    def __init__(self, max_bins: int = 1000) -> None:
        if max_bins < 2:
            raise ValueError(f"a rate histogram needs at least 2 bins, not {max_bins}")
        self._max_bins = max_bins
        self._width = 1.0
        self._counts: list[int] = []
        self._last = 0.0
        self.total = 0

    @property
    def bin_width_s(self) -> float:
        """The current bin width, in seconds."""
        return self._width

    def add(self, at_s: float) -> bool:
        """Count one event at ``at_s`` seconds since the run started.

        Returns:
            ``False`` (and counts nothing) when ``at_s`` is negative or not finite.
        """
        if not math.isfinite(at_s) or at_s < 0:
            return False
        index = int(at_s // self._width)
        while index >= self._max_bins:
            counts = self._counts
            if len(counts) % 2:
                counts.append(0)
            self._counts = [counts[i] + counts[i + 1] for i in range(0, len(counts), 2)]
            self._width *= 2
            index = int(at_s // self._width)
        if index >= len(self._counts):
            self._counts.extend([0] * (index + 1 - len(self._counts)))
        self._counts[index] += 1
        self._last = max(self._last, at_s)
        self.total += 1
        return True

    def rates(self) -> list[tuple[float, float]]:
        """``(bin start in s, events/s)`` for every bin from 0 to the last event.

        The last bin ends at the last event, not at its full width; when it
        spans less than half a bin it is left out rather than drawn as a
        misleading drop (or, divided by its short span, a spike).
        """
        width = self._width
        rates = [(i * width, count / width) for i, count in enumerate(self._counts)]
        if len(rates) > 1 and self._last - rates[-1][0] < width / 2:
            rates.pop()
        return rates


@dataclass(frozen=True, slots=True)
class LatencyRow:
    """Latency of one event type, from send to first receipt by the sender.

    ``count`` and ``max_ms`` are exact; the percentiles come from a reservoir
    sample of ``sampled`` latencies (all of them when ``sampled == count``).
    """

    event_type: str
    count: int
    sampled: int
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float


_LIFECYCLE_BIT = {name: 1 << i for i, name in enumerate(AEP_LIFECYCLE)}


class _Pending:
    """A sent message awaiting its events; small, since a soak keeps many."""

    __slots__ = ("conn", "others", "seen", "sent_m", "user")

    def __init__(self, sent_m: float, user: str | None, conn: str | None) -> None:
        self.sent_m = sent_m
        # Users and connections repeat across millions of records: share one string each.
        self.user = None if user is None else sys.intern(user)
        self.conn = None if conn is None else sys.intern(conn)
        self.seen = 0  # bit per AEP/1 lifecycle type received
        self.others: tuple[str, ...] = ()  # other types received (rare)

    def first(self, event_type: str) -> bool:
        """Mark ``event_type`` received; whether this was its first receipt."""
        bit = _LIFECYCLE_BIT.get(event_type)
        if bit is not None:
            if self.seen & bit:
                return False
            self.seen |= bit
            return True
        if event_type in self.others:
            return False
        self.others += (event_type,)
        return True


class LatencyTracker:
    """Latency per event type: first receive of (message, type) minus the send time.

    Feed it sends and receives in file order. A receive counts when it is the
    first of its (``message_id``, type) that reaches the sender: on the
    connection the message was sent on, or to the same user (another of the
    sender's connections, or a reconnect). Receives by other users, repeats,
    receives of unknown messages and negative latencies are not counted.

    Memory is bounded: at most ``max_pending`` sent messages are remembered
    (the oldest is forgotten first; its late events then count as unknown), at
    most ``max_types`` event types get their own row (the rest share
    :data:`OTHER_TYPES`), and each row keeps a reservoir of at most
    ``reservoir_size`` latencies drawn with a ``random.Random(seed)``, so the
    same input always gives the same percentiles.
    """

    def __init__(
        self,
        *,
        reservoir_size: int = 50_000,
        max_pending: int = 100_000,
        max_types: int = 32,
        seed: int = 0,
    ) -> None:
        self._reservoir_size = reservoir_size
        self._max_pending = max_pending
        self._max_types = max_types
        self._rng = random.Random(seed)
        self._pending: dict[str, _Pending] = {}
        self._samples: dict[str, list[float]] = {}
        self._counts: dict[str, int] = {}
        self._max: dict[str, float] = {}
        self.unmatched = 0

    def sent(self, message_id: str, m: float, *, user: str | None, conn: str | None) -> None:
        """Record that ``message_id`` was sent at monotonic time ``m`` (s).

        A second send of the same id is ignored: latency runs from the first.
        """
        if message_id in self._pending:
            return
        self._pending[message_id] = _Pending(m, user, conn)
        if len(self._pending) > self._max_pending:
            del self._pending[next(iter(self._pending))]

    def received(
        self, message_id: str, event_type: str, m: float, *, user: str | None, conn: str | None
    ) -> bool:
        """Record a frame of ``event_type`` for ``message_id`` received at ``m`` (s).

        Returns:
            whether the frame was counted as a latency sample.
        """
        pending = self._pending.get(message_id)
        if pending is None:
            self.unmatched += 1
            return False
        to_sender = (pending.conn is not None and conn == pending.conn) or (
            pending.user is not None and user == pending.user
        )
        if pending.conn is None and pending.user is None:
            to_sender = True
        latency_ms = (m - pending.sent_m) * 1000.0
        if not to_sender or not math.isfinite(latency_ms) or latency_ms < 0:
            return False
        if not pending.first(event_type):
            return False
        key = event_type
        if key not in self._counts and len(self._counts) >= self._max_types:
            key = OTHER_TYPES
        count = self._counts.get(key, 0) + 1
        self._counts[key] = count
        self._max[key] = max(self._max.get(key, latency_ms), latency_ms)
        sample = self._samples.setdefault(key, [])
        if len(sample) < self._reservoir_size:
            sample.append(latency_ms)
        else:  # Algorithm R: the count-th item replaces a slot with probability k/count.
            slot = self._rng.randrange(count)
            if slot < self._reservoir_size:
                sample[slot] = latency_ms
        return True

    def rows(self) -> list[LatencyRow]:
        """One row per event type: AEP/1 lifecycle order first, then by name."""
        order = {name: i for i, name in enumerate(AEP_LIFECYCLE)}
        keys = sorted(
            self._counts,
            key=lambda k: (k == OTHER_TYPES, order.get(k, len(order)), k),
        )
        rows = []
        for key in keys:
            sample = sorted(self._samples[key])
            rows.append(
                LatencyRow(
                    event_type=key,
                    count=self._counts[key],
                    sampled=len(sample),
                    p50_ms=percentile(sample, 50),
                    p90_ms=percentile(sample, 90),
                    p99_ms=percentile(sample, 99),
                    max_ms=self._max[key],
                )
            )
        return rows


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0–100) of ascending values, interpolating linearly.

    Matches ``numpy.percentile``'s default method.

    Raises:
        ValueError: ``sorted_values`` is empty.
    """
    if not sorted_values:
        raise ValueError("the percentile of no values is undefined")
    position = (len(sorted_values) - 1) * q / 100.0
    low = math.floor(position)
    high = min(low + 1, len(sorted_values) - 1)
    fraction = position - low
    return sorted_values[low] + (sorted_values[high] - sorted_values[low]) * fraction


# --------------------------------------------------------------------------
# SVG

WIDTH = 960
HEIGHT = 340
_LEFT, _RIGHT, _TOP, _BOTTOM = 84, 28, 64, 58
_PLOT_W = WIDTH - _LEFT - _RIGHT
_PLOT_H = HEIGHT - _TOP - _BOTTOM
_AXIS = "#6b7280"
_GRID = "#e5e7eb"
_INK = "#111827"


@dataclass(frozen=True, slots=True)
class Series:
    """One named set of points on a chart.

    Attributes:
        label: the legend text.
        points: ``(x, y)`` in data units; non-finite points are dropped.
        colour: any CSS colour.
        line: join the points with a polyline.
        markers: draw a circle at each point (each with a tooltip).
        dashed: dash the line.
        area: shade the area between the line and the x axis.
        marker_radius: circle radius in SVG units (shrink it for dense series).
    """

    label: str
    points: Sequence[tuple[float, float]]
    colour: str
    line: bool = True
    markers: bool = False
    dashed: bool = False
    area: bool = False
    marker_radius: float = 4.0


def line_chart(
    *,
    title: str,
    x_label: str,
    y_label: str,
    series: Sequence[Series],
    empty_note: str,
    x_ticks: Sequence[tuple[float, str]] | None = None,
    x_domain: tuple[float, float] | None = None,
    y_from_zero: bool = False,
    y_unit: str = "",
) -> Markup:
    """Draw ``series`` as one ``<svg class="chart">`` element.

    Args:
        title: shown above the plot and as the SVG's accessible name.
        x_label, y_label: axis titles, with their units ("time since start (s)").
        series: drawn in order; a series whose points are all dropped gets
            no legend entry.
        empty_note: shown, with class ``no-data``, when no series has a point.
        x_ticks: fixed ``(x, label)`` ticks (for categories); otherwise the
            x ticks are computed.
        x_domain: the x range to show; otherwise the data's, rounded out to ticks.
        y_from_zero: include 0 in the y range (rates, latencies).
        y_unit: appended to values in marker tooltips.

    Returns:
        the SVG as :class:`~markupsafe.Markup`; every text in it is escaped.
    """
    cleaned = [
        (s, [(x, y) for x, y in s.points if math.isfinite(x) and math.isfinite(y)]) for s in series
    ]
    cleaned = [(s, pts) for s, pts in cleaned if pts]
    parts = [
        f'<svg class="chart" viewBox="0 0 {WIDTH} {HEIGHT}" role="img" '
        f'aria-label="{escape(title)}" font-family="system-ui, sans-serif">',
        f"<title>{escape(title)}</title>",
        f'<text x="{_LEFT}" y="26" font-size="16" font-weight="600" fill="{_INK}">'
        f"{escape(title)}</text>",
    ]
    if not cleaned:
        parts += _frame(x_label, y_label)
        parts.append(
            f'<text class="no-data" x="{_LEFT + _PLOT_W / 2}" y="{_TOP + _PLOT_H / 2}" '
            f'text-anchor="middle" font-size="15" fill="{_AXIS}">No data: {escape(empty_note)}'
            "</text>"
        )
        parts.append("</svg>")
        return Markup("".join(parts))

    xs = [x for _, pts in cleaned for x, _ in pts]
    ys = [y for _, pts in cleaned for _, y in pts]
    y_lo, y_hi = min(ys), max(ys)
    if y_from_zero:
        y_lo, y_hi = min(y_lo, 0.0), max(y_hi, 0.0)
    y_ticks = nice_ticks(y_lo, y_hi)
    y0, y1 = y_ticks[0], y_ticks[-1]
    if x_ticks is None:
        computed = nice_ticks(min(xs), max(xs)) if x_domain is None else nice_ticks(*x_domain)
        step = computed[1] - computed[0]
        ticks = [(t, _number(t, step)) for t in computed]
        x0, x1 = x_domain if x_domain is not None else (computed[0], computed[-1])
    else:
        ticks = list(x_ticks)
        x0, x1 = x_domain if x_domain is not None else (min(xs), max(xs))
    if x1 == x0:
        x0, x1 = x0 - 1, x1 + 1

    def px(x: float) -> float:
        return round(_LEFT + (x - x0) / (x1 - x0) * _PLOT_W, 1)

    def py(y: float) -> float:
        return round(_TOP + _PLOT_H - (y - y0) / (y1 - y0) * _PLOT_H, 1)

    y_step = y_ticks[1] - y_ticks[0]
    for t in y_ticks:
        parts.append(
            f'<line x1="{_LEFT}" y1="{py(t)}" x2="{_LEFT + _PLOT_W}" y2="{py(t)}" '
            f'stroke="{_GRID}" stroke-width="1"/>'
        )
        parts.append(
            f'<text x="{_LEFT - 8}" y="{py(t) + 4}" text-anchor="end" font-size="12" '
            f'fill="{_AXIS}">{escape(_number(t, y_step))}</text>'
        )
    rotate = len(ticks) > 7 and x_ticks is not None
    for t, label in ticks:
        if not x0 <= t <= x1:
            continue
        parts.append(
            f'<line x1="{px(t)}" y1="{_TOP + _PLOT_H}" x2="{px(t)}" y2="{_TOP + _PLOT_H + 5}" '
            f'stroke="{_AXIS}" stroke-width="1"/>'
        )
        ty = _TOP + _PLOT_H + 20
        transform = f' transform="rotate(-25 {px(t)} {ty})"' if rotate else ""
        anchor = "end" if rotate else "middle"
        parts.append(
            f'<text x="{px(t)}" y="{ty}" text-anchor="{anchor}" font-size="12" '
            f'fill="{_AXIS}"{transform}>{escape(label)}</text>'
        )
    parts += _frame(x_label, y_label)

    for s, pts in cleaned:
        coords = " ".join(f"{px(x)},{py(y)}" for x, y in pts)
        if s.area and len(pts) > 1:
            base = py(max(y0, min(0.0, y1)))
            parts.append(
                f'<polygon points="{px(pts[0][0])},{base} {coords} {px(pts[-1][0])},{base}" '
                f'fill="{escape(s.colour)}" fill-opacity="0.12" stroke="none"/>'
            )
        if s.line and len(pts) > 1:
            dash = ' stroke-dasharray="7 5"' if s.dashed else ""
            parts.append(
                f'<polyline class="series" data-series="{escape(s.label)}" points="{coords}" '
                f'fill="none" stroke="{escape(s.colour)}" stroke-width="2" '
                f'stroke-linejoin="round"{dash}/>'
            )
        if s.markers or not s.line or len(pts) == 1:
            for x, y in pts:
                tip = f"{s.label}: {_value(y)}{y_unit}"
                parts.append(
                    f'<circle class="marker" data-series="{escape(s.label)}" cx="{px(x)}" '
                    f'cy="{py(y)}" r="{s.marker_radius:g}" fill="{escape(s.colour)}" '
                    f'stroke="#ffffff" stroke-width="1.5"><title>{escape(tip)}</title></circle>'
                )
    parts += _legend([s for s, _ in cleaned])
    parts.append("</svg>")
    return Markup("".join(parts))


def _frame(x_label: str, y_label: str) -> list[str]:
    bottom = _TOP + _PLOT_H
    mid_y = _TOP + _PLOT_H / 2
    return [
        f'<line x1="{_LEFT}" y1="{_TOP}" x2="{_LEFT}" y2="{bottom}" stroke="{_AXIS}"/>',
        f'<line x1="{_LEFT}" y1="{bottom}" x2="{_LEFT + _PLOT_W}" y2="{bottom}" stroke="{_AXIS}"/>',
        f'<text class="axis-label" x="{_LEFT + _PLOT_W / 2}" y="{HEIGHT - 10}" '
        f'text-anchor="middle" font-size="13" fill="{_INK}">{escape(x_label)}</text>',
        f'<text class="axis-label" x="20" y="{mid_y}" text-anchor="middle" font-size="13" '
        f'fill="{_INK}" transform="rotate(-90 20 {mid_y})">{escape(y_label)}</text>',
    ]


def _legend(series: Iterable[Series]) -> list[str]:
    parts = []
    x = float(_LEFT)
    y = 48
    for s in series:
        colour = escape(s.colour)
        if s.line:
            dash = ' stroke-dasharray="7 5"' if s.dashed else ""
            parts.append(
                f'<line x1="{x}" y1="{y - 4}" x2="{x + 22}" y2="{y - 4}" stroke="{colour}" '
                f'stroke-width="2"{dash}/>'
            )
        if s.markers or not s.line:
            parts.append(f'<circle cx="{x + 11}" cy="{y - 4}" r="4" fill="{colour}"/>')
        parts.append(
            f'<text x="{x + 28}" y="{y}" font-size="12" fill="{_INK}">{escape(s.label)}</text>'
        )
        x += 52 + 6.2 * len(s.label)
    return parts


def nice_ticks(lo: float, hi: float, target: int = 5) -> list[float]:
    """Evenly spaced round tick values (1, 2, 2.5 or 5 × 10ⁿ apart) covering ``[lo, hi]``.

    The first tick is ≤ ``lo`` and the last ≥ ``hi``; there are at least two.
    """
    if hi < lo:
        lo, hi = hi, lo
    if hi == lo:
        pad = abs(lo) * 0.1 or 1.0
        lo, hi = lo - pad, hi + pad
    raw = (hi - lo) / target
    magnitude = 10.0 ** math.floor(math.log10(raw))
    step = magnitude * 10
    for multiple in (1.0, 2.0, 2.5, 5.0, 10.0):
        if (hi - lo) / (multiple * magnitude) <= target:
            step = multiple * magnitude
            break
    start = math.floor(lo / step) * step
    count = math.ceil(round((hi - start) / step, 9))
    return [start + i * step for i in range(max(count, 1) + 1)]


def _number(value: float, step: float) -> str:
    """Format ``value`` with as many decimals as ``step`` needs, with thousands separators."""
    decimals = 6
    for d in range(7):
        scaled = abs(step) * 10**d
        if abs(scaled - round(scaled)) < 1e-6 * max(1.0, scaled):
            decimals = d
            break
    text = f"{value:,.{decimals}f}"
    return "0" if text.strip("-0.,") == "" else text


def _value(value: float) -> str:
    """Format a data value for a tooltip: about four significant digits."""
    if abs(value) >= 100:
        return f"{value:,.0f}"
    if abs(value) >= 1:
        return f"{value:.2f}"
    return f"{value:.3g}"
