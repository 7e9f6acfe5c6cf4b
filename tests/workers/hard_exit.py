"""Leaves with ``os._exit(1)``: no exception, no atexit handlers, no flushing."""

import os

print("leaving hard", flush=True)
os._exit(1)
