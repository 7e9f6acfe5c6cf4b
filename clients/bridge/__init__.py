"""The UI bridge: duftd's tasks and runs over HTTP (JSON and Server-Sent Events), a small page,
and the endpoints DUFT's web UI calls. Start it with ``duft-bridge`` (see :mod:`.app`)."""
