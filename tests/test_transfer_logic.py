"""The pure logic of the transfer core, decided without a server: the fan-out controller fed synthetic
samples, backoff and ``Retry-After``, ``Content-Range`` and the body cap, the headers a redirect carries, and
the chunk map a parallel download resumes from. (The same mechanisms against real servers: test_fanout.py,
test_reliability.py, test_https_transfer.py.)"""

from __future__ import annotations

import email.utils
import json
import os
import time
from pathlib import Path

import pytest

from model_provisioner.core.errors import TransferFailed
from model_provisioner.net.ranges import body_cap, content_range, range_end, total_and_start, unsatisfied_length
from model_provisioner.net.redirects import redirect_headers
from model_provisioner.net.retry import Backoff, is_retryable_status, parse_retry_after
from model_provisioner.transfer.fanout import FanoutController
from model_provisioner.transfer.partial import (
    Chunk,
    contiguous,
    merge_progress,
    open_progress,
    plan_chunks,
    progress_path,
    record_progress,
    valid_chunks,
)

from .helpers import MiB

MB = 1e6


def _run(controller: FanoutController, rate_of: dict[int, float], windows: int = 10) -> list[int]:
    """Feed ``controller`` one 1.5 s window per step at the aggregate rate ``rate_of[connections]``; the
    connection counts it chose, in order."""
    now, done = 0.0, 0
    controller.observe(now, done)
    chosen = [controller.target]
    for _ in range(windows):
        if controller.settled:
            break
        now += 1.5
        done += int(rate_of[controller.target] * 1.5)
        chosen.append(controller.observe(now, done))
    return chosen


# ------------------------------------------------------------------------------------------- fan-out controller
def test_fanout_starts_where_the_single_streams_rate_says_and_climbs_under_a_per_connection_cap() -> None:
    controller = FanoutController(maximum=16, single_rate=4 * MB, enough=100 * MB)
    # 4 MB/s a connection: 32 would be needed, so it starts at the most it may use
    assert controller.target == 16
    per_connection = {n: n * 4 * MB for n in (1, 2, 4, 8, 16)}
    assert _run(controller, per_connection)[-1] == 16
    assert controller.settled


def test_fanout_climbs_from_two_when_the_single_rate_is_unknown() -> None:
    controller = FanoutController(maximum=8, single_rate=None, enough=100 * MB)
    assert controller.target == 2
    chosen = _run(controller, {n: n * 5 * MB for n in (1, 2, 4, 8)})
    assert chosen == [2, 4, 8, 8]
    assert [n for n, _ in controller.history] == [2, 4, 8]


def test_fanout_behind_one_shared_bottleneck_settles_back_on_the_fewest_that_were_fastest() -> None:
    controller = FanoutController(maximum=8, single_rate=12 * MB, enough=100 * MB)
    shared = {n: 12 * MB for n in (1, 2, 4, 8)}  # the link, not the connection, is the limit
    chosen = _run(controller, shared)
    assert chosen[-1] == 1  # more connections were no faster than the one stream: back to one
    assert controller.settled


def test_fanout_steps_back_when_more_connections_slow_the_origin_down() -> None:
    controller = FanoutController(maximum=16, single_rate=None, enough=1000 * MB)
    slows_down = {2: 40 * MB, 4: 70 * MB, 8: 50 * MB, 16: 30 * MB}
    assert _run(controller, slows_down)[-1] == 4


def test_fanout_a_gain_under_twenty_percent_does_not_pay_for_the_connections() -> None:
    controller = FanoutController(maximum=8, single_rate=None, enough=1000 * MB)
    assert _run(controller, {2: 50 * MB, 4: 59 * MB, 8: 100 * MB})[-1] == 2


def test_fanout_needs_a_full_window_before_any_decision() -> None:
    controller = FanoutController(maximum=8, single_rate=None, enough=1000 * MB)
    controller.observe(0.0, 0)
    assert controller.observe(0.5, 10 * MiB) == 2  # half a window: no decision, however fast
    assert controller.history == []
    assert controller.observe(1.0, 20 * MiB) == 4
    assert len(controller.history) == 1


def test_fanout_with_one_connection_allowed_is_settled_from_the_start() -> None:
    controller = FanoutController(maximum=1, single_rate=1 * MB, enough=100 * MB)
    assert (controller.target, controller.settled) == (1, True)
    assert controller.observe(10.0, 100) == 1


# ------------------------------------------------------------------------------------- backoff and Retry-After
def test_backoff_doubles_is_capped_and_jittered_to_half_or_more() -> None:
    backoff = Backoff(base_s=1.0, max_s=8.0, retry_after_max_s=60.0)
    for attempt, full in ((1, 1.0), (2, 2.0), (3, 4.0), (4, 8.0), (9, 8.0)):
        delays = [backoff.delay(attempt) for _ in range(200)]
        assert all(full * 0.5 <= d <= full for d in delays), (attempt, min(delays), max(delays))
        assert max(delays) - min(delays) > full * 0.1  # jittered: many clients do not retry in step


def test_backoff_waits_at_least_what_retry_after_asks_and_at_most_its_cap() -> None:
    backoff = Backoff(base_s=0.1, max_s=1.0, retry_after_max_s=30.0)
    assert backoff.delay(1, retry_after=5.0) == 5.0
    assert backoff.delay(1, retry_after=3600.0) == 30.0  # a server asking for an hour gets the cap
    assert backoff.delay(1, retry_after=0.0) <= 0.1


def test_retry_after_as_seconds_or_an_http_date() -> None:
    assert parse_retry_after("7") == 7.0
    assert parse_retry_after("-3") == 0.0
    assert parse_retry_after(None) is None
    assert parse_retry_after("soon") is None
    in_a_minute = email.utils.formatdate(time.time() + 60, usegmt=True)
    assert 55 <= (parse_retry_after(in_a_minute) or 0) <= 60
    assert parse_retry_after(email.utils.formatdate(time.time() - 600, usegmt=True)) == 0.0


def test_which_statuses_are_retried() -> None:
    assert [s for s in (200, 206, 301, 404, 408, 429, 500, 503, 599) if is_retryable_status(s)] == [429, 500, 503, 599]


# --------------------------------------------------------------------------------------------- Content-Range
def test_content_range_of_a_206() -> None:
    served = content_range({"Content-Range": "bytes 100-199/1000", "Content-Length": "100"})
    assert served is not None and (served.start, served.end, served.total) == (100, 199, 1000)
    unknown = content_range({"Content-Range": "bytes 0-9/*"})
    assert unknown is not None and unknown.total is None


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Content-Range": "bytes 10-5/100"},  # ends before it starts
        {"Content-Range": "bytes 0-100/100"},  # past the total
        {"Content-Range": "bytes 0-8388607/9000000", "Content-Length": "1000"},  # a length the range contradicts
        {"Content-Range": "bytes 0-9/100", "Content-Length": "ten"},
        {"Content-Range": "items 0-9/100"},
        {"Content-Range": "bytes=0-9/100"},
    ],
)
def test_a_content_range_that_contradicts_itself_is_none(headers: dict[str, str]) -> None:
    assert content_range(headers) is None


def test_where_a_body_starts_and_how_much_of_it_may_arrive() -> None:
    ranged = {"Content-Range": "bytes 500-999/1000", "Content-Length": "500"}
    assert total_and_start(206, ranged) == (1000, 500)
    assert total_and_start(206, {"Content-Range": "nonsense"}) == (None, -1)
    assert total_and_start(200, {"Content-Length": "1000"}) == (1000, 0)
    assert total_and_start(200, {}) == (None, 0)
    assert range_end(206, ranged) == 999
    assert range_end(200, ranged) is None
    assert body_cap(206, ranged, 500, 1000) == 500
    assert body_cap(200, {}, 300, 1000) == 700  # what is left of the expected size
    assert body_cap(200, {}, 0, None) is None  # nothing bounds it: the digest check is what is left
    assert unsatisfied_length({"Content-Range": "bytes */4096"}) == 4096
    assert unsatisfied_length({"Content-Range": "bytes 0-1/2"}) is None


# ------------------------------------------------------------------------------------------------- redirects
def test_credentials_follow_a_redirect_only_to_the_very_same_origin() -> None:
    sent = {"Authorization": "Bearer s3cr3t", "Cookie": "c=1", "Accept": "*/*", "Range": "bytes=0-"}
    same = redirect_headers("https://hub.example/a", "https://hub.example/b", sent, False)
    assert same == sent
    for elsewhere in ("https://cdn.example/b", "https://hub.example:8443/b", "https://sub.hub.example/b"):
        carried = redirect_headers("https://hub.example/a", elsewhere, sent, False)
        assert "Authorization" not in carried and "Cookie" not in carried, elsewhere
        assert carried["Range"] == "bytes=0-"


def test_a_redirect_from_https_to_http_is_refused_unless_allowed_and_then_without_credentials() -> None:
    sent = {"Authorization": "Bearer s3cr3t"}
    with pytest.raises(TransferFailed, match="allow_https_downgrade"):
        redirect_headers("https://hub.example/a", "http://hub.example/a", sent, False)
    assert redirect_headers("https://hub.example/a", "http://hub.example/a", sent, True) == {}


# ------------------------------------------------------------------------------------------------ chunk map
def test_the_contiguous_prefix_stops_at_the_first_range_not_complete() -> None:
    chunks = [Chunk(0, 10, 10), Chunk(10, 20, 4), Chunk(20, 30, 10)]
    assert contiguous(chunks) == 14
    assert contiguous([Chunk(0, 10, 10), Chunk(10, 20, 10)]) == 20
    assert contiguous([Chunk(5, 10, 0)]) == 5  # a resumed download's map starts where the kept prefix ends


def test_planned_ranges_cover_the_rest_exactly_once() -> None:
    chunks = plan_chunks(kept=100, total=1000, chunk_bytes=300)
    assert [(c.start, c.end, c.written) for c in chunks] == [(100, 400, 0), (400, 700, 0), (700, 1000, 0)]


@pytest.mark.parametrize(
    "raw",
    [
        None,
        [],
        "0,10,0",
        [[0, 10]],  # not three numbers
        [[0, 10, -1]],
        [[0, 10, 11]],  # more written than the range spans
        [[10, 10, 0]],  # empty range
        [[0, 10, 0], [11, 20, 0]],  # a gap
        [[0, 10, 0], [5, 20, 0]],  # an overlap
        [[0, 10, 10], [10, 2000, 1995]],  # claims bytes past the end of the partial file
        [[0, 10, True]],
    ],
)
def test_a_chunk_map_that_cannot_be_true_is_refused(raw: object) -> None:
    assert valid_chunks(raw, file_size=1000) is None


def test_a_valid_chunk_map_round_trips_as_saved() -> None:
    raw = json.loads(json.dumps([Chunk(0, 10, 10).saved(), Chunk(10, 20, 3).saved()]))
    chunks = valid_chunks(raw, file_size=13)
    assert chunks == [Chunk(0, 10, 10), Chunk(10, 20, 3)]


def test_progress_counters_raise_the_map_only_where_they_are_plausible(tmp_path: Path) -> None:
    partial = tmp_path / "x.part"
    partial.write_bytes(b"")
    fd = open_progress(partial, [0, 0, 0])
    try:
        record_progress(fd, 0, 8)  # ahead of the map: taken
        record_progress(fd, 1, 99)  # more than its range spans: ignored
        record_progress(fd, 2, 1)  # behind the map: counters only ever grow
    finally:
        os.close(fd)
    chunks = [Chunk(0, 10, 2), Chunk(10, 20, 0), Chunk(20, 30, 5)]
    merge_progress(progress_path(partial), chunks, file_size=30)
    assert [c.written for c in chunks] == [8, 0, 5]
    merge_progress(progress_path(partial), [Chunk(0, 10, 0)], file_size=30)  # another layout: the map decides


def test_progress_counters_are_never_read_through_a_planted_link(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.write_bytes((9).to_bytes(8, "little"))
    partial = tmp_path / "x.part"
    progress_path(partial).symlink_to(outside)
    chunks = [Chunk(0, 10, 0)]
    merge_progress(progress_path(partial), chunks, file_size=10)
    assert chunks[0].written == 0
