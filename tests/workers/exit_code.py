"""Reports failure the old way: a line on stdout, then ``sys.exit(3)``."""

import sys

print("giving up with exit code 3")
sys.exit(3)
