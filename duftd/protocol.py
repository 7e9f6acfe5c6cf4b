"""Pydantic models for every control request on the bus, checked before any handler runs.

The frames, signing and names are in :mod:`dte_tools.wire`; this module only says what a
valid request body and each operation's arguments look like. Ingest events are checked
by hand in :mod:`duftd.ingest` instead: at 100k events/s a model per event costs too much.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from dte_tools.wire import ACTIVE_STATES, FINAL_STATES, MAX_NAME_LENGTH, Op

StateName = Annotated[
    str, Field(pattern="^(" + "|".join(sorted(ACTIVE_STATES | FINAL_STATES)) + ")$")
]
ShortText = Annotated[str, StringConstraints(min_length=1, max_length=MAX_NAME_LENGTH)]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class Envelope(Strict):
    """The body of every control request."""

    op: ShortText
    id: Annotated[str, StringConstraints(min_length=8, max_length=64)]
    ts: float | int
    args: dict[str, Any] = {}


class NoArgs(Strict):
    pass


class TasksArgs(Strict):
    all: bool = False


class TaskArgs(Strict):
    task: ShortText


class SubmitArgs(Strict):
    task: ShortText
    params: dict[str, Any] = {}
    requested_by: ShortText = "client"


class RunArgs(Strict):
    run: int = Field(ge=1)


class RunsArgs(Strict):
    task: ShortText | None = None
    state: StateName | None = None
    limit: int = Field(default=50, ge=1, le=10_000)


class EventsArgs(Strict):
    run: int = Field(ge=1)
    after: int = Field(default=0, ge=0)
    limit: int = Field(default=1000, ge=1, le=10_000)


class ConnectionArgs(Strict):
    id: ShortText


class SchedulesArgs(Strict):
    count: int = Field(default=3, ge=1, le=50)  # next firings per schedule


class ConnectionTestArgs(Strict):
    id: ShortText
    timeout_s: float = Field(default=10.0, gt=0, le=120)


class ClaimArgs(Strict):
    """Where a relay starts a run: the Dask worker, its host and the run's data folder."""

    worker: str = Field(max_length=500)
    host: str = Field(max_length=500)
    data_dir: str = Field(max_length=4096)


class RemoteEventsArgs(Strict):
    """A relay's numbered batch of ``[kind, ts, data]`` events (each number is taken once),
    the counts of what it could not read, and whether it is the run's last batch."""

    batch: int = Field(ge=1)
    events: list[Any] = Field(max_length=10_000)
    lost: dict[str, int] = Field(default_factory=dict, max_length=50)
    last: bool = False


ARGS: dict[str, type[Strict]] = {
    Op.HEALTH: NoArgs,
    Op.TASKS: TasksArgs,
    Op.TASK: TaskArgs,
    Op.SUBMIT: SubmitArgs,
    Op.CANCEL: RunArgs,
    Op.RUN: RunArgs,
    Op.RUNS: RunsArgs,
    Op.EVENTS: EventsArgs,
    Op.RELOAD: NoArgs,
    Op.SCHEDULES: SchedulesArgs,
    Op.TEST_CONNECTION: ConnectionTestArgs,
    Op.WORKER_HELLO: NoArgs,
    Op.WORKER_CONNECTION: ConnectionArgs,
    Op.WORKER_CLAIM: ClaimArgs,
    Op.WORKER_EVENTS: RemoteEventsArgs,
}
