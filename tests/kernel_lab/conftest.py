"""Fixtures of the lab tests (tests/kernel_lab/labtools.py has the helpers)."""
from labtools import vng  # noqa: F401  (a fixture)
