"""Tests run on 4 simulated CPU devices so that data parallelism is exercised everywhere."""

import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=4")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

# The files with the most work, first: the two xdist workers (--dist loadfile, setup.cfg) take
# whole files in collection order, and a long file started last leaves the other worker idle.
# About 240, 140, 110, 110, 110, 80 and 70 s of tests on one core.
LONGEST_FIRST = ("test_natural.py", "test_train.py", "test_benchmarks.py", "test_fastpath.py",
                 "test_jacobian.py", "test_models.py", "test_notebook.py")


def pytest_collection_modifyitems(items):
    def rank(item):
        name = item.path.name
        return LONGEST_FIRST.index(name) if name in LONGEST_FIRST else len(LONGEST_FIRST)

    items.sort(key=rank)  # stable: each file's tests keep their order
