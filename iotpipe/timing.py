"""How long AWS takes to make what a call started usable, and how often to ask in the meantime.

One table, two uses:

- **Scheduling.** With more resources ready than workers, the engine starts the one with the
  most AWS time still ahead of it (its own wait plus its longest chain of dependants): the
  Lambda role, whose propagation gates the function, the mapping and the topic rule, goes
  before a log group nothing waits for, so the long waits overlap instead of queueing.
- **Polling.** A wait asks every tenth of what it expects, between 1 and 5 s: it ends at most
  about 10% (and never more than 5 s) after AWS is ready, without asking a 30-second stream
  thirty times. botocore's own waiter delays (20 s for a table) are made for long tasks and
  would overshoot a 20-second CREATING by up to the whole delay.

The figures are typical durations, not bounds (the bounds are each wait's own timeout). AWS
documents these operations as asynchronous without a duration; the figures are what a
deploy meets in practice, and the same ones the AWS time model in ``tests/awsbehaviour``
uses for its transitional states.
"""

from __future__ import annotations

from dataclasses import dataclass

MIN_POLL_S = 1.0
MAX_POLL_S = 5.0


@dataclass(frozen=True)
class Expected:
    """What one asynchronous AWS change typically takes."""

    seconds: float
    source: str

    @property
    def poll_s(self) -> float:
        """The polling interval that fits it: a tenth, between 1 and 5 seconds."""
        return min(MAX_POLL_S, max(MIN_POLL_S, self.seconds / 10))


TABLE_ACTIVE = Expected(
    20.0, "https://docs.aws.amazon.com/amazondynamodb/latest/APIReference/API_CreateTable.html "
          "(CREATING, then ACTIVE: 'an asynchronous operation')")
TABLE_UPDATED = Expected(
    10.0, "https://docs.aws.amazon.com/amazondynamodb/latest/APIReference/API_UpdateTable.html "
          "('an asynchronous operation; while it's executing, the table status changes from ACTIVE "
          "to UPDATING'): a setting such as deletion protection, not a new index or capacity")
PITR_ENABLED = Expected(
    30.0, "https://docs.aws.amazon.com/amazondynamodb/latest/APIReference/API_UpdateContinuousBackups.html "
          "(PointInTimeRecoveryStatus ENABLING, then ENABLED)")
STREAM_ACTIVE = Expected(
    30.0, "https://docs.aws.amazon.com/kinesis/latest/APIReference/API_CreateStream.html "
          "(CREATING, then ACTIVE; StartStreamEncryption: UPDATING, then ACTIVE)")
FUNCTION_ACTIVE = Expected(
    10.0, "https://docs.aws.amazon.com/lambda/latest/dg/functions-states.html "
          "(Pending after CreateFunction, then Active)")
MAPPING_SETTLED = Expected(
    15.0, "https://docs.aws.amazon.com/lambda/latest/api/API_GetEventSourceMapping.html "
          "(State Creating/Enabling/Updating/Deleting before Enabled or gone)")
ROLE_PROPAGATED = Expected(
    10.0, "https://docs.aws.amazon.com/IAM/latest/UserGuide/troubleshoot_general.html"
          "#troubleshoot_general_eventual-consistency (a new role is not usable everywhere at once)")

# "Not yet" answers that end seconds to a minute after the call that caused them are asked
# again at a short, even cadence, not a doubling one: a backoff that doubles from 1 s tries at
# 0, 1, 3, 7, 15, 25 s, so a role usable after 8 s is used after 15, and backups enabled
# after 60 s are used after 65. Each cadence is about a tenth of the usual wait.
PROPAGATION_POLL_S = 2.0  # IAM: a new role or policy is usable by Lambda and IoT in ~10 s
KEY_POLL_S = 1.0  # KMS: a new key is found everywhere within seconds
BACKUPS_POLL_S = 3.0  # DynamoDB: a new table accepts point-in-time recovery within about a minute
