"""The states an execution goes through; every claimed execution ends in a terminal one.

    claimed ──► sending ──► succeeded | failed | unknown
       │           └──────► retrying ──► sending ...
       └──► not_sent          (the run died or stopped before the request could leave)
    catchup ──► claimed       (a missed due time the misfire policy catches up)
    missed, skipped           (decided without sending: misfire policy, paused, agent unhealthy)

`sending` is written before a request leaves, so a row still `claimed` when its run dies was
provably never sent (`not_sent`: safe to send again), and a row `sending` may have reached the
agent (`unknown` when its run died before the answer was recorded).
"""

from __future__ import annotations

CLAIMED = "claimed"
SENDING = "sending"
RETRYING = "retrying"
SUCCEEDED = "succeeded"
FAILED = "failed"
UNKNOWN = "unknown"
NOT_SENT = "not_sent"
MISSED = "missed"
SKIPPED = "skipped"
CATCHUP = "catchup"

#: Nothing more will happen to an execution in one of these.
TERMINAL = frozenset({SUCCEEDED, FAILED, UNKNOWN, MISSED, SKIPPED})
#: Waiting for a carrier: another run may take these over (until their deadline).
TAKEABLE = frozenset({CATCHUP, NOT_SENT, RETRYING})
#: A run is responsible for these while it lives.
HELD = frozenset({CLAIMED, SENDING, RETRYING})
