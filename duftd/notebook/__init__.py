"""Notebook tasks: parameter injection and the runner process that executes them."""
