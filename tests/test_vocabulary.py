"""The shared vocabulary (dte_tools.wire): one operation table, one set of error codes."""

from __future__ import annotations

import json
from typing import Any

import pytest

from clients.bridge.web_io import STATUS_BY_CODE
from dte_tools.wire import OPS, ErrorCode, Op, decode_events, encode_event, envelope, topic
from duftd import errors
from duftd.protocol import NoArgs, RunArgs, operation, operation_table


class OnlyHealth:
    @operation(Op.HEALTH)
    async def health(self, caller: Any, args: NoArgs) -> dict[str, Any]:
        return {}


def test_an_operation_without_a_handler_is_refused_at_startup() -> None:
    """A handler object that does not cover every wire operation cannot become the
    daemon's table: the error names what is missing."""
    with pytest.raises(RuntimeError, match=r"operations without a handler: .*'cancel'"):
        operation_table(OnlyHealth())


def test_the_table_takes_each_argument_model_from_the_handler() -> None:
    """Registering a handler registers its argument model: the ``args`` annotation."""

    class Every:
        pass

    for name in OPS:
        model = RunArgs if name == Op.RUN else NoArgs

        async def handler(self: Any, caller: Any, args: Any) -> dict[str, Any]:
            return {}

        handler.__annotations__["args"] = model
        setattr(Every, name.replace(".", "_"), operation(name)(handler))
    table = operation_table(Every())
    assert table.keys() == OPS
    assert table[Op.RUN].args is RunArgs and table[Op.HEALTH].args is NoArgs


def test_every_error_code_is_an_error_code_member() -> None:
    """duftd's errors and the bridge's status mapping use only ErrorCode members."""
    subclasses = [errors.DuftError, *errors.DuftError.__subclasses__()]
    assert all(isinstance(error.code, ErrorCode) for error in subclasses)
    assert all(isinstance(code, ErrorCode) for code in STATUS_BY_CODE)


def test_the_encoded_envelope_decodes_to_the_built_one() -> None:
    """The daemon's text form of an event (built from encoded parts) decodes to exactly
    the envelope clients build from a stored event."""
    stored = {"seq": 3, "ts": 1.25, "kind": "log", "data": {"message": 'a "b"'}}
    text = encode_event(7, json.dumps("app.task"), 3, 1.25, "log", json.dumps(stored["data"]))
    assert decode_events(f"[{text}]") == [envelope(7, "app.task", stored)]
    assert topic("app.task", 7) == b"ev/app.task/7/"


@pytest.mark.parametrize(
    "body", ["[]", "{}", '[{"run_id": 1}]', '[{"run_id":1,"seq":1},{"run_id":2,"seq":2}]']
)
def test_a_malformed_event_message_is_refused(body: str) -> None:
    """An event message must be a non-empty array of one run's events, each numbered."""
    with pytest.raises(ValueError):
        decode_events(body)
