"""The only owner of the ``events`` PUB socket."""

from __future__ import annotations

import zmq

# Subscribers that fall this far behind lose live events and backfill from the store.
PUB_HIGH_WATER_MARK = 100_000


class Publisher:
    """Publishes ``[topic, body]`` messages without ever blocking the event loop."""

    def __init__(self, socket: zmq.Socket) -> None:
        self._socket = socket
        socket.sndhwm = PUB_HIGH_WATER_MARK
        self.published = 0

    def publish(self, topic: bytes, body: str) -> None:
        self._socket.send_multipart([topic, body.encode()], flags=zmq.NOBLOCK)
        self.published += 1
