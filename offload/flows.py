"""An upload's pipeline as a bullmq flow: which jobs it has, how they are linked, which of them
a (re)start adds.

A flow is one parent, ``finalize``, and one child per step of the upload's pipeline
(``offload.pipelines``), every job carrying the same :class:`~offload.jobs.JobRef` (the
upload's object) and a deterministic id (``offload.jobs.job_id``): the same object version
always maps to the same tree, so duplicate S3 events, replays and the reconciler all name the
same jobs.

How a child is linked to its parent, in both stores:

* Redis (bullmq's own layout, the one a Node ``FlowProducer`` writes): the parent's hash
  ``<prefix>:<queue>:<parent id>`` waits in ``<queue>:waiting-children`` while the set
  ``<parent key>:dependencies`` holds the keys of its unfinished children; each child's hash
  has ``parentKey`` (the parent's key) and ``parent`` (``{"id", "queueKey", "fpof": true}``).
  A completed child moves its key to the hash ``<parent key>:processed`` with its return
  value; a child that fails for good (``failParentOnFailure``) moves to
  ``<parent key>:unsuccessful`` and gives the parent a deferred failure (``defa``).
* PostgreSQL: every job of the flow has a ``jobs`` row; a child's ``parent_id`` is the
  ``finalize`` job's id, the parent's is NULL (migration 0004).

What a (re)start adds is decided from the flow's status rows (:func:`nodes_to_add`), because
re-adding a job bullmq no longer has would run it again: retention removes finished jobs from
Redis, and a child whose key is gone is created anew by ``addJob`` (and made a dependency of
the parent again).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from offload.jobs import JobRef, job_id
from offload.pipelines import FINALIZE, Pipeline

COMPLETED = "completed"
FAILED = "failed"
# Upload states (uploads.state) that name an object; a newer version of the key may replace it
# in any of them (offload.db.uploads), and the final ones end the object's flow.
HOLDING_STATES = ("uploaded", "queued", "processed", "failed")
FINAL_UPLOAD_STATES = ("processed", "failed")


@dataclass(frozen=True)
class FlowNode:
    """One job of a flow: its name, the queue it waits in, the object it is about."""

    name: str
    queue: str
    ref: JobRef

    @property
    def job_id(self) -> str:
        return job_id(self.name, self.ref)


@dataclass(frozen=True)
class FlowPlan:
    """The whole tree of one upload's object: ``finalize`` and its children."""

    pipeline: Pipeline
    parent: FlowNode
    children: tuple[FlowNode, ...]

    @property
    def nodes(self) -> tuple[FlowNode, ...]:
        return (self.parent, *self.children)


def plan_flow(
    pipeline: Pipeline,
    ref: JobRef,
    base_queue: str,
    queue_of: Callable[[str], str] | None = None,
) -> FlowPlan:
    """The flow of ``ref``'s object under ``pipeline``: the parent in the main queue, each
    step in its own queue when it has limits, all under the same prefix. ``queue_of`` maps a
    step's name to its queue as deployed (``offload.step_limits.queue_for``: the declared
    limits with the settings' overrides); without it, the declaration alone (``Step.queue``)."""
    return FlowPlan(
        pipeline,
        FlowNode(FINALIZE, base_queue, ref),
        tuple(
            FlowNode(step.name, queue_of(step.name) if queue_of else step.queue(base_queue), ref)
            for step in pipeline.steps
        ),
    )


def nodes_to_add(plan: FlowPlan, states: Mapping[str, str]) -> tuple[FlowNode, ...]:
    """The nodes a (re)start of ``plan`` adds, given the status rows' ``states`` by job id.

    * The parent's row is final (processed or failed for good): nothing; the flow is over.
    * A child's row is ``failed``: nothing; the parent fails with it (its deferred failure),
      and re-running a step is a retry's business, not a start's.
    * Otherwise the parent (a no-op while Redis has it) and every child whose row is not
      ``completed``: a completed child is never run twice; its result is in the parent's
      ``processed`` hash, or in its row when Redis lost it (``finalize`` reads both).
    """
    if states.get(plan.parent.job_id) in (COMPLETED, FAILED):
        return ()
    if any(states.get(child.job_id) == FAILED for child in plan.children):
        return ()
    return (
        plan.parent,
        *(child for child in plan.children if states.get(child.job_id) != COMPLETED),
    )


def flow_tree(
    plan: FlowPlan, nodes: tuple[FlowNode, ...], job_options: Mapping[str, Any]
) -> dict[str, Any]:
    """The ``FlowProducer.add`` argument for ``nodes`` (the parent first, then children).

    Children fail their parent when they fail for good (``failParentOnFailure``): the upload
    then ends ``failed`` naming the step. A tree of the parent alone adds it as a plain job,
    which is a no-op when bullmq still has it."""
    parent, *children = nodes
    assert parent == plan.parent, "a flow is always (re)started from its parent"
    return {
        "name": parent.name,
        "queueName": parent.queue,
        "data": parent.ref.to_data(),
        "opts": {**job_options, "jobId": parent.job_id},
        "children": [
            {
                "name": child.name,
                "queueName": child.queue,
                "data": child.ref.to_data(),
                "opts": {**job_options, "jobId": child.job_id, "failParentOnFailure": True},
            }
            for child in children
        ],
    }
