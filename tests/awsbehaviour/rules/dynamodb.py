"""DynamoDB: tables take time to become ACTIVE and to go away."""

from __future__ import annotations

from tests.awsbehaviour.model import ErrorRule, GhostRule, StateRule, param, set_path, trigger_param

TABLE_STATUS_DOC = ("https://docs.aws.amazon.com/amazondynamodb/latest/APIReference/"
                    "API_TableDescription.html (TableStatus: CREATING, UPDATING, DELETING, ACTIVE)")

RULES = (
    StateRule(
        name="dynamodb.table-creating",
        service="dynamodb", reads=("DescribeTable",), value="CREATING",
        patch=set_path("Table", "TableStatus"),
        after=("dynamodb", "CreateTable"), duration_s=20.0,
        trigger_key=trigger_param("TableName"), call_key=param("TableName"),
        source=TABLE_STATUS_DOC + "; CreateTable: 'DynamoDB sets the TableStatus to CREATING. "
               "After the table is created, DynamoDB sets the TableStatus to ACTIVE.'",
    ),
    StateRule(
        name="dynamodb.table-updating",
        service="dynamodb", reads=("DescribeTable",), value="UPDATING",
        patch=set_path("Table", "TableStatus"),
        after=("dynamodb", "UpdateTable"), duration_s=10.0,
        trigger_key=trigger_param("TableName"), call_key=param("TableName"),
        source=TABLE_STATUS_DOC,
    ),
    GhostRule(
        name="dynamodb.table-deleting",
        service="dynamodb", reads=("DescribeTable",),
        body=lambda name: {"Table": {"TableName": name, "TableStatus": "DELETING",
                                     "TableArn": f"arn:aws:dynamodb:us-east-1:123456789012:table/{name}"}},
        after=("dynamodb", "DeleteTable"), duration_s=15.0,
        trigger_key=trigger_param("TableName"), call_key=param("TableName"),
        source=TABLE_STATUS_DOC + "; DeleteTable: 'the table is in the DELETING state until "
               "DynamoDB completes the deletion'",
    ),
)


def _pitr_enabling(parsed, _key, value):
    """Only an enabling shows ENABLING: a PITR being switched off is not patched."""
    described = (parsed.get("ContinuousBackupsDescription") or {}).get("PointInTimeRecoveryDescription")
    if isinstance(described, dict) and described.get("PointInTimeRecoveryStatus") == "ENABLED":
        described["PointInTimeRecoveryStatus"] = value


PITR_SOURCE = ("terraform-provider-aws internal/service/dynamodb/table.go: updatePITR retries "
               "ContinuousBackupsUnavailableException 'Backups are being enabled' (a new table), then "
               "waitPITRUpdated polls DescribeContinuousBackups until the status is ENABLED; "
               "https://docs.aws.amazon.com/amazondynamodb/latest/APIReference/"
               "API_PointInTimeRecoveryDescription.html (PointInTimeRecoveryStatus ENABLING | ENABLED | DISABLED)")

RULES = RULES + (
    ErrorRule(
        name="dynamodb.backups-being-enabled",
        service="dynamodb", operation="UpdateContinuousBackups",
        code="ContinuousBackupsUnavailableException",
        message="Backups are being enabled for the table: {TableName}. Please retry later",
        after=("dynamodb", "CreateTable"), duration_s=60.0,
        trigger_key=trigger_param("TableName"), call_key=param("TableName"),
        source=PITR_SOURCE,
    ),
    StateRule(
        name="dynamodb.pitr-enabling",
        service="dynamodb", reads=("DescribeContinuousBackups",), value="ENABLING",
        patch=_pitr_enabling, after=("dynamodb", "UpdateContinuousBackups"), duration_s=30.0,
        trigger_key=trigger_param("TableName"), call_key=param("TableName"),
        source=PITR_SOURCE,
    ),
)
