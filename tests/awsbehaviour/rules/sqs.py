"""SQS: a queue name can be used again only 60 seconds after the queue was deleted."""

from __future__ import annotations

from typing import Any

from tests.awsbehaviour.model import ErrorRule, param

SOURCE = ("https://docs.aws.amazon.com/AWSSimpleQueueService/latest/APIReference/"
          "API_CreateQueue.html (Errors: QueueDeletedRecently, 'You must wait 60 seconds after "
          "deleting a queue before you can create another with the same name.'); "
          "https://docs.aws.amazon.com/AWSSimpleQueueService/latest/APIReference/API_DeleteQueue.html "
          "('When you delete a queue, you must wait at least 60 seconds before creating a queue "
          "with the same name.')")


def _queue_name(params: dict[str, Any], _answer: dict[str, Any]) -> str | None:
    url = params.get("QueueUrl")
    return url.rstrip("/").rsplit("/", 1)[-1] if isinstance(url, str) else None


RULES = (
    ErrorRule(
        name="sqs.queue-deleted-recently",
        service="sqs", operation="CreateQueue",
        # SQS speaks JSON but answers with its query-era code (x-amzn-query-error), which is
        # what botocore reports and maps to sqs.exceptions.QueueDeletedRecently.
        code="AWS.SimpleQueueService.QueueDeletedRecently",
        message="You must wait 60 seconds after deleting a queue before you can create another "
                "with the same name.",
        after=("sqs", "DeleteQueue"), duration_s=60.0,
        trigger_key=_queue_name, call_key=param("QueueName"),
        source=SOURCE,
    ),
)
