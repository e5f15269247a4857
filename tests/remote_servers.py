"""Real servers on 127.0.0.1 for the remote-storage tests, and their fixtures.

- dtool-http's own request handler (``dtool_http.server``) serving a directory of datasets,
  run as a subprocess of this file (``python remote_servers.py http DIR``);
- s3rver, the S3-compatible server from npm (``make test`` installs it into
  ``.venv/node``), with one fresh bucket per test.

Each server binds port 0 and reports the port it got, so parallel runs never clash; the
fixtures wait for it with a bounded timeout and always stop the process. Where s3rver (or
node) is missing the s3 tests are skipped, unless ``REPRODL_REQUIRE_SERVERS=1`` (CI), where
they fail.

Import the fixtures into a test module with ``from remote_servers import *``.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

__all__ = [
    "HTTPServer",
    "S3Bucket",
    "closed_port",
    "dtool_cache",
    "http_root",
    "http_server",
    "s3_bucket",
    "s3_server",
    "s3rver_running",
    "write_dirtree",
]

HOST = "127.0.0.1"
START_TIMEOUT = 30.0  # seconds for a server to report its port and accept connections
S3_KEY = "S3RVER"  # s3rver's fixed access key id and secret
REPO = Path(__file__).resolve().parents[1]


def servers_required() -> bool:
    return os.environ.get("REPRODL_REQUIRE_SERVERS") == "1"


def unavailable(reason: str) -> None:
    """Skip the test, or fail it when the servers are required (CI)."""
    if servers_required():
        pytest.fail(f"{reason} (REPRODL_REQUIRE_SERVERS=1, so this is a failure)", pytrace=False)
    pytest.skip(reason)


def closed_port() -> int:
    """A port on 127.0.0.1 with nothing listening (bound once, then released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def _port_open(port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection((HOST, port), timeout=0.5):
        return True
    return False


def _log_tail(log: Path, n: int = 2000) -> str:
    try:
        return log.read_text(errors="replace")[-n:]
    except OSError:
        return ""


@contextlib.contextmanager
def _server(
    cmd: list[str], log: Path, ready: str, *, env: dict[str, str] | None = None, procs: list | None = None
) -> Iterator[int]:
    """Run ``cmd`` until the block ends; yields the port matched by ``ready`` in its output.
    The process is appended to ``procs`` when given (a test that stops the server itself)."""
    pattern = re.compile(ready)
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env)
    if procs is not None:
        procs.append(proc)
    try:
        deadline = time.monotonic() + START_TIMEOUT
        port = None
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"{cmd[0]} exited with {proc.returncode}: {_log_tail(log)}")
            if port is None:
                match = pattern.search(_log_tail(log, 100_000))
                port = int(match.group(1)) if match else None
            if port is not None and _port_open(port):
                break
            time.sleep(0.05)
        else:
            raise RuntimeError(f"{cmd[0]} did not start within {START_TIMEOUT:.0f} s: {_log_tail(log)}")
        yield port
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


# --- dtool-http ------------------------------------------------------------------------
def serve_http(directory: str) -> None:
    """Serve ``directory`` with dtool-http's handler on 127.0.0.1 (a free port, printed)."""
    import functools
    import socketserver
    from http.server import SimpleHTTPRequestHandler

    from dtool_http.server import DtoolHTTPRequestHandler, DtoolHTTPServer

    class Server(socketserver.ThreadingMixIn, DtoolHTTPServer):
        daemon_threads = True
        request_queue_size = 64

    class Handler(DtoolHTTPRequestHandler):
        def do_GET(self) -> None:
            # A dataset published with a static http_manifest.json (as `dtool publish` leaves
            # on s3) is served as it is; others get the manifest dtool-http generates.
            if self.path.endswith("http_manifest.json") and os.path.isfile(self.translate_path(self.path)):
                SimpleHTTPRequestHandler.do_GET(self)
            else:
                super().do_GET()

    handler = functools.partial(Handler, directory=directory)
    with Server((HOST, 0), handler) as httpd:
        print(f"serving on {HOST}:{httpd.server_address[1]}", flush=True)
        httpd.serve_forever()


@dataclass
class HTTPServer:
    root: Path
    port: int
    log: Path

    def uri(self, name: str) -> str:
        return f"http://{HOST}:{self.port}/{name}"

    def item_gets(self, name: str) -> int:
        """How many item downloads (GET .../<name>/data/...) the server has answered."""
        return len(re.findall(rf'"GET /{re.escape(name)}/data/', _log_tail(self.log, 10**9)))


def write_dirtree(root: Path, *, per_category: int = 4, size: tuple[int, int] = (6, 5)) -> Path:
    """A tiny image dirtree ``root/<category>/<i>.png`` with distinct, seeded pixels."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for category in ("cat", "dog", "owl"):
        (root / category).mkdir(parents=True)
        for i in range(per_category):
            pixels = rng.integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / category / f"{i}.png")
    return root


@pytest.fixture(scope="module")
def http_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A served directory holding ``digits`` (TensorDataSet) and ``images`` (ImageDataSet)."""
    from reprodl.data.creators import create_digits, create_from_dirtree

    root = tmp_path_factory.mktemp("served")
    create_digits(str(root), "digits")
    tree = write_dirtree(tmp_path_factory.mktemp("dirtree") / "tree")
    create_from_dirtree(tree, str(root), "images")
    return root


@pytest.fixture(scope="module")
def http_server(http_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[HTTPServer]:
    pytest.importorskip("dtool_http")
    log = tmp_path_factory.mktemp("http-log") / "server.log"
    cmd = [sys.executable, "-u", __file__, "http", str(http_root)]
    with _server(cmd, log, rf"serving on {re.escape(HOST)}:(\d+)") as port:
        yield HTTPServer(http_root, port, log)


@pytest.fixture
def dtool_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh, empty dtool cache for remote items (DTOOL_CACHE_DIRECTORY)."""
    cache = tmp_path / "dtool-cache"
    monkeypatch.setenv("DTOOL_CACHE_DIRECTORY", str(cache))
    return cache


# --- s3rver -----------------------------------------------------------------------------
def s3rver_command() -> list[str] | None:
    """The command that runs s3rver, or None when it (or node) is not installed."""
    node = shutil.which("node")
    candidates = [
        os.environ.get("REPRODL_S3RVER"),
        str(Path(sys.prefix) / "node" / "node_modules" / ".bin" / "s3rver"),
        str(REPO / ".venv" / "node" / "node_modules" / ".bin" / "s3rver"),
        shutil.which("s3rver"),
    ]
    for candidate in candidates:
        if candidate and os.path.isfile(candidate) and node:
            return [node, os.path.realpath(candidate)]
    return None


def _node_env(node: str) -> dict[str, str]:
    env = dict(os.environ)
    # s3rver 3.7 signs list continuation tokens with DES, which OpenSSL 3 (node >= 17)
    # only offers through its legacy provider.
    version = subprocess.run([node, "--version"], capture_output=True, text=True, timeout=30).stdout
    major = int(re.match(r"v(\d+)", version).group(1)) if re.match(r"v(\d+)", version) else 0
    if major >= 17:
        env["NODE_OPTIONS"] = (env.get("NODE_OPTIONS", "") + " --openssl-legacy-provider").strip()
    return env


@contextlib.contextmanager
def s3rver_running(directory: Path, command: list[str], *, procs: list | None = None) -> Iterator[str]:
    """Run s3rver (``command``, from :func:`s3rver_command`) storing its buckets under
    ``directory``; yields its endpoint URL (also used by bench/bench_remote_fetch.py)."""
    cmd = [*command, "-d", str(directory / "buckets"), "-a", HOST, "-p", "0", "--no-vhost-buckets"]
    ready = rf"listening on {re.escape(HOST)}:(\d+)"
    with _server(cmd, directory / "server.log", ready, env=_node_env(cmd[0]), procs=procs) as port:
        yield f"http://{HOST}:{port}"


@pytest.fixture(scope="module")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A running s3rver; yields its endpoint URL."""
    for module in ("boto3", "dtool_s3"):
        try:
            __import__(module)
        except ImportError:
            unavailable(f"{module} is not installed: pip install 'reprodl[s3]'")
    cmd = s3rver_command()
    if cmd is None:
        unavailable(
            "s3rver is not installed (needs node and npm): run `make test`, or "
            "`npm install --prefix .venv/node s3rver@3.7.1`"
        )
    with s3rver_running(tmp_path_factory.mktemp("s3rver"), cmd) as endpoint:
        yield endpoint


@dataclass
class S3Bucket:
    name: str
    endpoint: str
    client: object  # a boto3 S3 client

    @property
    def base_uri(self) -> str:
        return f"s3://{self.name}"

    def keys(self) -> list[str]:
        pages = self.client.get_paginator("list_objects_v2").paginate(Bucket=self.name)
        return sorted(obj["Key"] for page in pages for obj in page.get("Contents", []))


_bucket_numbers = itertools.count()


def configure_bucket(monkeypatch: pytest.MonkeyPatch, bucket: str, endpoint: str) -> None:
    """Point dtool-s3 at ``endpoint`` for ``bucket`` through its environment variables."""
    monkeypatch.setenv(f"DTOOL_S3_ENDPOINT_{bucket}", endpoint)
    monkeypatch.setenv(f"DTOOL_S3_ACCESS_KEY_ID_{bucket}", S3_KEY)
    monkeypatch.setenv(f"DTOOL_S3_SECRET_ACCESS_KEY_{bucket}", S3_KEY)


@pytest.fixture
def s3_bucket(s3_server: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, dtool_cache: Path) -> S3Bucket:
    """A new, empty bucket on the s3rver, configured for dtool-s3 (and nothing else)."""
    import boto3

    # Keep a developer's AWS settings out of the tests.
    for var in (
        "AWS_PROFILE",
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_SESSION_TOKEN",
        "AWS_ENDPOINT_URL",
        "AWS_ENDPOINT_URL_S3",
    ):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")  # no credential probes off-box
    name = f"reprodl-test-{os.getpid()}-{next(_bucket_numbers)}"
    client = boto3.client(
        "s3", endpoint_url=s3_server, aws_access_key_id=S3_KEY, aws_secret_access_key=S3_KEY, region_name="us-east-1"
    )
    client.create_bucket(Bucket=name)
    configure_bucket(monkeypatch, name, s3_server)
    return S3Bucket(name, s3_server, client)


if __name__ == "__main__":
    if len(sys.argv) != 3 or sys.argv[1] != "http":
        sys.exit("usage: python remote_servers.py http DIRECTORY")
    serve_http(sys.argv[2])
