"""hypothesis settings for the property tests: how many examples, and reproducible runs.

* default: ``DEFAULT_EXAMPLES`` per test, what ``scripts/test.sh`` runs: the quick look a
  developer's test command can afford.
* ``OFFLOAD_HYPOTHESIS_EXAMPLES=N``: N examples per test. ``.ci/run`` sets 2,000 (each route
  gets at least that many in CI: about 4 minutes of CPU, docs/testing.md).
* Either way the examples are derived from each test's name (``derandomize``), so a failure
  in CI replays identically anywhere, and a green run stays green until the code or the test
  changes. ``OFFLOAD_HYPOTHESIS_RANDOM=1`` draws them from a random seed instead (hypothesis
  prints how to reproduce a failure: ``@reproduce_failure`` and the seed; pytest's
  ``--hypothesis-seed=S`` replays a given seed): the exploring run of docs/testing.md.

No example database (``database=None``): nothing is written into the repository (no
``.hypothesis/`` folder), and a CI run never depends on what an earlier run found. A failing
example is kept instead as an explicit regression test next to the property.

``deadline=None``: an example's time depends on the machine's load (two CPUs shared by the
xdist workers), not on the code; the suite's own timeout (pytest-timeout) still bounds a test.
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

DEFAULT_EXAMPLES = 100


def examples() -> int:
    raw = os.environ.get("OFFLOAD_HYPOTHESIS_EXAMPLES", "").strip()
    return int(raw) if raw else DEFAULT_EXAMPLES


def _random() -> bool:
    return os.environ.get("OFFLOAD_HYPOTHESIS_RANDOM", "").strip() not in ("", "0")


# The tests share one seeded world (a function-scoped fixture) across their examples on
# purpose: seeding per example would cost more than the example.
api_settings = settings(
    max_examples=examples(),
    deadline=None,
    database=None,
    derandomize=not _random(),
    print_blob=True,
    suppress_health_check=[
        HealthCheck.function_scoped_fixture,
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
    ],
)
