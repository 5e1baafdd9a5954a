"""``python -m offload_cli``: the command-line uploader (``offload_cli/cli.py``), the same
program as the ``offload`` command that ``pyproject.toml`` declares.

Exit codes: 0 success (every job completed), 1 an upload was rejected or a job failed,
2 usage error, 3 authentication failed, 4 the API refused a request (4xx, message printed),
5 network or server error after retries, 6 timed out waiting for the jobs, 130 interrupted
(Ctrl-C keeps the resume state: re-run the same command to resume).
"""

from __future__ import annotations

import sys

from offload_cli.cli import main

if __name__ == "__main__":
    sys.exit(main())
