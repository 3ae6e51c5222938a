"""Lambda: functions are Pending after CreateFunction, InProgress after an update;
event source mappings are Creating, then Enabled, and Deleting before they go."""

from __future__ import annotations

from typing import Any

from tests.awsbehaviour.model import (
    ErrorRule,
    GhostRule,
    StateRule,
    answer_path,
    param,
    trigger_param,
)

STATES_DOC = "https://docs.aws.amazon.com/lambda/latest/dg/functions-states.html"
ESM_DOC = ("https://docs.aws.amazon.com/lambda/latest/api/API_EventSourceMappingConfiguration.html"
           " (State: Creating, Enabling, Enabled, Disabling, Disabled, Updating, Deleting)")


def _function_field(name: str):
    """GetFunction nests the configuration; GetFunctionConfiguration is the configuration."""

    def patch(parsed: dict[str, Any], _key: Any, value: Any) -> None:
        target = parsed.get("Configuration") if "Configuration" in parsed else parsed
        if isinstance(target, dict):
            target[name] = value

    return patch


def _function_key(params: dict[str, Any]) -> str | None:
    name = params.get("FunctionName")
    return name.rsplit(":", 1)[-1] if isinstance(name, str) else None


def _mapping_state(parsed: dict[str, Any], uuid: Any, value: Any) -> None:
    items = parsed.get("EventSourceMappings")
    for item in items if isinstance(items, list) else [parsed]:
        if isinstance(item, dict) and item.get("UUID") == uuid:
            item["State"] = value


RULES = (
    StateRule(
        name="lambda.function-pending",
        service="lambda", reads=("GetFunction", "GetFunctionConfiguration"), value="Pending",
        patch=_function_field("State"), after=("lambda", "CreateFunction"), duration_s=10.0,
        trigger_key=lambda p, _a: _function_key(p), call_key=_function_key,
        source=STATES_DOC + " ('Pending' after creation; invocations and updates fail until Active)",
    ),
    *(StateRule(
        name=f"lambda.function-inprogress-after-{op}",
        service="lambda", reads=("GetFunction", "GetFunctionConfiguration"), value="InProgress",
        patch=_function_field("LastUpdateStatus"), after=("lambda", op), duration_s=5.0,
        trigger_key=lambda p, _a: _function_key(p), call_key=_function_key,
        source=STATES_DOC + " (LastUpdateStatus InProgress while an update runs)",
    ) for op in ("UpdateFunctionConfiguration", "UpdateFunctionCode")),
    StateRule(
        name="lambda.mapping-creating",
        service="lambda", reads=("GetEventSourceMapping", "ListEventSourceMappings"), value="Creating",
        patch=_mapping_state, after=("lambda", "CreateEventSourceMapping"), duration_s=15.0,
        trigger_key=answer_path("UUID"), call_key=None,
        source=ESM_DOC,
    ),
    StateRule(
        name="lambda.mapping-updating",
        service="lambda", reads=("GetEventSourceMapping", "ListEventSourceMappings"), value="Updating",
        patch=_mapping_state, after=("lambda", "UpdateEventSourceMapping"), duration_s=10.0,
        trigger_key=trigger_param("UUID"), call_key=None,
        source=ESM_DOC,
    ),
)


def _role_name(params: dict[str, Any]) -> str | None:
    role = params.get("Role")
    return role.rsplit("/", 1)[-1] if isinstance(role, str) else None


FUNCTION_GO = ("terraform-provider-aws internal/service/lambda/function.go (CreateFunction retried while "
               "the role 'cannot be assumed by Lambda' or the KMS grant names a principal IAM has not "
               "propagated yet); aws/chalice chalice/awsclient.py _call_client_method_with_retries")
RETRIES = (
    # IAM propagation, as Lambda sees a role created moments ago: first it cannot assume it,
    # then (with KMSKeyArn) KMS does not know the role's principal for the grant yet.
    ErrorRule(
        name="lambda.create-function-role-not-assumable",
        service="lambda", operation="CreateFunction", code="InvalidParameterValueException",
        message="The role defined for the function cannot be assumed by Lambda.",
        after=("iam", "CreateRole"), duration_s=8.0,
        trigger_key=trigger_param("RoleName"), call_key=_role_name, source=FUNCTION_GO,
    ),
    ErrorRule(
        name="lambda.create-function-kms-grant-principal",
        service="lambda", operation="CreateFunction", code="InvalidParameterValueException",
        message="Lambda was unable to configure access to your environment variables because the KMS "
                "key is invalid for CreateGrant. Please check your KMS key settings. KMS Exception: "
                "InvalidArnException KMS Message: ARN does not refer to a valid principal: {Role}",
        after=("iam", "CreateRole"), duration_s=20.0,
        trigger_key=trigger_param("RoleName"), call_key=_role_name, source=FUNCTION_GO,
    ),
    ErrorRule(
        name="lambda.create-mapping-cannot-access-stream",
        service="lambda", operation="CreateEventSourceMapping", code="InvalidParameterValueException",
        message="Cannot access stream {EventSourceArn}. Please ensure the role can perform the "
                "GetRecords, GetShardIterator, DescribeStream, and ListStreams Actions on your stream in IAM.",
        after=("iam", "PutRolePolicy"), duration_s=45.0,
        source="https://docs.aws.amazon.com/lambda/latest/dg/with-kinesis.html (execution role "
               "permissions); the same text is retried by aws-cdk deployers as IAM propagation",
    ),
    # The caller itself may not pass the role: permanent, whatever the clock says.
    ErrorRule(
        name="lambda.create-function-passrole-denied",
        service="lambda", operation="CreateFunction", code="AccessDeniedException", http_status=403,
        message="User: arn:aws:iam::123456789012:user/deployer is not authorized to perform: "
                "iam:PassRole on resource: {Role}",
        source="https://docs.aws.amazon.com/IAM/latest/UserGuide/id_roles_use_passrole.html "
               "(the caller needs iam:PassRole to hand a role to Lambda)",
    ),
    # Deleting a mapping that is still settling after its creation or an update.
    ErrorRule(
        name="lambda.mapping-delete-in-use",
        service="lambda", operation="DeleteEventSourceMapping", code="ResourceInUseException",
        message="Cannot delete the event source mapping because it is in use.",
        after=("lambda", "CreateEventSourceMapping"), duration_s=30.0,
        trigger_key=answer_path("UUID"), call_key=param("UUID"),
        source="https://docs.aws.amazon.com/lambda/latest/api/API_DeleteEventSourceMapping.html "
               "(ResourceInUseException: the operation conflicts with the resource's availability)",
    ),
)
RULES = RULES + RETRIES


DELETE_ESM_DOC = ("https://docs.aws.amazon.com/lambda/latest/api/API_DeleteEventSourceMapping.html"
                  " ('When you delete an event source mapping, it enters a Deleting state and might"
                  " not be completely deleted for several seconds.')")


def _deleting(_uuid: Any, answer: dict[str, Any]) -> dict[str, Any]:
    ghost = {k: v for k, v in answer.items() if k != "ResponseMetadata"}
    ghost["State"] = "Deleting"
    return ghost


def _list_deleting(parsed: dict[str, Any], uuid: Any, answer: dict[str, Any],
                   params: dict[str, Any]) -> None:
    """ListEventSourceMappings still lists it (Deleting) for the stream and function it had."""
    items = parsed.get("EventSourceMappings")
    if not isinstance(items, list) or any(i.get("UUID") == uuid for i in items):
        return
    wanted = params.get("EventSourceArn")
    if wanted and wanted != answer.get("EventSourceArn"):
        return
    function = params.get("FunctionName")
    if function and function not in (answer.get("FunctionArn"),
                                      str(answer.get("FunctionArn", "")).rsplit(":", 1)[-1]):
        return
    items.append(_deleting(uuid, answer))


def _function_name(function: Any) -> str:
    """A function ARN or name, as the name (CreateEventSourceMapping takes either)."""
    return str(function or "").split(":function:", 1)[-1].split(":", 1)[0]


def _pair_deleted(_params: dict[str, Any], answer: dict[str, Any]) -> Any:
    """The (stream, function) pair a deleted mapping joined, from DeleteEventSourceMapping's answer."""
    return answer.get("EventSourceArn"), _function_name(answer.get("FunctionArn"))


def _pair_created(params: dict[str, Any]) -> Any:
    return params.get("EventSourceArn"), _function_name(params.get("FunctionName"))


GHOSTS = (
    GhostRule(
        name="lambda.mapping-deleting",
        service="lambda", reads=("GetEventSourceMapping",), body=_deleting, body_from_answer=True,
        list_reads=("ListEventSourceMappings",), add_to_list=_list_deleting,
        after=("lambda", "DeleteEventSourceMapping"), duration_s=20.0,
        trigger_key=trigger_param("UUID"), call_key=lambda p: p.get("UUID"),
        source=DELETE_ESM_DOC + "; " + ESM_DOC,
    ),
    # While the old mapping is Deleting, a new one on the same stream and function is refused
    # (an `up` right after a `destroy`: both ARNs are the same, they are made from the names).
    ErrorRule(
        name="lambda.create-mapping-while-old-one-deleting",
        service="lambda", operation="CreateEventSourceMapping", code="ResourceConflictException",
        http_status=409,
        message="The event source arn ({EventSourceArn}) and function ({FunctionName}) provided "
                "mapping already exists. Please update or delete the existing mapping with UUID",
        after=("lambda", "DeleteEventSourceMapping"), duration_s=20.0,
        trigger_key=_pair_deleted, call_key=_pair_created,
        source="https://docs.aws.amazon.com/lambda/latest/api/API_CreateEventSourceMapping.html "
               "(ResourceConflictException, 409: 'The resource already exists, or another operation "
               "is in progress.'); the full text, met re-creating a Kinesis mapping right after its "
               "stack was deleted: github.com/tmobile/jazz pull request 74; " + DELETE_ESM_DOC,
    ),
)
RULES = RULES + GHOSTS
