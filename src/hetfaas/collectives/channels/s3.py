"""``s3://bucket?endpoint=http://host:port``: an S3 bucket as the store (boto3, lazily).

Path-style addressing, and checksums only where required (saves a millisecond per small
request and more on large ones). Credentials come from the usual AWS environment variables or
from the URI's query (``access_key_id``, ``secret_access_key``, ``region``). Readers poll
with bounded exponential back-off (S3 has no blocking read). A reader removes the messages it
consumed in batches (a delete per message would add a request to every fetch); the rest go
when the last rank closes the group.
"""

from __future__ import annotations

from typing import Any, ClassVar
from urllib.parse import parse_qs

from ...exceptions import ChannelUnavailable, ConfigurationError, GroupMismatch
from ..payload import join
from .base import MediatedChannel, register_channel, split_uri

_QUERY = ("endpoint", "access_key_id", "secret_access_key", "region", "prefix")


class S3Channel(MediatedChannel):
    """A group is the objects under ``<prefix>/<group>/`` in one bucket (created if absent)."""

    scheme: ClassVar[str] = "s3"
    limits = 5 * 1024**3  # one PUT
    poll_min_s = 1e-3
    poll_max_s = 20e-3

    def __init__(
        self,
        bucket: str,
        endpoint: str | None = None,
        access_key_id: str | None = None,
        secret_access_key: str | None = None,
        region: str | None = None,
        prefix: str = "hetfaas",
    ) -> None:
        self.bucket, self.endpoint = bucket, endpoint
        self._keys = (access_key_id, secret_access_key)
        self.region = region or "us-east-1"
        self.root = prefix.strip("/")
        self.prefix = ""
        self._s3: Any = None
        self._consumed: list[str] = []
        self._closed = False

    @classmethod
    def from_uri(cls, uri: str) -> S3Channel:
        parts = split_uri(uri, "s3")
        if not parts.netloc:
            raise ConfigurationError(f"s3:// needs a bucket: s3://bucket?endpoint=...; got {uri!r}")
        query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
        unknown = sorted(set(query) - set(_QUERY))
        if unknown:
            raise ConfigurationError(
                f"unknown s3:// option(s) {', '.join(unknown)}; known: {', '.join(_QUERY)}"
            )
        return cls(parts.netloc, **query)

    @property
    def address(self) -> str:
        return f"s3://{self.bucket} at {self.endpoint or 'AWS'}"

    def connect(self, group: str, rank: int, size: int, deadline: float) -> None:
        try:
            import boto3
            from botocore.config import Config
        except ImportError as exc:
            raise ConfigurationError(
                "the s3:// channel needs boto3: pip install 'hetfaas[collectives]'"
            ) from exc
        self.group, self.rank, self.size = group, rank, size
        self.prefix = f"{self.root}/{group}/"
        config = Config(
            s3={"addressing_style": "path"},
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
            retries={"max_attempts": 2, "mode": "standard"},
            connect_timeout=2,
            read_timeout=120,
            max_pool_connections=16,
        )
        access, secret = self._keys
        self._s3 = boto3.session.Session().client(
            "s3", endpoint_url=self.endpoint, aws_access_key_id=access,
            aws_secret_access_key=secret, region_name=self.region, config=config,
        )  # fmt: skip
        self._call(self._ensure_bucket)
        self._call(self._s3.put_object, Bucket=self.bucket, Key=f"{self.prefix}hello/{rank}",
                   Body=str(size).encode())  # fmt: skip
        for peer, peer_size in self._hellos().items():
            if peer_size != size:
                raise GroupMismatch(
                    f"group {group!r}: rank {peer} joined with size {peer_size}, "
                    f"rank {rank} with size {size}"
                )

    def _call(self, fn: Any, **kw: Any) -> Any:
        """One request, with the client's errors turned into ours."""
        from botocore.exceptions import BotoCoreError, ClientError, EndpointConnectionError

        try:
            return fn(**kw)
        except EndpointConnectionError as exc:
            raise ChannelUnavailable(f"S3 at {self.endpoint} is not reachable: {exc}") from exc
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "")
            if code in ("NoSuchKey", "404"):
                raise KeyError(kw.get("Key")) from None
            if code in ("InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied", "403"):
                raise ConfigurationError(
                    f"{self.address} refused the credentials ({code}): set AWS_ACCESS_KEY_ID/"
                    "AWS_SECRET_ACCESS_KEY or access_key_id/secret_access_key in the URI"
                ) from exc
            raise ChannelUnavailable(f"{self.address}: {exc}") from exc
        except BotoCoreError as exc:
            raise ChannelUnavailable(f"{self.address}: {exc}") from exc

    def _ensure_bucket(self) -> None:
        try:
            self._call(self._s3.head_bucket, Bucket=self.bucket)
        except KeyError:
            try:
                self._call(self._s3.create_bucket, Bucket=self.bucket)
            except ChannelUnavailable as exc:
                if "BucketAlreadyOwnedByYou" not in str(exc):
                    raise

    def _list(self, prefix: str) -> list[str]:
        keys: list[str] = []
        token = None
        while True:
            kw: dict[str, Any] = {"Bucket": self.bucket, "Prefix": prefix}
            if token:
                kw["ContinuationToken"] = token
            page = self._call(self._s3.list_objects_v2, **kw)
            keys += [o["Key"] for o in page.get("Contents", [])]
            token = page.get("NextContinuationToken")
            if not token:
                return keys

    def _hellos(self) -> dict[int, int]:
        found = {}
        for key in self._list(f"{self.prefix}hello/"):
            try:
                body = self._call(self._s3.get_object, Bucket=self.bucket, Key=key)["Body"]
                found[int(key.rsplit("/", 1)[1])] = int(body.read())
            except (KeyError, ValueError):
                continue
        return found

    def present(self) -> set[int]:
        return {int(k.rsplit("/", 1)[1]) for k in self._list(f"{self.prefix}hello/")}

    def _put(self, key: str, segments: list[Any], total: int, readers: int) -> None:
        body = join(segments, total)
        self._call(self._s3.put_object, Bucket=self.bucket, Key=self.prefix + key, Body=body)

    def _try_get(self, key: str, readers: int) -> Any | None:
        try:
            obj = self._call(self._s3.get_object, Bucket=self.bucket, Key=self.prefix + key)
        except KeyError:
            return None
        data = obj["Body"].read()
        if readers == 1:  # consumed: removed in batches, one request per hundred messages
            self._consumed.append(self.prefix + key)
            if len(self._consumed) >= 100:
                self._delete(self._consumed)
                self._consumed = []
        return data

    def list_keys(self, prefix: str) -> list[str]:
        """The keys of the bucket under ``prefix`` (full keys, the channel's prefix included)."""
        return self._list(prefix)

    def delete_keys(self, keys: list[str]) -> None:
        """Remove these full keys (a thousand per request)."""
        self._delete(keys)

    def _delete(self, keys: list[str]) -> None:
        for i in range(0, len(keys), 1000):
            batch = [{"Key": k} for k in keys[i : i + 1000]]
            self._call(self._s3.delete_objects, Bucket=self.bucket,
                       Delete={"Objects": batch, "Quiet": True})  # fmt: skip

    def close(self) -> None:
        if self._closed or self._s3 is None:
            return
        self._closed = True
        try:
            self._call(self._s3.put_object, Bucket=self.bucket,
                       Key=f"{self.prefix}bye/{self.rank}", Body=b"")  # fmt: skip
            if self._consumed:
                self._delete(self._consumed)
            if len(self._list(f"{self.prefix}bye/")) >= self.size:
                self._delete(self._list(self.prefix))
        except Exception:  # closing must not fail on a server that went away
            pass


register_channel(S3Channel)
