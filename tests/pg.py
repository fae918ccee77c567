"""A real PostgreSQL for the tests, never a mock: the server at ``$ASYNCBATCH_TEST_PG_DSN`` (a role that may create
databases), else a throwaway cluster of this machine's PostgreSQL (Debian's ``/usr/lib/postgresql/*/bin``) started
on a unix socket in a temporary directory with ``fsync=off``, and removed at the end of the session.

Each test gets a database of its own, copied from a template that holds the schema already (``CREATE DATABASE ...
TEMPLATE``: milliseconds). Without a server the PostgreSQL tests skip, except in CI (``CI`` set), where they fail.
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import tempfile
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import anyio

PG_DSN_ENV = "ASYNCBATCH_TEST_PG_DSN"


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() not in ("", "0", "false", "no")


def server_bin() -> Path | None:
    """The newest PostgreSQL server binaries on this machine, or None."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(Path(p).parts[-3]))
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


def with_url_db(dsn: str, dbname: str) -> str:
    """``dsn`` pointed at another database of the same server."""
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(dsn)
    return urlunsplit((parts.scheme, parts.netloc, "/" + dbname, parts.query, ""))


class Cluster:
    """A PostgreSQL cluster of its own in a temporary directory, reachable only through its unix socket."""

    def __init__(self, bindir: Path, settings: str = "-c fsync=off -c full_page_writes=off") -> None:
        self.bindir = bindir
        self.settings = settings
        self.root = Path(tempfile.mkdtemp(prefix="asyncbatch-pg-"))
        self.data = self.root / "data"
        self.dsn = f"postgresql://postgres@/postgres?host={self.root}"

    def _run(self, *args: str) -> None:
        command = [str(self.bindir / args[0]), *args[1:]]
        if os.geteuid() == 0:  # initdb refuses root: the cluster belongs to the postgres user
            command = ["runuser", "-u", "postgres", "--", *command]
        subprocess.run(command, check=True, capture_output=True, cwd=self.root)

    def start(self) -> None:
        if os.geteuid() == 0:
            shutil.chown(self.root, user="postgres")
        self._run("initdb", "-D", str(self.data), "-A", "trust", "-U", "postgres", "--no-sync", "-E", "UTF8")
        self._start()

    def _start(self) -> None:
        options = f"-k {self.root} -c listen_addresses='' -c max_connections=200 {self.settings}"
        self._run("pg_ctl", "-D", str(self.data), "-o", options, "-l", str(self.root / "log"), "-w", "start")

    def restart(self) -> None:
        """Stop the server abruptly (as a crash would) and start it again."""
        self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "stop")
        self._start()

    def stop(self) -> None:
        try:
            self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "stop")
        finally:
            shutil.rmtree(self.root, ignore_errors=True)


class Server:
    """Where the tests' databases are made: ``database()`` gives the URL of a new one with the schema in it."""

    def __init__(self, dsn: str, cluster: Cluster | None = None) -> None:
        self.dsn = dsn
        self.cluster = cluster
        self.prefix = f"ab_{os.getpid()}_"
        self.template = f"{self.prefix}template"
        self._created: list[str] = []

    def admin(self, sql: str) -> None:
        import psycopg

        with psycopg.connect(self.dsn, autocommit=True) as conn:
            conn.execute(sql)

    def prepare(self) -> None:
        from asyncbatch.store.postgres import PostgresStore

        self.admin(f'CREATE DATABASE "{self.template}" TEMPLATE template0 ENCODING UTF8')
        self._created.append(self.template)

        async def make_schema() -> None:
            store = PostgresStore(with_url_db(self.dsn, self.template))
            await store.open()
            await store.close()

        with ThreadPoolExecutor(1) as thread:  # the fixture may be set up while the test's loop runs
            thread.submit(anyio.run, make_schema).result()

    def database(self, *, empty: bool = False) -> str:
        """A new database: with the schema (from the template), or ``empty``."""
        name = f"{self.prefix}{uuid.uuid4().hex[:12]}"
        self.admin(f'CREATE DATABASE "{name}" TEMPLATE "{"template0" if empty else self.template}"')
        self._created.append(name)
        return with_url_db(self.dsn, name)

    def drop(self, url: str) -> None:
        name = url.split("?")[0].rsplit("/", 1)[1]
        self.admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        self._created.remove(name)

    def close(self) -> None:
        try:
            for name in reversed(self._created):
                self.admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            if self.cluster is not None:
                self.cluster.stop()


def start_server() -> Server | str:
    """The tests' server, or why there is none."""
    try:
        import psycopg  # noqa: F401
    except ImportError:
        return "psycopg is not installed (pip install 'asyncbatch[postgres]')"
    if dsn := os.environ.get(PG_DSN_ENV):
        server = Server(dsn)
    else:
        bindir = server_bin()
        if bindir is None:
            return f"no PostgreSQL server on this machine (install postgresql, or set {PG_DSN_ENV})"
        cluster = Cluster(bindir)
        try:
            cluster.start()
        except subprocess.CalledProcessError as exc:
            cluster.stop()
            return f"cannot start a PostgreSQL cluster: {exc.stderr.decode(errors='replace')[-500:]}"
        server = Server(cluster.dsn, cluster)
    server.prepare()
    return server
