"""Throwaway servers for tests: a private PostgreSQL cluster on loopback."""

from __future__ import annotations

import glob
import itertools
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager

from tests.conftest import require_system_tool


def _postgres_program(name: str) -> str:
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}")) or ([shutil.which(name)] if shutil.which(name) else [])
    if not found:
        require_system_tool(name)  # skips, or fails in CI
    return found[-1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def postgres_server() -> Iterator[str]:
    """Start PostgreSQL on 127.0.0.1 in a temporary folder; yield a URL prefix (no database)."""
    url = os.environ.get("BENCH_TEST_POSTGRES_URL")
    if url:
        yield url.rsplit("/", 1)[0]
        return
    initdb, pg_ctl = _postgres_program("initdb"), _postgres_program("pg_ctl")
    folder = tempfile.mkdtemp(prefix="bench-pg-")
    # PostgreSQL refuses to run as root: run it as the postgres user where we are root.
    as_user: list[str] = []
    if os.geteuid() == 0:
        user = pwd.getpwnam("postgres")
        os.chown(folder, user.pw_uid, user.pw_gid)
        as_user = ["runuser", "-u", "postgres", "--"]
    data, port = os.path.join(folder, "data"), _free_port()
    subprocess.run([*as_user, initdb, "-D", data, "-A", "trust", "-U", "bench", "--no-sync"],
                   check=True, capture_output=True)
    subprocess.run([*as_user, pg_ctl, "-D", data, "-l", os.path.join(folder, "log"), "-w", "-t", "60",
                    "-o", f"-p {port} -k {folder} -c listen_addresses=127.0.0.1 -c max_connections=200",
                    "start"], check=True, capture_output=True)
    try:
        yield f"postgresql://bench@127.0.0.1:{port}"  # the README's form, with the [postgres] driver
    finally:
        subprocess.run([*as_user, pg_ctl, "-D", data, "-m", "immediate", "stop"], capture_output=True)
        shutil.rmtree(folder, ignore_errors=True)


_databases = itertools.count()


def new_database(server: str) -> str:
    """A fresh, empty database on the server; its URL."""
    import sqlalchemy

    name = f"bench_{os.getpid()}_{next(_databases)}"
    engine = sqlalchemy.create_engine(f"{server}/postgres", isolation_level="AUTOCOMMIT")
    with engine.connect() as connection:
        connection.execute(sqlalchemy.text(f"CREATE DATABASE {name}"))
    engine.dispose()
    return f"{server}/{name}"
