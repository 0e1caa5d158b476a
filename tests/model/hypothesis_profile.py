"""Hypothesis settings for the model's property tests, applied per test so that other test
packages' profiles are untouched: ``MODEL`` (25 examples; ``TRACEKIT_MODEL_EXAMPLES`` raises it,
e.g. 500 for an extensive run) and ``MODEL_SMALL`` for the slower properties (8 examples)."""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

_EXAMPLES = int(os.environ.get("TRACEKIT_MODEL_EXAMPLES", "25"))

MODEL = settings(max_examples=_EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
MODEL_SMALL = settings(MODEL, max_examples=max(8, _EXAMPLES // 3))
