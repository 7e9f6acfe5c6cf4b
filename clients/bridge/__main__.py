"""``python -m clients.bridge``: the same as the ``duft-bridge`` command."""

import sys

from clients.bridge.app import main

sys.exit(main())
