"""``python -m duftd`` starts the daemon."""

import sys

from duftd.cli import main

sys.exit(main())
