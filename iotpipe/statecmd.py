"""`iotpipe state bootstrap|migrate|show`: the shared state bucket and moving an env onto it.

The state bucket holds every env's record, so it gets what iotpipe gives its own data buckets
(versioning, so an overwritten or deleted record is recoverable; default encryption; public
access blocked; ACLs off; TLS only) and tags that mark it as iotpipe's. Bootstrap is
idempotent: it reads each setting and writes only what differs, and it never changes a bucket
it did not create.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from botocore.exceptions import ClientError

from iotpipe.aws import error_code, is_not_found
from iotpipe.errors import OwnershipError, StateError
from iotpipe.s3state import S3Location, open_backend, parse_location
from iotpipe.state import StateStore, describe_lock
from iotpipe.steps.s3util import OWNER_ENFORCED, PUBLIC_ACCESS_BLOCK, tls_deny_statement

PURPOSE_TAG = "iotpipe:purpose"
STATE_TAGS = {"managed-by": "iotpipe", PURPOSE_TAG: "state"}
ENCRYPTION = {"Rules": [{"ApplyServerSideEncryptionByDefault": {"SSEAlgorithm": "AES256"},
                         "BucketKeyEnabled": True}]}


@dataclass
class BootstrapResult:
    location: str
    region: str
    settings: list[tuple[str, str]] = field(default_factory=list)  # (setting, "created"/"set"/"ok")

    def as_dict(self) -> dict[str, Any]:
        return {"location": self.location, "region": self.region,
                "settings": [{"setting": s, "action": a} for s, a in self.settings]}


def bootstrap(aws: Any, location: S3Location, *, enforce_tls: bool = True) -> BootstrapResult:
    s3 = aws.client("s3")
    bucket = location.bucket
    result = BootstrapResult(str(location), aws.region)
    created = False
    try:
        s3.head_bucket(Bucket=bucket, ExpectedBucketOwner=aws.account_id)
    except ClientError as err:
        if error_code(err) in ("403", "AccessDenied"):
            raise OwnershipError(f"bucket {bucket} exists but is not this account's ({aws.account_id}): "
                                 "pick another name for the state bucket") from None
        if not is_not_found(err):
            raise
        params: dict[str, Any] = {"Bucket": bucket}
        if aws.region != "us-east-1":
            params["CreateBucketConfiguration"] = {"LocationConstraint": aws.region}
        s3.create_bucket(**params)
        created = True
    result.settings.append(("bucket", "created" if created else "ok"))
    if not created and _tags(s3, bucket).get(PURPOSE_TAG) != "state":
        raise OwnershipError(f"bucket {bucket} exists but iotpipe did not create it (no {PURPOSE_TAG}=state "
                             f"tag): iotpipe leaves it as it is. Use it as is with --state {location}, "
                             "or bootstrap another name")

    def ensure(setting: str, current: Any, wanted: Any, put: Any) -> None:
        if current == wanted:
            result.settings.append((setting, "ok"))
            return
        put()
        result.settings.append((setting, "set"))

    tags = _tags(s3, bucket)
    wanted_tags = {**tags, **STATE_TAGS}  # the operator's own tags stay
    ensure("tags", tags, wanted_tags, lambda: s3.put_bucket_tagging(
        Bucket=bucket, Tagging={"TagSet": [{"Key": k, "Value": v} for k, v in sorted(wanted_tags.items())]}))
    ensure("versioning", s3.get_bucket_versioning(Bucket=bucket).get("Status"), "Enabled",
           lambda: s3.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"}))
    ensure("encryption", _read(s3.get_bucket_encryption, bucket, "ServerSideEncryptionConfiguration"),
           ENCRYPTION, lambda: s3.put_bucket_encryption(Bucket=bucket, ServerSideEncryptionConfiguration=ENCRYPTION))
    ensure("public access block", _read(s3.get_public_access_block, bucket, "PublicAccessBlockConfiguration"),
           PUBLIC_ACCESS_BLOCK, lambda: s3.put_public_access_block(
               Bucket=bucket, PublicAccessBlockConfiguration=PUBLIC_ACCESS_BLOCK))
    owner = {"Rules": [{"ObjectOwnership": OWNER_ENFORCED}]}
    ensure("object ownership", _read(s3.get_bucket_ownership_controls, bucket, "OwnershipControls"), owner,
           lambda: s3.put_bucket_ownership_controls(Bucket=bucket, OwnershipControls=owner))
    if enforce_tls:
        arn = f"arn:{aws.partition}:s3:::{bucket}"
        policy = {"Version": "2012-10-17", "Statement": [tls_deny_statement(arn)]}
        raw = _read(s3.get_bucket_policy, bucket, "Policy")
        ensure("TLS-only policy", json.loads(raw) if raw else None, policy,
               lambda: s3.put_bucket_policy(Bucket=bucket, Policy=json.dumps(policy)))
    else:
        result.settings.append(("TLS-only policy", "skipped (--no-enforce-tls: the emulator only)"))
    return result


def _tags(s3: Any, bucket: str) -> dict[str, str]:
    try:
        return {t["Key"]: t["Value"] for t in s3.get_bucket_tagging(Bucket=bucket)["TagSet"]}
    except ClientError as err:
        if is_not_found(err):
            return {}
        raise


def _read(call: Any, bucket: str, key: str) -> Any:
    try:
        return call(Bucket=bucket).get(key)
    except ClientError as err:
        if is_not_found(err):
            return None
        raise


@dataclass
class MigrateResult:
    env: str
    source: str
    target: str
    resources: int
    kept_keys: list[str]
    key_directory: str
    moved_aside: str

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def migrate(local: StateStore, target: StateStore, *, timeout: float = 0.0) -> MigrateResult:
    """Copy the env's local record to S3 under both locks, then move the local file aside.

    The S3 write is the conditional create of a new object, so an env that already has shared
    state is never overwritten; device private keys are not state and never leave this machine.
    """
    from iotpipe.devices import local_key_files

    with local.lock("state migrate", timeout=timeout), target.lock("state migrate", timeout=timeout):
        if not Path(local.path).exists():
            raise StateError(f"env {local.env!r} has no local state at {local.path}: nothing to migrate")
        data = local.reload()
        existing = target.reload()
        if existing.resources or existing.account:
            if existing.model_dump() == data.model_dump():
                pass  # a migrate that stopped after writing: finish by moving the local file
            else:
                raise StateError(f"{target.path} already holds a record of env {target.env!r}: "
                                 "nothing was overwritten (compare with `iotpipe state show`)")
        else:
            target.replace(data)
        aside = Path(f"{local.path}.migrated")
        os.replace(local.path, aside)
    keys = local_key_files(local.root, local.env)
    return MigrateResult(local.env, str(local.path), str(target.path), len(data.resources), keys,
                         str(local.root / "devices" / local.env), str(aside))


def show(store: StateStore) -> dict[str, Any]:
    data = store.load()
    holder = store.read_lock()
    out: dict[str, Any] = {
        "env": store.env, "location": str(store.path), "exists": bool(data.resources or data.account),
        "account": data.account, "region": data.region,
        "lock": holder, "lock_text": describe_lock(holder) if holder is not None else None,
        "resources": [{"logical_id": lid, "type": r.type, "name": r.name, "status": r.status,
                       "updated_at": r.updated_at} for lid, r in sorted(data.resources.items())],
    }
    lister = getattr(store.backend, "list_envs", None)
    if lister is not None:
        out["envs"] = lister()
    return out


def s3_store(root: Path, env: str, region: str, aws: Any, location: str) -> StateStore:
    return StateStore(root, env, region, backend=open_backend(parse_location(location), env, aws))
