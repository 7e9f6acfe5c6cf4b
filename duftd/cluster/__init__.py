"""Runs placed on a Dask cluster (``duftd --launcher dask``).

The daemon's side: ``connect`` (the scheduler address rules, TLS, submitting a job) and
``launcher`` (each run as one Dask task, driven like a local supervisor). The Dask side:
``remote`` (the job itself, shipped by value and importing only the standard library at
its top, so a Dask worker whose Python lacks this package says so) and ``relay`` (the
run's worker and its events there). ``bundle`` (the task folder, content-addressed) is
used on both sides.
"""
