"""Lambda: functions are Pending after CreateFunction, InProgress after an update;
event source mappings are Creating, then Enabled, and Deleting before they go."""

from __future__ import annotations

from typing import Any

from tests.awsbehaviour.model import GhostRule, StateRule, answer_path, trigger_param

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


RULES = (
    *RULES,
    GhostRule(
        name="lambda.mapping-deleting",
        service="lambda", reads=("GetEventSourceMapping",), body=_deleting, body_from_answer=True,
        list_reads=("ListEventSourceMappings",), add_to_list=_list_deleting,
        after=("lambda", "DeleteEventSourceMapping"), duration_s=20.0,
        trigger_key=trigger_param("UUID"), call_key=lambda p: p.get("UUID"),
        source=DELETE_ESM_DOC + "; " + ESM_DOC,
    ),
)
