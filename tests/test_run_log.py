"""A run's log that raises (Dagster's `context.log` while its database is down) never raises
through `NeverRaisingLog`: the line goes to stderr's logger, with the caller's exception."""

from __future__ import annotations

import logging

import pytest

from agent_pipelines.scheduling.run_log import FALLBACK, NeverRaisingLog, never_raising


class _Raising(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        raise RuntimeError("too many retries for DB connection")


def test_a_line_the_runs_log_cannot_take_goes_to_stderr_with_the_callers_exception(caplog: pytest.LogCaptureFixture) -> None:
    broken = logging.getLogger("test-run-log-broken")
    broken.propagate = False
    broken.setLevel(logging.DEBUG)
    broken.addHandler(_Raising())
    log = never_raising(broken)
    assert never_raising(log) is log and isinstance(log, NeverRaisingLog)
    with caplog.at_level(logging.INFO, logger=FALLBACK.name):
        log.info("sent %d request(s)", 3)
        try:
            raise ValueError("the store is down")
        except ValueError:
            log.exception("could not record 2 execution(s)")
    info, error = [r for r in caplog.records if r.name == FALLBACK.name]
    assert info.levelno == logging.INFO and info.getMessage().startswith("sent 3 request(s) [not in the run's log: RuntimeError(")
    assert error.levelno == logging.ERROR and "could not record 2 execution(s)" in error.getMessage()
    assert error.exc_info is not None and error.exc_info[0] is ValueError, "the caller's exception, not the log's"


def test_a_working_log_gets_every_line_and_its_other_attributes() -> None:
    seen: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            seen.append(f"{record.levelname} {record.getMessage()}")

    logger = logging.getLogger("test-run-log-working")
    logger.propagate = False
    logger.setLevel(logging.DEBUG)
    logger.addHandler(Collect())
    log = never_raising(logger)
    log.debug("a"), log.warning("b %s", "c"), log.error("d"), log.critical("e")
    assert seen == ["DEBUG a", "WARNING b c", "ERROR d", "CRITICAL e"]
    assert log.name == "test-run-log-working", "anything else is the wrapped log's"
