"""Hypothesis profiles of the property and fuzz suites: "ci" (the default) and "long".

``ci`` keeps each of tests/properties and tests/fuzz under a minute on one core;
``long`` (``HYPOTHESIS_PROFILE=long python -m pytest tests/fuzz``) runs LONG_FACTOR
times as many inputs, for fuzzing on demand. Tests whose single input costs much
more than a millisecond ask for fewer inputs with ``examples``, which scales too.
Loading a profile is global to the pytest session, so both folders load this one.
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

CI_EXAMPLES = 100  # Hypothesis's own default: other folders in the same session keep theirs
LONG_FACTOR = 20

settings.register_profile("ci", max_examples=CI_EXAMPLES, deadline=None, print_blob=True)
settings.register_profile(
    "long",
    max_examples=CI_EXAMPLES * LONG_FACTOR,
    deadline=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


def examples(ci: int) -> settings:
    """Settings for ``ci`` inputs under the ci profile, proportionally more under long."""
    return settings(max_examples=max(1, ci * settings.default.max_examples // CI_EXAMPLES))
