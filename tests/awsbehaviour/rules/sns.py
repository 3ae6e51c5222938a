"""SNS: an email subscription waits for its address to confirm (moto confirms at once)."""

from __future__ import annotations

from typing import Any

from tests.awsbehaviour.model import StateRule, trigger_param

SOURCE = ("https://docs.aws.amazon.com/sns/latest/api/API_ListSubscriptionsByTopic.html and "
          "https://docs.aws.amazon.com/sns/latest/api/API_Subscribe.html (an email subscription "
          "is pending until the endpoint owner confirms it with the token SNS sends; until then "
          "its SubscriptionArn reads 'PendingConfirmation')")


def _pending(parsed: dict[str, Any], key: Any, value: Any) -> None:
    for sub in parsed.get("Subscriptions", []):
        if sub.get("Endpoint") == key and sub.get("Protocol") in ("email", "email-json"):
            sub["SubscriptionArn"] = value


RULES = (
    StateRule(
        name="sns.email-subscription-pending",
        service="sns", reads=("ListSubscriptionsByTopic",), value="PendingConfirmation",
        patch=_pending, after=("sns", "Subscribe"),
        duration_s=3 * 86400.0,  # nobody confirms during a test: long enough to outlast any
        trigger_key=trigger_param("Endpoint"), call_key=None,
        source=SOURCE,
    ),
)
