"""The S3 state backend: one state object and one lock object per env, in a shared bucket.

Two operators on two machines share an env only if neither can overwrite what the other
wrote. S3 conditional writes give that without a second service: every state write names the
ETag it read (``IfMatch``), the first one ``IfNoneMatch="*"``, so a run that lost a race gets
412 Precondition Failed and stops with exit 75 instead of replacing the other run's record.
The lock is an object created with ``IfNoneMatch="*"`` (exactly one creator wins) and removed
with ``IfMatch`` on the ETag of the lock its remover read, so nobody removes a lock that
changed hands. Terraform's S3 backend (``use_lockfile``) works the same way.

AWS answers a conditional write that meets a concurrent one on the same key with 409
ConditionalRequestConflict and says to retry; a retry re-reads the ETag first, so only a
write that is still based on the current object is sent again.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from botocore.exceptions import ClientError

from iotpipe.aws import error_code
from iotpipe.errors import StateConflictError, StateError

SCHEME = "s3://"
CONFLICT_RETRIES = 3  # 409 ConditionalRequestConflict: AWS says retry; a few times is plenty
_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")


@dataclass(frozen=True)
class S3Location:
    bucket: str
    prefix: str  # without leading or trailing "/"; may be empty

    def key(self, name: str) -> str:
        return f"{self.prefix}/{name}" if self.prefix else name

    def url(self, name: str = "") -> str:
        return f"{SCHEME}{self.bucket}/{self.key(name) if name else self.prefix}".rstrip("/")

    def __str__(self) -> str:
        return self.url()


def is_s3(value: Any) -> bool:
    return isinstance(value, str | S3Location) and str(value).lower().startswith(SCHEME)


def parse_location(value: str, *, origin: str = "--state") -> S3Location:
    """``s3://BUCKET[/PREFIX]``; anything else is refused in one line (exit 65)."""
    from iotpipe.errors import ConfigError

    if not value.lower().startswith(SCHEME):
        raise ConfigError(f"{origin}: {value!r} is not an S3 location: use s3://BUCKET/PREFIX")
    rest = value[len(SCHEME):]
    bucket, _, prefix = rest.partition("/")
    if not _BUCKET.match(bucket) or ".." in bucket:
        raise ConfigError(f"{origin}: {bucket!r} is not a valid S3 bucket name (3-63 characters: "
                          "lower-case letters, digits, dots and hyphens)")
    prefix = prefix.strip("/")
    if prefix and any(part in ("", ".", "..") for part in prefix.split("/")):
        raise ConfigError(f"{origin}: the prefix {prefix!r} has an empty, '.' or '..' part")
    return S3Location(bucket, prefix)


class S3Backend:
    """``s3://BUCKET/PREFIX/<env>.json`` and ``.../<env>.lock``."""

    takes_over_dead_local_holder = False  # a shared lock is taken over only with --force or unlock

    def __init__(self, client: Any, location: S3Location, env: str) -> None:
        self.client = client
        self.location = location
        self.env = env
        self.key = location.key(f"{env}.json")
        self.lock_key = location.key(f"{env}.lock")
        self.where = location.url(f"{env}.json")
        self.lock_where = location.url(f"{env}.lock")

    # -- state ---------------------------------------------------------------------------------
    def read(self) -> tuple[str | None, str | None]:
        found = self._get(self.key)
        if found is None:
            return None, None
        body, etag = found
        try:
            return body.decode("utf-8"), etag
        except UnicodeDecodeError:
            raise StateError(f"state object {self.where} is not UTF-8 text: move it aside to rebuild "
                             "it from AWS") from None

    def write(self, text: str, token: str | None) -> str | None:
        body = text.encode("utf-8")
        condition = {"IfMatch": token} if token else {"IfNoneMatch": "*"}
        for _attempt in range(CONFLICT_RETRIES + 1):
            try:
                answer = self.client.put_object(Bucket=self.location.bucket, Key=self.key, Body=body,
                                                ContentType="application/json", **condition)
                return str(answer["ETag"])
            except ClientError as err:
                code = error_code(err)
                if code == "ConditionalRequestConflict":
                    current = self._etag(self.key)
                    if current != token:
                        return self._lost_race(body, token)
                    continue  # still based on the current object: AWS says send it again
                if code in ("PreconditionFailed", "NoSuchKey", "412", "404"):
                    return self._lost_race(body, token)
                self._refuse(err, self.where)
                raise
        raise StateConflictError(f"state object {self.where}: S3 kept answering 409 ConditionalRequestConflict "
                                 "(another run writes it right now); nothing was overwritten: re-run")

    def _lost_race(self, body: bytes, token: str | None) -> str:
        """412: the object is not what we read. Unless it already holds exactly our bytes (our
        own write, whose answer was lost and which botocore sent again), another run wrote it."""
        found = self._get(self.key)
        if found is not None and found[0] == body:
            return found[1]
        now = f"ETag {found[1]}" if found else "deleted"
        raise StateConflictError(
            f"state object {self.where} changed since this run read it (read ETag {token or 'none: absent'}, "
            f"now {now}): another run wrote it; nothing was overwritten. Re-run to continue from its record")

    def delete(self, token: str | None) -> None:
        if token is None:
            return
        try:
            self.client.delete_object(Bucket=self.location.bucket, Key=self.key, IfMatch=token)
        except ClientError as err:
            if error_code(err) in ("NoSuchKey", "404"):
                return
            if error_code(err) in ("PreconditionFailed", "412"):
                raise StateConflictError(f"state object {self.where} changed since this run read it: "
                                         "another run wrote it; it was not deleted") from None
            self._refuse(err, self.where)
            raise

    # -- lock ----------------------------------------------------------------------------------
    def create_lock(self, info: dict[str, Any]) -> bool:
        body = json.dumps(info, sort_keys=True).encode("utf-8")
        for _attempt in range(CONFLICT_RETRIES + 1):
            try:
                self.client.put_object(Bucket=self.location.bucket, Key=self.lock_key, Body=body,
                                       ContentType="application/json", IfNoneMatch="*")
                return True
            except ClientError as err:
                code = error_code(err)
                if code == "ConditionalRequestConflict":
                    continue  # a concurrent create or delete of the lock: AWS says retry
                if code in ("PreconditionFailed", "412"):
                    held = self.read_lock()
                    return bool(held) and held.get("ID") == info.get("ID")  # our own, answer lost
                self._refuse(err, self.lock_where)
                raise
        return False

    def read_lock(self) -> dict[str, Any] | None:
        found = self._get(self.lock_key)
        if found is None:
            return None
        try:
            data = json.loads(found[0])
        except ValueError:
            return {}
        return data if isinstance(data, dict) else {}

    def remove_lock(self, expected: dict[str, Any]) -> bool:
        found = self._get(self.lock_key)
        if found is None:
            return False
        try:
            current = json.loads(found[0])
        except ValueError:
            current = {}
        if not isinstance(current, dict) or current.get("ID") != expected.get("ID"):
            return False
        try:
            self.client.delete_object(Bucket=self.location.bucket, Key=self.lock_key, IfMatch=found[1])
        except ClientError as err:
            if error_code(err) in ("PreconditionFailed", "412", "NoSuchKey", "404"):
                return False  # replaced or removed by someone else meanwhile: theirs now
            self._refuse(err, self.lock_where)
            raise
        return True

    # -- plumbing ------------------------------------------------------------------------------
    def _get(self, key: str) -> tuple[bytes, str] | None:
        try:
            answer = self.client.get_object(Bucket=self.location.bucket, Key=key)
        except ClientError as err:
            if error_code(err) in ("NoSuchKey", "404"):
                return None
            self._refuse(err, self.location.url(key))
            raise
        return answer["Body"].read(), str(answer["ETag"])

    def _etag(self, key: str) -> str | None:
        found = self._get(key)
        return found[1] if found else None

    def _refuse(self, err: ClientError, where: str) -> None:
        if error_code(err) == "NoSuchBucket":
            raise StateError(f"state bucket {self.location.bucket} does not exist (for {where}): create it "
                             f"with `iotpipe state bootstrap {self.location}`") from None

    def list_envs(self) -> list[str]:
        """The envs with a state object under the prefix (for `state show`)."""
        prefix = self.location.key("")
        envs: list[str] = []
        pages = self.client.get_paginator("list_objects_v2").paginate(
            Bucket=self.location.bucket, Prefix=prefix)
        try:
            for page in pages:
                for item in page.get("Contents", []):
                    rest = item["Key"][len(prefix):]
                    if "/" not in rest and rest.endswith(".json"):
                        envs.append(rest[:-len(".json")])
        except ClientError as err:
            self._refuse(err, str(self.location))
            raise
        return sorted(envs)


def open_backend(location: S3Location | str, env: str, aws: Any) -> S3Backend:
    """The env's S3 backend, through the run's own session (its profile, retries and hooks)."""
    where = location if isinstance(location, S3Location) else parse_location(location)
    return S3Backend(aws.client("s3"), where, env)
