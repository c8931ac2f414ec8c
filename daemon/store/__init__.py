"""The store adapter: SQL tables and migrations (``models``, ``migrate``), engines for
PostgreSQL and SQLite (``engine``), and ``SqlStore`` (``repository``)."""
