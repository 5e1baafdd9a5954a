"""The Node BullMQ peer (tests/node/bullmq_peer.mjs): a Node FlowProducer or Worker on our
queues, for the compatibility tests. ``scripts/setup.sh`` installs its locked packages."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

NODE_DIR = Path(__file__).resolve().parents[1] / "node"
PEER = NODE_DIR / "bullmq_peer.mjs"


def node_peer(command: str, request: dict[str, Any], timeout_s: float = 60.0) -> Any:
    """Run one peer command with ``request`` as JSON; its JSON answer."""
    node = shutil.which("node")
    assert node, "node is not on PATH: run scripts/setup.sh"
    assert (NODE_DIR / "node_modules" / "bullmq").is_dir(), (
        "Node BullMQ is not installed in tests/node: run scripts/setup.sh"
    )
    done = subprocess.run(
        [node, str(PEER), command],
        input=json.dumps(request),
        capture_output=True,
        text=True,
        timeout=timeout_s,
        cwd=NODE_DIR,
        check=False,
    )
    assert done.returncode == 0, f"node peer {command} failed: {done.stderr[-2000:]}"
    return json.loads(done.stdout)
