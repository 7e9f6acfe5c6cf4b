"""The only owner of the ``events`` PUB socket."""

from __future__ import annotations

import zmq

# Messages (each a batch of up to 500 events of one run) queued for a subscriber that
# falls behind; past this it loses live events and backfills from the store. Queued
# messages are shared by all subscribers: this bounds what stalled ones cost the daemon
# (about 35 MB), where 100,000 let three stalled subscribers of a 1M-event run hold 140 MB.
PUB_HIGH_WATER_MARK = 500  # set by the server before it binds (libzmq reads it then)


class Publisher:
    """Publishes ``[topic, body]`` messages without ever blocking the event loop."""

    def __init__(self, socket: zmq.Socket) -> None:
        # Sent through a plain shadow of the socket: the asyncio socket's send makes a
        # future and registers it with the loop on every message (7% of the loop's time
        # under an event flood), for a send that never waits.
        self._socket = zmq.Socket.shadow(socket.underlying)
        self._owner = socket  # the shadow does not keep the socket open

    def publish(self, topic: bytes, body: str) -> None:
        self._socket.send_multipart([topic, body.encode()], flags=zmq.NOBLOCK)
