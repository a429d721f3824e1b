"""Shared test set-up: hypothesis profiles and the backend under test.

``PYMSI_BACKEND`` (c or python) selects the backend ``pymsi.core`` exports, so
running the suite once per value covers both; differential tests compare the
two directly in every run.  ``HYPOTHESIS_PROFILE=deep`` runs the property
tests far longer (for fuzzing outside the default suite).
"""

from __future__ import annotations

import os

import pytest
from hypothesis import HealthCheck, settings

settings.register_profile(
    "default", max_examples=100, deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile(
    "deep", max_examples=5000, deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))


@pytest.fixture(scope="session")
def core():
    """pymsi.core as exported for the backend selected by PYMSI_BACKEND."""
    from pymsi import core as c

    return c


@pytest.fixture(scope="session")
def backends():
    """Both backend modules, C first, for differential tests."""
    from pymsi import core as c

    return c.backend("c"), c.backend("python")
