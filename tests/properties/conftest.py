"""Hypothesis profiles for the property tests (see profiles.py)."""

import tests.properties.profiles  # noqa: F401  (registers and loads the profile)
