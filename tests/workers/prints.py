"""Writes to stdout and stderr, interleaved, ending with a line that has no newline."""

import sys

print("out 1")
print("err 1", file=sys.stderr)
print("out 2\nout 3")
print("err 2", file=sys.stderr)
sys.stdout.write("out last, no newline")
