"""One way for every command to reach the database: libpq conventions (``--dsn``, else the
``PG*`` environment), autocommit, and a name in ``pg_stat_activity`` saying which command."""

from __future__ import annotations

from typing import Any

import psycopg


def connect(dsn: str | None, application: str | None = None) -> psycopg.Connection[Any]:
    if application is None:
        return psycopg.connect(dsn or "", autocommit=True)
    return psycopg.connect(dsn or "", autocommit=True, application_name=application)
