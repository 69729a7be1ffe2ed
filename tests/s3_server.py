"""A real S3 API server on loopback for the tests: moto's standalone server (`python -m moto.server`)
in a process of its own on a free port, configured the way AWS tools take it.

    server = S3Server.start()          # the endpoint is http://127.0.0.1:PORT
    os.environ.update(server.env)      # AWS_ENDPOINT_URL, keys, region: pyarrow, boto3 and Ray workers
    server.create_bucket("promptkd")
    server.keys("promptkd", "runs/")   # the object keys under a prefix, as the server lists them
    server.stop()

The server is a separate process (not a thread of the test process) so that a test process busy in
a long in-process command never starves it, and its request log goes to a file, not the console.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request

from own_ray import free_ports


class S3Server:
    def __init__(self, process: subprocess.Popen, port: int, log_path: str):
        self.process, self.port, self.log_path = process, port, log_path
        self.endpoint = f"http://127.0.0.1:{port}"
        self.env = {
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_ACCESS_KEY_ID": "promptkd-test-key",
            "AWS_SECRET_ACCESS_KEY": "promptkd-test-secret",
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_EC2_METADATA_DISABLED": "true",  # no waits on an instance-metadata endpoint
        }

    @classmethod
    def start(cls, attempts: int = 3) -> "S3Server":
        """Start the server on a free loopback port (another one if that port was taken meanwhile)."""
        for _ in range(attempts):
            (port,) = free_ports(1)
            log = tempfile.NamedTemporaryFile(prefix="moto_s3_", suffix=".log", delete=False)
            process = subprocess.Popen(
                [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
            server = cls(process, port, log.name)
            if server._wait_until_up(timeout=60):
                return server
            server.stop()
        raise RuntimeError(f"moto's S3 server did not start; its log: {log.name}")

    def _wait_until_up(self, timeout: float) -> bool:
        deadline = time.time() + timeout
        while time.time() < deadline and self.process.poll() is None:
            try:
                with urllib.request.urlopen(f"{self.endpoint}/moto-api/", timeout=2):
                    return True
            except urllib.error.HTTPError:  # an answer, whatever it says
                return True
            except OSError:
                time.sleep(0.2)
        return False

    def client(self):
        import boto3

        return boto3.client("s3", endpoint_url=self.endpoint, **_credentials(self.env))

    def create_bucket(self, name: str) -> str:
        self.client().create_bucket(Bucket=name)
        return f"s3://{name}"

    def keys(self, bucket: str, prefix: str = "") -> list[str]:
        """Every object key under `prefix`, as the server lists it."""
        pages = self.client().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
        return sorted(obj["Key"] for page in pages for obj in page.get("Contents", ()))

    def modified(self, bucket: str, prefix: str = "") -> dict:
        """{key: (last-modified time, ETag)} of every object under `prefix`."""
        pages = self.client().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
        return {o["Key"]: (o["LastModified"], o["ETag"]) for page in pages for o in page.get("Contents", ())}

    def read(self, bucket: str, key: str) -> bytes:
        return self.client().get_object(Bucket=bucket, Key=key)["Body"].read()

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        try:
            os.remove(self.log_path)
        except OSError:
            pass


def _credentials(env: dict) -> dict:
    return {
        "aws_access_key_id": env["AWS_ACCESS_KEY_ID"],
        "aws_secret_access_key": env["AWS_SECRET_ACCESS_KEY"],
        "region_name": env["AWS_DEFAULT_REGION"],
    }
