"""The Resource contract every step implements, and the small types the engine trades in.

A resource never prints and never decides order: it describes what it wants (`desired`),
reports what exists (`read`, normalised to the same shape), and closes the gap with the
fewest calls (`create`/`update`/`delete`). The engine does the rest.

Crash-safety rests on one invariant each resource keeps: ``read`` of a half-made resource
(created but not yet tagged, versioned, encrypted...) returns what is there, so ``diff``
shows the missing aspects and ``update`` finishes the job on the next run.
"""

from __future__ import annotations

import contextlib
import json
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

from iotpipe.aws import AwsContext, is_not_found
from iotpipe.config import Names, PipelineConfig
from iotpipe.errors import IotpipeError

MANAGED_BY = "iotpipe"
TAG_ENV = "iotpipe:env"
TAG_RESOURCE = "iotpipe:resource"
TAG_MANAGED_BY = "managed-by"

Spec = dict[str, Any]


class UnknownYet(str):
    """The placeholder for another resource's id before it exists (shown by `plan`)."""

    __slots__ = ()


class DeletionPending(Exception):
    """Raised by ``delete`` when AWS will only finish later (an IoT thing type's 5 minutes)."""


@dataclass(frozen=True)
class Change:
    field: str
    current: Any
    desired: Any

    def as_dict(self) -> dict[str, Any]:
        return {"field": self.field, "current": self.current, "desired": self.desired}


@dataclass
class Current:
    """What ``read`` found: the normalised spec, the ids to record, and whether it is ours."""

    spec: Spec
    ids: dict[str, str] = field(default_factory=dict)
    managed: bool = True  # carries iotpipe's marker for this env (tags, or a description)
    # False when AWS says outright that it belongs to someone else (a bucket of another
    # account): then even a write-ahead "creating" record cannot make it ours.
    adoptable: bool = True


@dataclass
class StepContext:
    """What a resource may know: config, names, the AWS context, and other resources' ids."""

    aws: AwsContext
    config: PipelineConfig
    names: Names
    refs: dict[str, dict[str, str]] = field(default_factory=dict)  # logical id -> ids
    recorded: Callable[[str], dict[str, str]] = lambda _lid: {}  # ids the state file holds

    @property
    def env(self) -> str:
        return self.config.env

    @property
    def region(self) -> str:
        return self.aws.region

    @property
    def account(self) -> str:
        return self.aws.account_id

    def client(self, service: str) -> Any:
        return self.aws.client(service)

    def ref(self, logical_id: str, key: str = "arn") -> str:
        """Another resource's id; a placeholder when it does not exist yet (plan on a new env)."""
        value = self.refs.get(logical_id, {}).get(key)
        return value if value else UnknownYet(f"(known after apply: {logical_id}.{key})")

    def tags(self, logical_id: str) -> dict[str, str]:
        """The tags every resource carries: the config's, then iotpipe's own (which win)."""
        return {**self.config.tags, TAG_ENV: self.env, TAG_RESOURCE: logical_id,
                TAG_MANAGED_BY: MANAGED_BY}

    def owns(self, tags: Mapping[str, str] | None) -> bool:
        """True when ``tags`` mark the resource as iotpipe's for this env."""
        return bool(tags) and tags.get(TAG_ENV) == self.env and tags.get(TAG_MANAGED_BY) == MANAGED_BY

    def marker(self, logical_id: str) -> str:
        """A text marker for resources whose tags cannot be read back (IoT): kept in descriptions."""
        return f"[managed-by={MANAGED_BY} env={self.env} resource={logical_id}]"


class Resource(ABC):
    """One AWS thing with a stable logical id; see DESIGN.md "The contracts"."""

    logical_id: ClassVar[str]
    resource_type: ClassVar[str]  # CloudFormation-style type, e.g. "AWS::S3::Bucket"
    depends_on: ClassVar[tuple[str, ...]] = ()

    name_field: ClassVar[str] = ""  # the attribute of config.Names that holds the physical name
    # True when ``create`` makes no call: the resource exists as soon as what it depends on
    # does, so `plan` on a new env must not promise a creation `up` will never report.
    makes_nothing: ClassVar[bool] = False

    def name(self, ctx: StepContext) -> str:
        """The deterministic physical name (the alias name for a KMS key)."""
        return getattr(ctx.names, self.name_field)

    @abstractmethod
    def desired(self, ctx: StepContext) -> Spec: ...

    @abstractmethod
    def read(self, ctx: StepContext) -> Current | None: ...

    def diff(self, current: Spec, desired: Spec) -> list[Change]:
        """Field-level differences for every key of ``desired``, compared canonically."""
        return diff_specs(current, desired)

    @abstractmethod
    def create(self, ctx: StepContext, desired: Spec) -> dict[str, str]:
        """Create it; return the ids to record (arn, id...)."""

    @abstractmethod
    def update(self, ctx: StepContext, current: Current, desired: Spec, changes: list[Change]) -> None:
        """Close exactly the listed changes."""

    @abstractmethod
    def delete(self, ctx: StepContext, current: Current) -> None:
        """Remove it; already gone counts as success."""


# --------------------------------------------------------------------------------------------
# Helpers shared by the steps
# --------------------------------------------------------------------------------------------
def canonical(value: Any) -> Any:
    """A form in which equal configurations compare equal.

    Policy documents arrive as JSON strings or dicts, statements and actions in any order,
    single values or one-element lists; numbers as int or float.
    """
    if isinstance(value, str):
        stripped = value.strip()
        if stripped[:1] in "{[":
            try:
                return canonical(json.loads(stripped))
            except ValueError:
                return value
        return value
    if isinstance(value, Mapping):
        return {str(k): canonical(v) for k, v in sorted(value.items(), key=lambda kv: str(kv[0]))}
    if isinstance(value, (list, tuple, set, frozenset)):
        items = [canonical(v) for v in value]
        if len(items) == 1 and not isinstance(value, tuple):
            return items[0]
        return sorted(items, key=lambda v: json.dumps(v, sort_keys=True, default=str))
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def same(a: Any, b: Any) -> bool:
    return canonical(a) == canonical(b)


def diff_specs(current: Spec, desired: Spec) -> list[Change]:
    return [
        Change(key, current.get(key), want)
        for key, want in desired.items()
        if not isinstance(want, UnknownYet) and not same(current.get(key), want)
    ]


def changed_fields(changes: Iterable[Change]) -> set[str]:
    return {c.field for c in changes}


def tag_list(tags: Mapping[str, str], key: str = "Key", value: str = "Value") -> list[dict[str, str]]:
    return [{key: k, value: v} for k, v in sorted(tags.items())]


def tag_dict(items: Iterable[Mapping[str, str]] | None, key: str = "Key", value: str = "Value") -> dict[str, str]:
    return {item[key]: item[value] for item in items or ()}


def policy_json(document: Mapping[str, Any]) -> str:
    return json.dumps(document, separators=(",", ":"), sort_keys=True)


def paginate(client: Any, operation: str, key: str, **kwargs: Any) -> list[Any]:
    """All items under ``key`` across the pages of ``operation``."""
    items: list[Any] = []
    for page in client.get_paginator(operation).paginate(**kwargs):
        items.extend(page.get(key, []))
    return items


@contextlib.contextmanager
def ignore_not_found() -> Iterator[None]:
    """Deleting or reading what is already gone is not an error."""
    try:
        yield
    except Exception as err:
        if not is_not_found(err):
            raise


def filter_tags(ctx: StepContext, logical_id: str, tags: Mapping[str, str]) -> dict[str, str]:
    """Only the tags iotpipe sets: tags others add out of band are not drift."""
    wanted = ctx.tags(logical_id)
    return {k: v for k, v in tags.items()
            if k in wanted or k.startswith("iotpipe:") or k == TAG_MANAGED_BY}


def tag_changes(current: Mapping[str, str], desired: Mapping[str, str]) -> tuple[dict[str, str], list[str]]:
    """(tags to set, keys to remove) to go from ``current`` to ``desired`` (our keys only)."""
    to_set = {k: v for k, v in desired.items() if current.get(k) != v}
    to_remove = [k for k in current if k not in desired]
    return to_set, to_remove


def get_or_none(call: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """``call(*args, **kwargs)``, or None when AWS says the thing does not exist.

    Reads use it so that "absent" (or "aspect never configured") is a value diff can show,
    while every other error still propagates.
    """
    try:
        return call(*args, **kwargs)
    except Exception as err:
        if is_not_found(err):
            return None
        raise


def our_key_arn(ctx: StepContext, key_ref: str | None) -> str | None:
    """The ARN of the pipeline's key for any way of naming it (id, ARN, alias, alias ARN).

    Services echo the key reference they were given (DescribeStreamSummary returns KeyId
    exactly as StartStreamEncryption got it; the seed passes the key id): mapping every name
    of our key to its ARN keeps a key set by id (by hand, or by an older tool) from reading
    as drift.
    """
    if not key_ref:
        return None
    arn = ctx.ref("kms.key", "arn")
    if isinstance(arn, UnknownYet):
        return key_ref
    alias = ctx.names.kms_alias
    if key_ref in {arn, ctx.ref("kms.key", "id"), alias, ctx.aws.arn("kms", alias)}:
        return arn
    return key_ref


def known_key(value: Any) -> Any:
    """Refuse to write a placeholder: it means the KMS key step did not run first."""
    if isinstance(value, UnknownYet):
        raise IotpipeError(f"the KMS key is not known yet {value}: run `up` with the kms step")
    return value
