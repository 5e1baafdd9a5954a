"""Partial retries of a pipeline: retry one failed step, then run its flow's parent again.

bullmq has no primitive for this. With ``failParentOnFailure`` a step (a flow child) that fails
for good moves its id from the parent's ``:dependencies`` set to its ``:unsuccessful`` zset and
gives the parent a deferred failure (``defa``); the next worker to fetch the parent fails it
without running it. Retrying the child (``Job.retry``, bullmq's ``reprocessJob``) moves the child
back to the parent's dependencies, but leaves the parent where it is: failed. Reprocessing the
parent would move it to ``wait``, not back to ``waiting-children``, so it would run at once,
without the step's result.

:func:`retry_step` does both halves in one Lua script, so either both happen or neither does:
it reopens the parent (out of ``failed``, or out of ``wait``/``prioritized``/``delayed`` while its
deferred failure has not been applied yet, into ``waiting-children`` with the failure cleared),
then does what bullmq's own ``reprocessJob`` does to the child (back to ``wait``, back into the
parent's dependencies). The keys are bullmq's own layout, so a Node worker or Bull Board sees
an ordinary flow: the parent waiting for a child, the child waiting to run.

The parent is reopened only when the retried step is its last unsuccessful child: with two
failed steps, retrying one runs that step alone (its result lands in the parent's
``:processed`` hash) and the parent stays failed until the other is retried too.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

# One script, so that either everything happens or nothing does. KEYS: 1 child key, 2..9 the
# child queue's failed, wait, prioritized, meta, active, marker, pc, events; 10 parent key,
# 11..17 the parent queue's failed, wait, prioritized, delayed, waiting-children, active,
# events. ARGV: 1 child id, 2 parent id, 3 now (ms). Returns 1: child retried, parent reopened;
# 0: child retried, parent left failed (other steps still unsuccessful); -1: no parent;
# -3: child not failed; -4: parent busy (a worker is applying its deferred failure right now).
# The child's half is bullmq's reprocessJob (the same keys and fields, so Node sees a retry).
_RETRY_STEP = """
local rcall = redis.call
local childKey, childId, parentKey, parentId = KEYS[1], ARGV[1], KEYS[10], ARGV[2]
if not rcall("ZSCORE", KEYS[2], childId) then return -3 end
if rcall("EXISTS", parentKey) == 0 then return -1 end
local others = 0
for _, member in ipairs(rcall("ZRANGE", parentKey .. ":unsuccessful", 0, -1)) do
  if member ~= childKey then others = others + 1 end
end
local reopened = 0
if others == 0 then
  if rcall("ZSCORE", KEYS[15], parentId) then
    reopened = 1
  elseif rcall("LPOS", KEYS[16], parentId) then
    return -4
  else
    local prev = nil
    if rcall("ZREM", KEYS[11], parentId) == 1 then prev = "failed"
    elseif rcall("LREM", KEYS[12], 0, parentId) > 0 then prev = "waiting"
    elseif rcall("ZREM", KEYS[13], parentId) == 1 then prev = "prioritized"
    elseif rcall("ZREM", KEYS[14], parentId) == 1 then prev = "delayed"
    end
    if not prev then return -4 end
    rcall("HDEL", parentKey, "defa", "failedReason", "finishedOn", "processedOn",
          "stacktrace", "atm", "ats")
    rcall("ZADD", KEYS[15], tonumber(ARGV[3]), parentId)
    rcall("XADD", KEYS[17], "*", "event", "waiting-children", "jobId", parentId, "prev", prev)
    reopened = 1
  end
end
-- bullmq's reprocessJob for the child (prev state "failed"), plus a fresh stall allowance.
rcall("ZREM", KEYS[2], childId)
rcall("HDEL", childKey, "finishedOn", "processedOn", "failedReason", "stc")
local meta = rcall("HMGET", KEYS[5], "paused", "concurrency", "opts.maxLenEvents")
local maxed = meta[1] and true or false
if not maxed and meta[2] then maxed = rcall("LLEN", KEYS[6]) >= tonumber(meta[2]) end
local priority = tonumber(rcall("HGET", childKey, "priority")) or 0
if priority == 0 then
  rcall("LPUSH", KEYS[3], childId)
else
  local counter = rcall("INCR", KEYS[8])
  rcall("ZADD", KEYS[4], priority * 0x100000000 + counter % 0x100000000, childId)
end
if not maxed then rcall("ZADD", KEYS[7], 0, "0") end
if rcall("ZREM", parentKey .. ":unsuccessful", childKey) == 1 or
   rcall("HDEL", parentKey .. ":failed", childKey) == 1 then
  rcall("SADD", parentKey .. ":dependencies", childKey)
end
rcall("XADD", KEYS[9], "MAXLEN", "~", tonumber(meta[3]) or 10000, "*", "event", "waiting",
      "jobId", childId, "prev", "failed")
return reopened
"""


class StepRetryError(RuntimeError):
    """The step cannot be retried now; ``reason`` is safe to show to its owner."""

    def __init__(self, reason: str, *, gone: bool = False):
        super().__init__(reason)
        self.reason = reason
        self.gone = gone


@dataclass(frozen=True)
class StepRetry:
    """What a retry did: whether the parent waits for the step again (``reopened``)."""

    reopened: bool


def _split_key(job_key: str) -> tuple[str, str]:
    """``<prefix>:<queue>:<id>`` as (queue key ``<prefix>:<queue>``, id). bullmq's ids cannot
    hold ``:`` (ours never do), so the last colon separates them."""
    queue_key, _, job_id = job_key.rpartition(":")
    if not queue_key or not job_id:
        raise StepRetryError(f"malformed job key {job_key!r}")
    return queue_key, job_id


async def retry_step(queue: Any, job: Any) -> StepRetry:
    """Retry ``job`` (a failed flow child of ``queue``, a bullmq Queue) and reopen its parent.

    Raises :class:`StepRetryError` when the child is not failed, has no parent any more (past
    retention: ``gone``) or its parent is being failed by a worker at this very moment (the
    caller may try again in a moment)."""
    parent_key = job.parentKey
    if not parent_key:
        raise StepRetryError("job is not a step of a pipeline")
    parent_queue, parent_id = _split_key(parent_key)
    child_keys = [
        queue.toKey(job.id),
        *(
            queue.toKey(name)
            for name in ("failed", "wait", "prioritized", "meta", "active", "marker", "pc")
        ),
        queue.toKey("events"),
    ]
    parent_keys = [
        parent_key,
        *(
            f"{parent_queue}:{name}"
            for name in (
                "failed",
                "wait",
                "prioritized",
                "delayed",
                "waiting-children",
                "active",
                "events",
            )
        ),
    ]
    script = queue.client.register_script(_RETRY_STEP)
    outcome = await script(
        keys=child_keys + parent_keys, args=[job.id, parent_id, int(time.time() * 1000)]
    )
    if outcome == -3:
        raise StepRetryError("job is not failed in the queue; it may still be finishing")
    if outcome == -1:
        raise StepRetryError("the pipeline's parent job is no longer in the queue", gone=True)
    if outcome == -4:
        raise StepRetryError("the pipeline is being failed right now; try again in a moment")
    return StepRetry(reopened=outcome == 1)
