"""A private MariaDB server for the chart's end-to-end tests: its own data
folder, socket and loopback port, the OpenStack schema, stopped and started
again on the same data to stand in for a database outage.

The Rust tests have the same thing in testkit/src/mariadb.rs; this one exists
because these tests drive the released binaries from Python. It never touches
the machine's own MariaDB (no defaults files, no system socket, no port but
its own).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

from chart import REPO, terminate

SCHEMA = REPO / "testkit" / "sql" / "schema-mysql.sql"
USER = "multinic"
PASSWORD = "multinic-test"
DATABASE = "multinic"


def tool(name: str) -> str | None:
    """`name` on PATH or in the sbin folders, where Debian puts mariadbd."""
    return shutil.which(name) or next(
        (str(p) for d in ("/usr/sbin", "/sbin") if (p := Path(d) / name).exists()), None
    )


def available() -> bool:
    return all(tool(t) for t in ("mariadbd", "mariadb-install-db", "mariadb"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class MariaDB:
    """A running server; `stop()` and `start()` keep its data."""

    def __init__(self, work: Path):
        self.dir = work
        self.data = work / "data"
        self.socket = work / "mysqld.sock"
        self.port = free_port()
        self.process: subprocess.Popen | None = None
        root = ["--user=root"] if os.geteuid() == 0 else []
        subprocess.run(
            [tool("mariadb-install-db"), "--no-defaults", f"--datadir={self.data}",
             "--auth-root-authentication-method=normal", "--skip-test-db", "--skip-name-resolve", *root],
            check=True, capture_output=True, text=True,
        )
        self.start()
        self.sql(
            f"DROP USER IF EXISTS ''@'localhost'; CREATE DATABASE {DATABASE};"
            f"CREATE USER '{USER}'@'127.0.0.1' IDENTIFIED BY '{PASSWORD}';"
            f"GRANT ALL ON {DATABASE}.* TO '{USER}'@'127.0.0.1';"
        )
        self.sql(SCHEMA.read_text(), database=DATABASE)

    @property
    def url(self) -> str:
        return f"mysql://{USER}:{PASSWORD}@127.0.0.1:{self.port}/{DATABASE}"

    def start(self) -> None:
        """Starts the server on its port and data and waits until it answers."""
        root = ["--user=root"] if os.geteuid() == 0 else []
        self.process = subprocess.Popen(
            [tool("mariadbd"), "--no-defaults", f"--datadir={self.data}", f"--socket={self.socket}",
             f"--port={self.port}", "--bind-address=127.0.0.1", "--skip-name-resolve", "--skip-log-bin",
             "--innodb-buffer-pool-size=32M", f"--pid-file={self.dir / 'mariadbd.pid'}",
             f"--log-error={self.dir / 'mariadbd.log'}", *root],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"mariadbd exited: {self.log()}")
            if self.socket.exists() and self.try_sql("SELECT 1") is not None:
                return
            time.sleep(0.1)
        raise RuntimeError(f"mariadbd did not start in 60 s: {self.log()}")

    def stop(self) -> None:
        """SIGTERM, as an outage that keeps the data."""
        if self.process:
            terminate(self.process, timeout=30)
        self.process = None

    def sql(self, statements: str, database: str | None = None) -> str:
        out = self.try_sql(statements, database)
        if out is None:
            raise RuntimeError(f"SQL failed: {statements[:200]}")
        return out

    def try_sql(self, statements: str, database: str | None = None) -> str | None:
        cmd = [tool("mariadb"), "--no-defaults", f"--socket={self.socket}", "-uroot", "-N", "-B"]
        if database:
            cmd.append(database)
        done = subprocess.run(cmd, input=statements, capture_output=True, text=True)
        return done.stdout if done.returncode == 0 else None

    def log(self) -> str:
        path = self.dir / "mariadbd.log"
        return path.read_text() if path.exists() else ""
