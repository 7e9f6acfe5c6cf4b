"""Runs placed on a Dask cluster (``duftd --launcher dask``).

``connect`` is the daemon's side (the scheduler address rules, TLS, the client);
``bundle`` and ``remote`` also run on Dask workers, shipped there by value, so they import
only the standard library (and ``distributed``) at their top: a Dask worker whose Python
lacks this package gets a clear reason instead of an unpickling error.
"""
