"""How many connections a parallel download uses: a controller that measures what each step gains.

It starts from what one stream achieved (the first range, or the window in which the single stream turned
slow): as many connections as a per-connection cap that low would need to reach the rate that is enough
(``transfer.single_stream_enough_bytes_per_s``), rounded up to a power of two, at least two, at most
``transfer.connections``; two when one stream's rate is unknown (a resumed download). It then climbs as TCP's
slow start does: the connection count doubles while the aggregate rate rises by at least
``GAIN`` per doubling, and the climb stops at the first doubling that does not pay (or at
``transfer.connections``); it then steps back to the count that was fastest (fewer connections for the same
rate cost less CPU on both ends), down to one connection when more were no faster than one stream. So:

- a per-connection cap (nginx ``limit_rate``, many CDNs): every doubling nearly doubles the rate, and it
  climbs to the maximum;
- one shared bottleneck (a rate-limited link, a token bucket, a saturated disk at the origin): two are no
  faster than one, and it settles at one or two;
- an origin that slows down under more connections (CPU-bound, one spinning disk): it steps back to the
  count that was fastest, never below the single stream's rate.

Each decision needs a window of ``WINDOW_S`` after the previous change, so a short tail is never probed.
"""

from __future__ import annotations

from dataclasses import dataclass, field

#: a doubling must raise the aggregate rate by this fraction to count as a gain
GAIN = 0.2
#: a window shorter than this is noise (new connections ramping up, the burst each new range starts with)
WINDOW_S = 1.0


@dataclass
class FanoutController:
    """``target`` is the connection count to run now; feed ``observe`` the bytes done so far, often."""

    maximum: int
    #: the rate one stream achieved before the fan-out (bytes/s), when it was measured
    single_rate: float | None = None
    #: the rate at which one stream is enough (bytes/s)
    enough: float = 400e6
    target: int = 2
    settled: bool = False
    #: (connections, rate) of every completed window, for the log and the benchmarks
    history: list[tuple[int, float]] = field(default_factory=list)
    _best: tuple[int, float] | None = None
    _window: tuple[float, int] | None = None

    def __post_init__(self) -> None:
        start = 2
        if self.single_rate is not None and self.single_rate > 0:
            while start < self.maximum and start * self.single_rate < self.enough:
                start *= 2
        self.target = min(start, self.maximum)
        if self.single_rate is not None:
            self._best = (1, self.single_rate)
        if self.maximum <= 1:
            self.settled = True

    def observe(self, now: float, done: int) -> int:
        """The connection count to run from now on."""
        if self.settled:
            return self.target
        if self._window is None:
            self._window = (now, done)
            return self.target
        started, start_bytes = self._window
        if now - started < WINDOW_S:
            return self.target
        rate = (done - start_bytes) / (now - started)
        self.history.append((self.target, rate))
        self._window = (now, done)
        best = self._best
        if best is None or rate >= best[1] * (1 + GAIN):
            self._best = (self.target, rate)
            if self.target >= self.maximum:
                self.settled = True
            else:
                self.target = min(self.maximum, self.target * 2)
            return self.target
        # no gain worth the connections: back to the count that was fastest
        self.settled = True
        self.target = best[0]
        return self.target

    def describe(self) -> str:
        steps = ", ".join(f"{n}: {rate / 1e6:.0f} MB/s" for n, rate in self.history)
        return f"{self.target} connection(s) ({steps or 'no full window'})"
