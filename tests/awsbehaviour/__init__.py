"""AWS's behaviour that moto does not reproduce, kept as data, for the tests.

moto answers every call at once, grants every permission and enforces no quota. AWS does not:
a new table is CREATING for a while, a role is not assumable for seconds after CreateRole,
IoT refuses to delete a policy for minutes after it was detached, CloudTrail stops at five
trails. Each such behaviour is a *rule* here (``rules.py``), with AWS's own error code and
message and the source that documents it, and the same table drives:

- the in-process tests, through botocore hooks on the session (``install``), and
- the end-to-end tests, through an HTTP proxy in front of the moto server (``proxy``).

Time is a ``FakeClock``: a rule lasts "30 s after CreateTable" on that clock, and the code
under test sleeps on it (``AwsContext(sleep=clock.sleep, clock=clock.now)``), so no test waits
real seconds.
"""

from tests.awsbehaviour.behaviour import Behaviour, install
from tests.awsbehaviour.clock import FakeClock
from tests.awsbehaviour.model import Call, ErrorRule, GhostRule, StateRule
from tests.awsbehaviour.rules import ALL_RULES, rules_named

__all__ = ["ALL_RULES", "Behaviour", "Call", "ErrorRule", "FakeClock", "GhostRule", "StateRule",
           "install", "rules_named"]
