"""The follow algorithm alone (clients.follow): no sockets, no daemon, just what it is fed."""

from __future__ import annotations

from typing import Any

from clients.follow import FEED_FINISHED_MEMORY, QUIET_MAX_S, FeedFollower, RunFollower
from dte_tools.wire import envelope

RUN, TASK = 7, "demo.task"


def stored(seq: int, final: bool = False) -> dict[str, Any]:
    if final:
        return {"seq": seq, "ts": 1.0, "kind": "state", "data": {"state": "succeeded"}}
    return {"seq": seq, "ts": 1.0, "kind": "log", "data": {"message": f"m{seq}"}}


def live(*seqs: int, final_at: int | None = None, run_id: int = RUN) -> list[dict[str, Any]]:
    return [envelope(run_id, TASK, stored(seq, seq == final_at)) for seq in seqs]


def page(*seqs: int, more: bool = False, final: bool = False) -> dict[str, Any]:
    return {"events": [stored(seq) for seq in seqs], "more": more, "final": final}


def seqs(events: list[dict[str, Any]]) -> list[int]:
    return [event["seq"] for event in events]


def test_history_then_live_in_order_with_the_published_shape() -> None:
    """It fetches first, pages while ``more``, then takes live batches; stored events get
    the same envelope as published ones."""
    follower = RunFollower(RUN, TASK)
    assert follower.start().fetch
    step = follower.page(page(1, 2, more=True))
    assert seqs(step.emit) == [1, 2] and step.fetch and not step.done
    assert step.emit[0] == envelope(RUN, TASK, stored(1))
    step = follower.page(page(3))
    assert seqs(step.emit) == [3] and not step.fetch and not step.done
    step = follower.live(live(4, 5))
    assert seqs(step.emit) == [4, 5] and not step.fetch and follower.last == 5


def test_duplicates_are_skipped() -> None:
    """A live batch overlapping what the store gave (or seen twice) hands on only new numbers."""
    follower = RunFollower(RUN, TASK)
    follower.page(page(1, 2, 3))
    step = follower.live(live(2, 3, 4))
    assert seqs(step.emit) == [4] and not step.fetch
    step = follower.live(live(3, 4))
    assert step.emit == [] and not step.fetch


def test_a_gap_is_filled_from_the_store() -> None:
    """A batch starting past ``last + 1`` hands on nothing after the gap and asks the
    store for what follows ``last``; the later live copy is then a duplicate."""
    follower = RunFollower(RUN, TASK)
    follower.page(page(1))
    step = follower.live(live(2, 4, 5))
    assert seqs(step.emit) == [2] and step.fetch and follower.last == 2
    step = follower.page(page(3, 4, 5))
    assert seqs(step.emit) == [3, 4, 5] and not step.fetch
    assert follower.live(live(4, 5)).emit == []


def test_a_reordered_batch_is_put_in_order() -> None:
    """Events of a batch out of order are handed on in sequence order."""
    follower = RunFollower(RUN, TASK)
    follower.page(page())
    step = follower.live(live(3, 1, 2))
    assert seqs(step.emit) == [1, 2, 3] and not step.fetch


def test_the_final_event_ends_the_run_and_nothing_follows() -> None:
    """The final state is the last event handed on, wherever it came from."""
    follower = RunFollower(RUN, TASK)
    follower.page(page(1))
    step = follower.live(live(2, 3, 4, final_at=3))
    assert seqs(step.emit) == [2, 3] and step.done and not step.fetch
    assert follower.live(live(4)).emit == []
    from_store = RunFollower(RUN, TASK)
    step = from_store.page({"events": [stored(1), stored(2, final=True)], "more": False})
    assert seqs(step.emit) == [1, 2] and step.done


def test_a_caller_holding_the_final_event_gets_nothing() -> None:
    """A page saying the run has ended, with nothing after ``after``, ends it at once with
    nothing handed on (the bridge answers 204 to a browser that resumes then)."""
    follower = RunFollower(RUN, TASK, after=9)
    step = follower.page(page(final=True))
    assert step.done and step.emit == []


def test_quiet_spells_go_back_to_the_store_and_back_off() -> None:
    """No live batch for a while means: check the store, and wait longer next time, up to
    a bound; a live batch brings the wait back down."""
    follower = RunFollower(RUN, TASK)
    first = follower.wait_s
    for _ in range(10):
        assert follower.quiet().fetch
    assert follower.wait_s == QUIET_MAX_S
    follower.live(live(1))
    assert follower.wait_s == first
    assert follower.reset().fetch


def test_feed_follows_each_run_from_its_first_live_event_to_its_final() -> None:
    """The feed of all runs starts a run at its first live batch, fills gaps per run, ends
    it at its final state and ignores late batches of a finished run."""
    feed = FeedFollower()
    follower, step = feed.live(live(5, 6))
    assert follower is not None and seqs(step.emit) == [5, 6] and not step.fetch
    other, step = feed.live(live(1, run_id=8))
    assert other is not None and seqs(step.emit) == [1]
    follower, step = feed.live(live(8))
    assert follower is not None and step.emit == [] and step.fetch
    assert [f.run_id for f in feed.quiet()] == [RUN, 8]
    step = feed.page(follower, {"events": [stored(7), stored(8, final=True)], "more": False})
    assert seqs(step.emit) == [7, 8] and step.done
    assert [f.run_id for f in feed.quiet()] == [8]
    late, step = feed.live(live(8, final_at=8))
    assert late is None and step.emit == [] and step.done


def test_feed_forgets_a_run_the_store_does_not_know_and_bounds_its_memory() -> None:
    """A run the store refuses is dropped; finished runs are remembered only up to a bound."""
    feed = FeedFollower()
    follower, _ = feed.live(live(1))
    assert follower is not None
    feed.gone(follower)
    assert feed.quiet() == []
    for run_id in range(100, 100 + FEED_FINISHED_MEMORY + 1):
        feed.live(live(1, final_at=1, run_id=run_id))
    restarted, step = feed.live(live(2, run_id=100))
    assert restarted is not None and seqs(step.emit) == [2]
