"""FlowProducer trees for the queue-level flow tests: a ``finalize`` parent over steps that
fail it when they fail for good, as an upload's pipeline is laid out (offload.flows)."""

from __future__ import annotations

from typing import Any


def finalize_over(steps: list[str], queue: str = "steps", parent_id: str = "parent") -> dict:
    """The tree of ``parent_id`` (``finalize``) over one child per step, each child's id its
    step's name, everything in ``queue`` with empty data."""
    children: list[dict[str, Any]] = [
        {
            "name": step,
            "queueName": queue,
            "data": {},
            "opts": {"jobId": step, "failParentOnFailure": True},
        }
        for step in steps
    ]
    return {
        "name": "finalize",
        "queueName": queue,
        "data": {},
        "opts": {"jobId": parent_id},
        "children": children,
    }
