"""A throwaway PostgreSQL server on 127.0.0.1 for tests: ``with postgres_server() as pg: pg.url``.

It uses the machine's PostgreSQL binaries (Debian's ``postgresql`` package: /usr/lib/postgresql/<version>/bin, or
``pg_ctl`` on PATH). initdb and postgres refuse to run as root, so under root they run as the ``postgres`` system
user, in a temporary folder given to that user. Durability is off (fsync, synchronous commit): the data lives as
long as the test session.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import psycopg
from psycopg import sql

SYSTEM_USER = "postgres"  # who runs the server when the tests run as root


@dataclass(frozen=True)
class PostgresServer:
    host: str
    port: int
    user: str
    password: str
    dbname: str

    @property
    def url(self) -> str:
        return self.url_for(self.dbname)

    def url_for(self, dbname: str) -> str:
        return f"postgresql://{self.user}:{self.password}@{self.host}:{self.port}/{dbname}"

    @contextmanager
    def fresh_database(self) -> Iterator[str]:
        """A new, empty database on this server for one test; its URL. Dropped afterwards."""
        name = f"test_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(self.url, autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        try:
            yield self.url_for(name)
        finally:
            with psycopg.connect(self.url, autocommit=True) as conn:
                conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


def find_bin_dir() -> Path | None:
    """The folder holding initdb and pg_ctl (the newest installed version), or None."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"), key=lambda p: int(Path(p).parts[-3]))
    if found:
        return Path(found[-1]).parent
    on_path = shutil.which("pg_ctl")
    return Path(on_path).parent if on_path else None


def unavailable_reason() -> str | None:
    """Why no server can be started here, or None when one can."""
    if find_bin_dir() is None:
        return ("PostgreSQL server binaries (initdb, pg_ctl) not found: install the `postgresql` package "
                "(Debian: apt-get install postgresql)")
    if os.geteuid() == 0:
        try:
            pwd.getpwnam(SYSTEM_USER)
        except KeyError:
            return f"running as root and there is no `{SYSTEM_USER}` user to run PostgreSQL as"
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def postgres_server(user: str = "astforge", password: str = "astforge-test", dbname: str = "astforge",
                    ) -> Iterator[PostgresServer]:
    """Start a fresh server (initdb, then pg_ctl start) with a password-protected superuser ``user`` and a
    database ``dbname``; stop it and delete its files on exit."""
    reason = unavailable_reason()
    if reason:
        raise RuntimeError(reason)
    bin_dir = find_bin_dir()
    as_root = os.geteuid() == 0
    owner = pwd.getpwnam(SYSTEM_USER) if as_root else None
    run_as = {"user": owner.pw_uid, "group": owner.pw_gid} if owner else {}
    base = Path(tempfile.mkdtemp(prefix="astforge-pg-"))
    data, sockets, log = base / "data", base / "sockets", base / "server.log"
    sockets.mkdir()
    pwfile = base / "pwfile"
    pwfile.write_text(password + "\n")
    if owner:
        for p in (base, sockets, pwfile):
            os.chown(p, owner.pw_uid, owner.pw_gid)
    env = dict(os.environ, LC_ALL="C", LANG="C")
    env.pop("PGDATA", None)
    port = _free_port()
    started = False
    try:
        subprocess.run(
            [str(bin_dir / "initdb"), "-D", str(data), "-U", user, f"--pwfile={pwfile}", "--auth-local=trust",
             "--auth-host=scram-sha-256", "-E", "UTF8", "--no-sync", "--no-instructions"],
            check=True, capture_output=True, text=True, env=env, cwd=base, **run_as)
        options = (f"-h 127.0.0.1 -p {port} -k {sockets} -c fsync=off -c synchronous_commit=off "
                   f"-c full_page_writes=off -c max_connections=200")
        subprocess.run([str(bin_dir / "pg_ctl"), "-D", str(data), "-l", str(log), "-o", options, "-w", "-t", "60",
                        "start"], check=True, capture_output=True, text=True, env=env, cwd=base, **run_as)
        started = True
        server = PostgresServer("127.0.0.1", port, user, password, dbname)
        with psycopg.connect(server.url_for("postgres"), autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(dbname)))
        yield server
    except subprocess.CalledProcessError as exc:
        tail = log.read_text()[-2000:] if log.exists() else ""
        raise RuntimeError(f"could not start PostgreSQL ({' '.join(exc.cmd[:1])}): {exc.stderr}\n{tail}") from exc
    finally:
        if started:
            subprocess.run([str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop"],
                           capture_output=True, env=env, cwd=base, **run_as)
        shutil.rmtree(base, ignore_errors=True)
