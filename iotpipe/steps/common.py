"""Resource kinds used by more than one step: an encrypted log group and a least-privilege role.

Each step instantiates them with its own logical id, name and policy; the kind itself knows
nothing of the step that uses it.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any

from iotpipe.config import Names
from iotpipe.steps.base import (
    TAG_REGION,
    Change,
    Current,
    Resource,
    Spec,
    StepContext,
    changed_fields,
    filter_tags,
    get_or_none,
    paginate,
    policy_json,
    read_together,
    same,
    tag_changes,
    tag_dict,
    tag_list,
    tolerate_gone,
)
from iotpipe.timing import ROLE_PROPAGATED

PolicyFn = Callable[[StepContext], dict[str, Any]]


class LogGroup(Resource):
    """A CloudWatch log group encrypted with the pipeline key, with the configured retention."""

    resource_type = "AWS::Logs::LogGroup"
    depends_on = ("kms.key",)  # encrypted with it (its ARN is read)

    def __init__(self, logical_id: str, name_of: Callable[[Names], str]) -> None:
        self.logical_id = logical_id
        self._name_of = name_of

    def name(self, ctx: StepContext) -> str:
        return self._name_of(ctx.names)

    def _arn(self, ctx: StepContext) -> str:
        return ctx.aws.arn("logs", f"log-group:{self.name(ctx)}")

    def desired(self, ctx: StepContext) -> Spec:
        return {
            "retention_days": ctx.config.logs.retention_days,
            "kms_key_id": ctx.ref("kms.key", "arn"),
            "tags": ctx.tags(self.logical_id),
        }

    def read(self, ctx: StepContext) -> Current | None:
        logs = ctx.client("logs")
        name = self.name(ctx)
        group = next((g for g in paginate(logs, "describe_log_groups", "logGroups", logGroupNamePrefix=name)
                      if g["logGroupName"] == name), None)
        if group is None:
            return None
        tags = logs.list_tags_for_resource(resourceArn=self._arn(ctx)).get("tags", {})
        spec = {
            "retention_days": group.get("retentionInDays"),
            "kms_key_id": group.get("kmsKeyId"),
            "tags": filter_tags(ctx, self.logical_id, tags),
        }
        return Current(spec, {"name": name, "arn": self._arn(ctx)}, managed=ctx.owns(tags))

    def create(self, ctx: StepContext, desired: Spec) -> dict[str, str]:
        logs = ctx.client("logs")
        logs.create_log_group(logGroupName=self.name(ctx), kmsKeyId=desired["kms_key_id"],
                              tags=desired["tags"])
        logs.put_retention_policy(logGroupName=self.name(ctx), retentionInDays=desired["retention_days"])
        return {"name": self.name(ctx), "arn": self._arn(ctx)}

    def update(self, ctx: StepContext, current: Current, desired: Spec, changes: list[Change]) -> None:
        logs = ctx.client("logs")
        fields = changed_fields(changes)
        if "retention_days" in fields:
            logs.put_retention_policy(logGroupName=self.name(ctx), retentionInDays=desired["retention_days"])
        if "kms_key_id" in fields:
            logs.associate_kms_key(logGroupName=self.name(ctx), kmsKeyId=desired["kms_key_id"])
        if "tags" in fields:
            to_set, to_remove = tag_changes(current.spec["tags"], desired["tags"])
            if to_set:
                logs.tag_resource(resourceArn=self._arn(ctx), tags=to_set)
            if to_remove:
                logs.untag_resource(resourceArn=self._arn(ctx), tagKeys=to_remove)

    def delete(self, ctx: StepContext, current: Current) -> None:
        tolerate_gone(ctx.client("logs").delete_log_group, logGroupName=self.name(ctx))


class Role(Resource):
    """An IAM role for one AWS service with inline policies only.

    Attached managed policies are drift: a least-privilege role that someone attached
    AdministratorAccess to is reported, and `up` detaches it.
    """

    resource_type = "AWS::IAM::Role"
    expected_s = ROLE_PROPAGATED.seconds  # its users refuse it until IAM has propagated it

    def __init__(
        self,
        logical_id: str,
        name_of: Callable[[Names], str],
        *,
        trust: PolicyFn,
        policies: dict[str, PolicyFn],
        description: str,
        depends_on: tuple[str, ...] = (),
    ) -> None:
        self.logical_id = logical_id
        self._name_of = name_of
        self._trust = trust
        self._policies = policies
        self._description = description
        self.depends_on = depends_on

    def name(self, ctx: StepContext) -> str:
        return self._name_of(ctx.names)

    def desired(self, ctx: StepContext) -> Spec:
        return {
            "description": self._description,
            "assume_role_policy": self._trust(ctx),
            "inline_policies": {name: fn(ctx) for name, fn in self._policies.items()},
            "managed_policies": [],
            "tags": ctx.tags(self.logical_id),
        }

    def read(self, ctx: StepContext) -> Current | None:
        iam = ctx.client("iam")
        name = self.name(ctx)
        # The role, its inline policy names and its attached policies at once (each answers
        # NoSuchEntity when there is no role), then every inline policy at once.
        first = read_together({
            "role": lambda: get_or_none(iam.get_role, RoleName=name),
            "inline": lambda: get_or_none(paginate, iam, "list_role_policies", "PolicyNames", RoleName=name),
            "attached": lambda: get_or_none(paginate, iam, "list_attached_role_policies", "AttachedPolicies",
                                            RoleName=name),
        })
        if first["role"] is None:
            return None
        role = first["role"]["Role"]
        inline = read_together({
            policy: lambda policy=policy: iam.get_role_policy(RoleName=name, PolicyName=policy)["PolicyDocument"]
            for policy in first["inline"] or []
        })
        attached = [p["PolicyArn"] for p in first["attached"] or []]
        # GetRole carries the role's tags (IAM API reference, Role data type: "A list of tags
        # that are attached to the role"); ListRoleTags would ask again.
        tags = tag_dict(role.get("Tags") or [])
        spec = {
            "description": role.get("Description", ""),
            "assume_role_policy": role.get("AssumeRolePolicyDocument"),
            "inline_policies": inline,
            "managed_policies": attached,
            "tags": filter_tags(ctx, self.logical_id, tags),
        }
        # RoleId is the principal behind the name: a role deleted and re-created under the same
        # name gets a new one, and grants made to the old one (Lambda's KMS grant) are void.
        ids = {"name": name, "arn": role["Arn"], "id": role.get("RoleId", "")}
        home = None if TAG_REGION in tags else policy_region(ctx, [spec["assume_role_policy"], *inline.values()])
        return Current.judged(ctx, spec, ids, tags, home_region=home)

    def create(self, ctx: StepContext, desired: Spec) -> dict[str, str]:
        iam = ctx.client("iam")
        name = self.name(ctx)
        role = iam.create_role(
            RoleName=name,
            Description=desired["description"],
            AssumeRolePolicyDocument=policy_json(desired["assume_role_policy"]),
            Tags=tag_list(desired["tags"]),
        )["Role"]
        for policy, document in desired["inline_policies"].items():
            iam.put_role_policy(RoleName=name, PolicyName=policy, PolicyDocument=policy_json(document))
        return {"name": name, "arn": role["Arn"], "id": role.get("RoleId", "")}

    def update(self, ctx: StepContext, current: Current, desired: Spec, changes: list[Change]) -> None:
        iam = ctx.client("iam")
        name = self.name(ctx)
        fields = changed_fields(changes)
        if "description" in fields:
            iam.update_role(RoleName=name, Description=desired["description"])
        if "assume_role_policy" in fields:
            iam.update_assume_role_policy(RoleName=name,
                                          PolicyDocument=policy_json(desired["assume_role_policy"]))
        if "inline_policies" in fields:
            have, want = current.spec["inline_policies"], desired["inline_policies"]
            for policy, document in want.items():
                if not same(have.get(policy), document):
                    iam.put_role_policy(RoleName=name, PolicyName=policy, PolicyDocument=policy_json(document))
            for policy in set(have) - set(want):
                iam.delete_role_policy(RoleName=name, PolicyName=policy)
        if "managed_policies" in fields:
            for arn in current.spec["managed_policies"]:
                iam.detach_role_policy(RoleName=name, PolicyArn=arn)
        if "tags" in fields:
            to_set, to_remove = tag_changes(current.spec["tags"], desired["tags"])
            if to_set:
                iam.tag_role(RoleName=name, Tags=tag_list(to_set))
            if to_remove:
                iam.untag_role(RoleName=name, TagKeys=to_remove)

    def delete(self, ctx: StepContext, current: Current) -> None:
        """IAM refuses DeleteRole while policies remain: each is removed first, each on its
        own (one already gone does not skip the others, nor DeleteRole)."""
        iam = ctx.client("iam")
        name = self.name(ctx)
        for arn in current.spec.get("managed_policies", []):
            tolerate_gone(iam.detach_role_policy, RoleName=name, PolicyArn=arn)
        for policy in current.spec.get("inline_policies", {}):
            tolerate_gone(iam.delete_role_policy, RoleName=name, PolicyName=policy)
        tolerate_gone(iam.delete_role, RoleName=name)


def policy_region(ctx: StepContext, documents: list[Any]) -> str | None:
    """The region a role was made for, from the ARNs its policies name; None when unknown.

    IAM roles are global and have no region, but iotpipe's roles grant access to one
    region's stream, table, key and log groups and trust one region's rule. A role made before
    iotpipe tagged its region is judged by those ARNs: if they name only other regions, it
    belongs to that region's deployment of this env. No regional ARN at all (a role rewritten
    by hand) gives no evidence, and the role is judged by its env tags alone.
    """
    regions = set(_ARN_REGION.findall(json.dumps(documents, default=str)))
    if not regions or ctx.region in regions:
        return None
    return sorted(regions)[0]


_ARN_REGION = re.compile(r"arn:aws[a-z-]*:[a-z0-9-]+:([a-z]{2}(?:-gov|-iso[a-z]?)?-[a-z]+-\d{1,2}):")


def service_trust(service: str, *, pin_account: bool = True,
                  source_arn: Callable[[StepContext], str] | None = None) -> PolicyFn:
    """A trust policy for ``service``, pinned to our account (and ARN) against confused deputies.

    ``pin_account=False`` exists for a service that sends no aws:SourceAccount when it assumes
    a role; no role of the pipeline needs it (Lambda and IoT both document the key).
    """

    def trust(ctx: StepContext) -> dict[str, Any]:
        statement: dict[str, Any] = {
            "Effect": "Allow",
            "Principal": {"Service": service},
            "Action": "sts:AssumeRole",
        }
        if pin_account:
            statement["Condition"] = {"StringEquals": {"aws:SourceAccount": ctx.account}}
        if source_arn is not None:
            statement.setdefault("Condition", {})
            statement["Condition"]["ArnLike"] = {"aws:SourceArn": source_arn(ctx)}
        return {"Version": "2012-10-17", "Statement": [statement]}

    return trust
