"""S3: a moto server on 127.0.0.1 that checks credentials (INITIAL_NO_AUTH_ACTION_COUNT), so a
refused key is a real 403 from the server."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import sys
from pathlib import Path
from typing import Iterator

import boto3

from tests.servers import HOST, free_port, server
from tests.silos import PAGE_SIZE, Silo
from vfs.mounts.s3 import MIN_PART_SIZE, S3Backend, S3Options

BUCKET = "vfs-test"
REGION = "us-east-1"
ALLOW_ALL = json.dumps({"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]})


@dataclasses.dataclass(frozen=True)
class MotoS3:
    endpoint: str
    access_key_id: str
    secret_access_key: str

    def client(self):  # type: ignore[no-untyped-def]
        return boto3.client(
            "s3", endpoint_url=self.endpoint, region_name=REGION,
            aws_access_key_id=self.access_key_id, aws_secret_access_key=self.secret_access_key,
        )

    def object_bytes(self, bucket: str, key: str) -> bytes | None:
        """The bytes the server holds at `key`, or None: what a test checks behind the mount."""
        client = self.client()
        try:
            return client.get_object(Bucket=bucket, Key=key)["Body"].read()
        except client.exceptions.NoSuchKey:
            return None

    def options(self, **extra: object) -> dict:
        """`[[mount]]` options (without path) for a bucket of this server."""
        return {"backend": "s3", "endpoint_url": self.endpoint, "region": REGION,
                "access_key_id": self.access_key_id, "secret_access_key": self.secret_access_key, **extra}

    def backend(self, bucket: str, prefix: str = "", **extra: object) -> S3Backend:
        opts = {k: v for k, v in self.options(**extra).items() if k != "backend"}
        return S3Backend(S3Options(bucket=bucket, prefix=prefix, **opts))  # type: ignore[arg-type]


@contextlib.contextmanager
def moto_server(tmp: Path, check_credentials: bool = False) -> Iterator[MotoS3]:
    """A moto S3 server and a key it accepts.

    With `check_credentials` it refuses unknown keys (INITIAL_NO_AUTH_ACTION_COUNT), but moto 5's
    signature check then rejects keys holding '+', '&' or '=' (a moto bug), so the data-carrying
    server runs without it and a second one serves the refused-credentials cases.
    """
    port = free_port()
    argv = [str(Path(sys.executable).with_name("moto_server")), "-H", HOST, "-p", str(port)]
    env = {"INITIAL_NO_AUTH_ACTION_COUNT": "3"} if check_credentials else {}
    name = "moto-auth" if check_credentials else "moto"
    with server(argv, port, tmp / f"{name}.log", env=env):
        endpoint = f"http://{HOST}:{port}"
        if not check_credentials:
            yield MotoS3(endpoint, "vfs-test-key", "vfs-test-secret")
            return
        # The first three requests go unauthenticated: they create the user, its key and its policy.
        iam = boto3.client("iam", endpoint_url=endpoint, region_name=REGION, aws_access_key_id="setup", aws_secret_access_key="setup")
        iam.create_user(UserName="vfs")
        key = iam.create_access_key(UserName="vfs")["AccessKey"]
        iam.put_user_policy(UserName="vfs", PolicyName="all", PolicyDocument=ALLOW_ALL)
        yield MotoS3(endpoint, key["AccessKeyId"], key["SecretAccessKey"])


def seed(client, bucket: str, files: dict[str, bytes], empty_dirs: list[str] = ()) -> None:  # type: ignore[no-untyped-def]
    client.create_bucket(Bucket=bucket)
    for key, data in files.items():
        client.put_object(Bucket=bucket, Key=key, Body=data)
    for d in empty_dirs:
        client.put_object(Bucket=bucket, Key=d + "/", Body=b"")


@contextlib.contextmanager
def open_silo(tmp: Path, files: dict[str, bytes], empty_dirs: list[str], shadowed: dict[str, bytes]) -> Iterator[Silo]:
    with moto_server(tmp) as moto, moto_server(tmp, check_credentials=True) as guarded:
        client = moto.client()
        seed(client, BUCKET, {**files, **shadowed}, empty_dirs)
        guarded.client().create_bucket(Bucket=BUCKET)

        def replace(path: str, data: bytes) -> None:
            client.put_object(Bucket=BUCKET, Key=path, Body=data)

        def fetch(path: str) -> bytes | None:
            try:
                with client.get_object(Bucket=BUCKET, Key=path)["Body"] as body:
                    return body.read()
            except client.exceptions.NoSuchKey:
                return None

        def denied() -> S3Backend:
            return S3Backend(S3Options(bucket=BUCKET, endpoint_url=guarded.endpoint, region=REGION,
                                       access_key_id="AKIAREFUSED", secret_access_key="refused", max_attempts=1))

        yield Silo(
            backend=moto.backend(BUCKET, page_size=PAGE_SIZE),
            flat_keys=True,
            replace=replace,
            denied=denied,
            mount_options=moto.options(bucket=BUCKET),
            rooted=lambda sub: moto.backend(BUCKET, prefix=sub),
            fetch=fetch,
            small_parts=lambda: moto.backend(BUCKET, part_size=MIN_PART_SIZE),
        )
