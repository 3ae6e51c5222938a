"""DynamoDB: tables take time to become ACTIVE and to go away."""

from __future__ import annotations

from tests.awsbehaviour.model import GhostRule, StateRule, param, set_path, trigger_param

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
