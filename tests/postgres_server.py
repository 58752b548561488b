"""A throwaway PostgreSQL server for the study tests: `initdb` in a temporary folder, loopback only, trust
authentication, stopped at the end. As root it runs as the `postgres` user (initdb refuses root)."""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import tempfile
from pathlib import Path

from conftest import free_port


def _bin(name: str) -> Path | None:
    """A PostgreSQL server program: on PATH, else the newest under Debian's /usr/lib/postgresql/<major>/bin."""
    found = shutil.which(name)
    if found:
        return Path(found)
    versions = sorted(Path("/usr/lib/postgresql").glob(f"*/bin/{name}"), key=lambda p: int(p.parts[-3]))
    return versions[-1] if versions else None


class PostgresServer:
    """`start()` it, make databases with `database(name)` (a URL), `stop()` it (its folder is removed)."""

    def __init__(self) -> None:
        self.folder: Path | None = None
        self.port, self.user = free_port(), "finscale"
        self.initdb, self.pg_ctl = _bin("initdb"), _bin("pg_ctl")
        self.as_user: list[str] = []
        if os.geteuid() == 0:
            try:
                pwd.getpwnam("postgres")
                self.as_user = ["runuser", "-u", "postgres", "--"]
            except KeyError:
                self.as_user = None  # root without a postgres user: no server

    def unavailable(self) -> str | None:
        """Why no server can be started here, or None."""
        if self.initdb is None or self.pg_ctl is None:
            return "no PostgreSQL server programs (initdb, pg_ctl): apt-get install postgresql"
        if self.as_user is None:
            return "running as root and there is no `postgres` user to run the server as"
        try:
            import psycopg  # noqa: F401
        except ImportError:
            return "no PostgreSQL driver: pip install -e '.[postgres]'"
        return None

    def _run(self, *command: str) -> None:
        subprocess.run([*self.as_user, *command], check=True, capture_output=True, text=True, timeout=120)

    def start(self) -> None:
        # its own folder under /tmp: pytest's (mode 700, root's) is closed to the postgres user
        self.folder = Path(tempfile.mkdtemp(prefix="finscale-postgres-"))
        if self.as_user:
            shutil.chown(self.folder, "postgres")
        data, log = self.folder / "data", self.folder / "server.log"
        self._run(str(self.initdb), "-D", str(data), "-U", self.user, "--auth=trust", "-E", "UTF8", "--no-sync")
        # loopback only; a client stopped inside a transaction (SIGSTOP) must not hold its locks for ever
        options = (f"-k {self.folder} -p {self.port} -c listen_addresses=127.0.0.1 -c fsync=off "
                   "-c idle_in_transaction_session_timeout=5s")  # fmt: skip
        self._run(str(self.pg_ctl), "-D", str(data), "-l", str(log), "-o", options, "-w", "start")

    def database(self, name: str) -> str:
        """A new empty database; its SQLAlchemy URL."""
        import psycopg

        with psycopg.connect(host="127.0.0.1", port=self.port, user=self.user, dbname="postgres") as db:
            db.autocommit = True
            db.execute(f'CREATE DATABASE "{name}"')
        return f"postgresql://{self.user}@127.0.0.1:{self.port}/{name}"

    def stop(self) -> None:
        if self.folder is None:
            return
        try:
            self._run(str(self.pg_ctl), "-D", str(self.folder / "data"), "-m", "immediate", "-w", "stop")
        finally:
            shutil.rmtree(self.folder, ignore_errors=True)
