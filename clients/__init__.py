"""Clients of duftd: the duft command line, the UI bridge and example scripts."""
