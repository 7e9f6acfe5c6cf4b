"""Following a run: the one algorithm, as a state machine with no I/O.

A follower is fed what its driver received — pages of stored events (the ``events``
operation's reply), live batches (the PUB socket's messages), and "nothing came for a
while" — and answers with a :class:`Step`: the events to hand on, whether to ask the store
for the events after :attr:`RunFollower.last`, and whether the run is over. The drivers
only do I/O: :meth:`clients.bus.BusClient.follow` (synchronous, the CLI) and
:func:`clients.bridge.sse.follow_run` / :class:`clients.bridge.sse.LiveFeed` (asyncio).

The rules, which make the output gap-free, duplicate-free and in order:

- start by fetching from the store (the driver subscribes to live events first, so nothing
  published meanwhile is lost);
- hand on an event only if its number is ``last + 1``; skip numbers already handed on
  (duplicates, late or re-ordered batches); a number past ``last + 1`` is a gap, filled from
  the store (the store is the truth: a page is handed on as it comes);
- a quiet spell or a reconnection also goes back to the store: it finds a final state
  that was published but missed;
- the run is over after its final state event, or when a page says the run has ended and
  the caller already holds everything (then nothing is handed on at all, which the bridge
  answers with ``204``).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from dte_tools.wire import envelope, is_final

Event = dict[str, Any]

# How long a live stream may be quiet before the store is checked again (doubling to MAX).
QUIET_S = 1.0
QUIET_MAX_S = 5.0
# Finished runs a feed remembers, so that a late batch of one does not start it again.
FEED_FINISHED_MEMORY = 1024


@dataclass(frozen=True)
class Step:
    """What the driver does next: hand on ``emit``, then stop if ``done``, else fetch the
    events after the follower's ``last`` from the store if ``fetch``, else wait for live
    events (at most the follower's ``wait_s``)."""

    emit: list[Event] = field(default_factory=list)
    fetch: bool = False
    done: bool = False


class RunFollower:
    """The state of following one run from sequence number ``after``."""

    def __init__(self, run_id: int, task_id: str, after: int = 0) -> None:
        self.run_id = run_id
        self.task_id = task_id
        self.last = after
        self.done = False
        self.wait_s = QUIET_S

    def start(self) -> Step:
        """The first step: history from the store."""
        return Step(fetch=True)

    def page(self, page: dict[str, Any]) -> Step:
        """A reply to ``events`` (``{events: [{seq, ts, kind, data}], more, final?}``)."""
        emit = self._take(page["events"], from_store=True)
        if self.done:
            return Step(emit, done=True)
        if page["more"]:
            return Step(emit, fetch=True)
        if page.get("final"):
            self.done = True  # the caller already holds the final event
            return Step(emit, done=True)
        return Step(emit)

    def live(self, batch: list[Event]) -> Step:
        """One published batch of this run's events (any order, possibly seen before)."""
        self.wait_s = QUIET_S
        ordered = sorted(batch, key=lambda event: event["seq"])
        emit = self._take(ordered, from_store=False)
        gap = not self.done and any(event["seq"] > self.last for event in ordered)
        return Step(emit, fetch=gap, done=self.done)

    def quiet(self) -> Step:
        """Nothing came within ``wait_s``: check the store (and wait longer next time)."""
        self.wait_s = min(self.wait_s * 2, QUIET_MAX_S)
        return Step(fetch=True)

    def reset(self) -> Step:
        """Live events may have been missed (a reconnection, an overflowing queue)."""
        return Step(fetch=True)

    def _take(self, events: Iterable[Event], from_store: bool) -> list[Event]:
        emit: list[Event] = []
        for raw in events:
            seq = raw["seq"]
            if self.done or seq <= self.last:
                continue
            if seq != self.last + 1 and not from_store:
                break  # a gap: the rest comes from the store
            self.last = seq
            event = envelope(self.run_id, self.task_id, raw)
            emit.append(event)
            if is_final(event):
                self.done = True
        return emit


class FeedFollower:
    """Every run's events as they happen: a :class:`RunFollower` per run, from its first
    live event until its final state."""

    def __init__(self) -> None:
        self.open: dict[int, RunFollower] = {}
        self._finished: OrderedDict[int, None] = OrderedDict()

    def live(self, batch: list[Event]) -> tuple[RunFollower | None, Step]:
        """A published batch of any run: the run's follower (None if the run is over)
        and its step."""
        run_id = int(batch[0]["run_id"])
        follower = self.open.get(run_id)
        if follower is None:
            if run_id in self._finished:
                return None, Step(done=True)
            first = min(event["seq"] for event in batch)
            follower = RunFollower(run_id, str(batch[0]["task_id"]), after=first - 1)
            self.open[run_id] = follower
        return follower, self._settle(follower, follower.live(batch))

    def page(self, follower: RunFollower, page: dict[str, Any]) -> Step:
        """A page of the store fetched for ``follower``."""
        return self._settle(follower, follower.page(page))

    def gone(self, follower: RunFollower) -> None:
        """The store does not know the run (pruned, or another daemon's store)."""
        follower.done = True
        self._settle(follower, Step(done=True))

    def quiet(self) -> list[RunFollower]:
        """Nothing came for a while, or live events were missed: the runs to check in the
        store, oldest first."""
        return [self.open[run_id] for run_id in sorted(self.open)]

    def _settle(self, follower: RunFollower, step: Step) -> Step:
        if step.done and self.open.pop(follower.run_id, None) is not None:
            self._finished[follower.run_id] = None
            while len(self._finished) > FEED_FINISHED_MEMORY:
                self._finished.popitem(last=False)
        return step
