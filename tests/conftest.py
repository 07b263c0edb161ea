"""pytest only: a working directory outside the checkout, and trial test cases beside pytest-twisted ones."""

from __future__ import annotations

import os
from typing import Iterator

import pytest


@pytest.fixture(scope="session", autouse=True)
def _work_outside_the_checkout(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Run in a scratch directory, as trial runs in ``_trial_temp``.

    ``twisted.trial`` test cases make their ``mktemp()`` paths relative to the
    working directory: under pytest, started from the checkout, they would
    land in it.
    """
    before = os.getcwd()
    os.chdir(tmp_path_factory.mktemp("cwd"))
    try:
        yield
    finally:
        os.chdir(before)


def pytest_configure(config: pytest.Config) -> None:
    """Let trial TestCases that return Deferreds run beside pytest-twisted tests."""
    _trial_waits_with_pytest_twisted()


def _trial_waits_with_pytest_twisted() -> None:
    """trial's TestCase blocks on a Deferred by running the reactor itself (``reactor.run``).

    Under pytest-twisted the reactor runs in a greenlet of its own as soon as
    one pytest-twisted test has used it, and a second ``run`` fails: every
    asynchronous trial test after such a test would break, and the outcome
    would depend on test order. So once pytest-twisted has its greenlet,
    trial waits the way pytest-twisted does (``blockon``). Under ``trial``
    itself nothing changes.
    """
    try:
        import pytest_twisted
    except ImportError:  # pragma: no cover - the test extras install it
        return
    from twisted.trial import _asynctest

    original = _asynctest.TestCase._wait

    def _wait(self: _asynctest.TestCase, d: object, running: list[None] = _asynctest._wait_is_running) -> None:
        twisted_greenlet = pytest_twisted._instances.gr_twisted
        if twisted_greenlet is None or twisted_greenlet.dead:
            return original(self, d, running)  # type: ignore[no-any-return]
        if running:
            raise RuntimeError("_wait is not reentrant")
        running.append(None)
        try:
            pytest_twisted.blockon(d)
        finally:
            running.pop()
        return None

    _asynctest.TestCase._wait = _wait  # type: ignore[method-assign]
