"""Optional test dependencies (PyTorch's reference networks, Chromium): skipped where they are
missing, but a failure where LDCT_JAX_REQUIRE_OPTIONAL=1 says they must be there (`.ci/run`
sets it, so that a broken install cannot pass as skipped tests)."""

import importlib
import os

import pytest


def missing(what: str, how: str):
    """Skips the test, or fails it where every optional dependency is required."""
    message = f"{what} is not available ({how})"
    if os.environ.get("LDCT_JAX_REQUIRE_OPTIONAL") == "1":
        pytest.fail(message)
    pytest.skip(message)


def require(module: str, how: str):
    """The imported `module`, or `missing`."""
    try:
        return importlib.import_module(module)
    except ImportError:
        missing(module, how)
