"""Real services for the shared-registry tests: a PostgreSQL cluster and an S3 endpoint.

PostgreSQL runs from the Debian package `.ci/run` installs (initdb + pg_ctl, as the
`postgres` user when the tests run as root) in a temp directory on a free loopback
port; S3 is moto's server mode on loopback. If either truly cannot start, the tests
that need it are skipped with the reason printed, never silently.
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _pg_bin(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    candidates = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    return candidates[-1] if candidates else None


def _skip_loudly(reason: str) -> None:
    sys.stderr.write(f"\n*** SKIPPING shared-registry tests: {reason} ***\n")
    pytest.skip(reason)


class Postgres:
    """A throwaway PostgreSQL cluster; ``database()`` makes a fresh database per test."""

    def __init__(self) -> None:
        initdb, pg_ctl = _pg_bin("initdb"), _pg_bin("pg_ctl")
        if not initdb or not pg_ctl:
            _skip_loudly("PostgreSQL (initdb, pg_ctl) is not installed; .ci/run installs it")
        assert initdb and pg_ctl
        self.pg_ctl = pg_ctl
        self.root = Path(tempfile.mkdtemp(prefix="modelcrate-pg-"))
        self.data, self.port = self.root / "data", _free_port()
        self.as_user: list[str] = []
        if os.geteuid() == 0:  # PostgreSQL refuses to run as root
            shutil.chown(self.root, "postgres", "postgres")
            self.as_user = ["runuser", "-u", "postgres", "--"]
        self._run([initdb, "-D", str(self.data), "-A", "trust", "-U", "postgres", "-E", "UTF8"])
        options = (
            f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 "
            "-c fsync=off -c max_connections=200"
        )
        self._run(
            [
                pg_ctl,
                "-D",
                str(self.data),
                "-o",
                options,
                "-l",
                str(self.root / "log"),
                "-w",
                "start",
            ]
        )
        self.count = 0

    def _run(self, command: list[str]) -> None:
        result = subprocess.run([*self.as_user, *command], capture_output=True, text=True)
        if result.returncode != 0:
            _skip_loudly(f"PostgreSQL could not start: {result.stderr.strip()[-300:]}")

    def database(self) -> str:
        import psycopg

        self.count += 1
        name = f"mc{self.count}"
        with psycopg.connect(
            f"postgresql://postgres@127.0.0.1:{self.port}/postgres", autocommit=True
        ) as connection:
            connection.execute(f"CREATE DATABASE {name}")
        return f"postgresql://postgres@127.0.0.1:{self.port}/{name}"

    def stop(self) -> None:
        subprocess.run(
            [*self.as_user, self.pg_ctl, "-D", str(self.data), "-m", "immediate", "stop"],
            capture_output=True,
        )
        shutil.rmtree(self.root, ignore_errors=True)


class S3:
    """moto's S3 server on loopback, with the AWS settings boto3 reads set for this process
    (and so for the subprocesses tests start)."""

    def __init__(self, monkey: pytest.MonkeyPatch) -> None:
        from moto.server import ThreadedMotoServer

        self.port = _free_port()
        self.server = ThreadedMotoServer(ip_address="127.0.0.1", port=self.port, verbose=False)
        self.server.start()
        self.url = f"http://127.0.0.1:{self.port}"
        for key, value in {
            "AWS_ENDPOINT_URL": self.url,
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": "us-east-1",
        }.items():
            monkey.setenv(key, value)
        self.count = 0

    def bucket(self) -> str:
        import boto3

        self.count += 1
        name = f"models-{self.count}"
        boto3.client("s3").create_bucket(Bucket=name)
        return name

    def keys(self, bucket: str) -> list[str]:
        import boto3

        listed = boto3.client("s3").list_objects_v2(Bucket=bucket)
        return [item["Key"] for item in listed.get("Contents", [])]

    def stop(self) -> None:
        self.server.stop()


class OciRegistry:
    """A real OCI distribution registry (Debian's docker-registry) on a loopback port."""

    def __init__(self) -> None:
        binary = shutil.which("docker-registry")
        if binary is None:
            _skip_loudly("docker-registry is not installed; .ci/run installs it")
        assert binary is not None
        self.root = Path(tempfile.mkdtemp(prefix="modelcrate-oci-"))
        self.port = _free_port()
        config = self.root / "config.yml"
        config.write_text(
            "version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n"
            f"    rootdirectory: {self.root / 'data'}\n  delete:\n    enabled: true\n"
            f"http:\n  addr: 127.0.0.1:{self.port}\n"
        )
        quiet = subprocess.DEVNULL
        self.process = subprocess.Popen([binary, "serve", str(config)], stdout=quiet, stderr=quiet)
        self.host = f"127.0.0.1:{self.port}"
        import time

        import httpx

        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"http://{self.host}/v2/", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                time.sleep(0.1)
        self.stop()
        _skip_loudly("docker-registry did not start")

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=10)
        shutil.rmtree(self.root, ignore_errors=True)


@pytest.fixture(scope="session")
def oci_registry() -> Iterator[OciRegistry]:
    server = OciRegistry()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def postgres() -> Iterator[Postgres]:
    server = Postgres()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def s3() -> Iterator[S3]:
    monkey = pytest.MonkeyPatch()
    server = S3(monkey)
    yield server
    server.stop()
    monkey.undo()
