"""Shared fixtures.  Network-namespace labs: see tests/netlab.py."""

from __future__ import annotations

import sys
from collections.abc import Iterator

import pytest

from tests import netlab
from tests.netlab import Lab

_LAB_FIXTURES = frozenset({"lab", "lab_module"})


def pytest_sessionstart(session: pytest.Session) -> None:
    ok, _ = netlab.availability()
    if ok:
        netlab.cleanup_stale()  # namespaces of earlier runs that were SIGKILLed
    netlab.install_sigterm_cleanup()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests using a lab get the ``netns`` marker; ``netns`` tests are skipped when labs can't run."""
    ok, reason = netlab.availability()
    skip = pytest.mark.skip(reason=f"network-namespace lab unavailable: {reason}")
    for item in items:
        if _LAB_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.netns)
        if not ok and item.get_closest_marker("netns") is not None:
            item.add_marker(skip)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    # Backstop after all fixture finalizers (also runs after KeyboardInterrupt).
    left = netlab.cleanup_run()
    if left:
        print(f"\nnetlab: removed leftover namespaces {left}", file=sys.stderr)


def _require_lab() -> None:
    ok, reason = netlab.availability()
    if not ok:
        pytest.skip(f"network-namespace lab unavailable: {reason}")


@pytest.fixture
def lab() -> Iterator[Lab]:
    """A fresh srv/lan/wan lab, torn down after the test whatever happens."""
    _require_lab()
    with Lab() as the_lab:
        yield the_lab


@pytest.fixture(scope="module")
def lab_module() -> Iterator[Lab]:
    """One lab shared by a module's tests (flush rulesets / stop listeners yourself)."""
    _require_lab()
    with Lab() as the_lab:
        yield the_lab
