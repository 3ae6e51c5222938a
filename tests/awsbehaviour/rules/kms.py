"""KMS: a key just made is not found everywhere yet (eventual consistency)."""

from __future__ import annotations

from tests.awsbehaviour.model import ErrorRule, answer_path, param

SOURCE = ("https://docs.aws.amazon.com/kms/latest/developerguide/accessing-kms.html"
          "#programming-eventual-consistency; terraform-provider-aws internal/service/kms/key.go "
          "(updateKeyRotationEnabled, updateKeyPolicy: RetryWhenIsA NotFoundException)")


def _not_found_after_create(operation: str) -> ErrorRule:
    return ErrorRule(
        name=f"kms.{operation}-key-not-found-after-create",
        service="kms", operation=operation, code="NotFoundException",
        message="Key 'arn:aws:kms:us-east-1:123456789012:key/{KeyId}' does not exist",
        after=("kms", "CreateKey"), duration_s=5.0,
        trigger_key=answer_path("KeyMetadata", "KeyId"), call_key=param("KeyId"),
        source=SOURCE,
    )


RULES = (_not_found_after_create("EnableKeyRotation"), _not_found_after_create("PutKeyPolicy"))
