"""The log handler of a command: attached for the command only, so that commands run in one process
(``loki.cli.main([...])`` from Python or tests) each log once, to their own stderr."""

from __future__ import annotations

import contextlib
import io
import logging

import pytest

import loki.cli
from loki.cli import main


@pytest.fixture
def logging_command(monkeypatch):
    """A command that logs one warning and one INFO line, instead of working on a store."""

    def run(args):
        logging.getLogger("loki").warning("a warning of %s", args.command)
        logging.getLogger("loki").info("a note of %s", args.command)

    monkeypatch.setattr(loki.cli, "_run", run)
    return ["tile", "store.zarr", "--image", "he"]


def test_each_command_logs_to_its_own_stderr_and_leaves_logging_as_it_was(logging_command):
    logger = logging.getLogger("loki")
    handlers, level = list(logger.handlers), logger.level
    for verbose in ([], ["-v"], []):
        err = io.StringIO()
        with contextlib.redirect_stderr(err):
            assert main([*verbose, *logging_command]) == 0
        lines = err.getvalue().splitlines()
        assert [line.split(" ", 1)[1] for line in lines] == (
            ["loki: a warning of tile", "loki: a note of tile"] if verbose else ["loki: a warning of tile"]
        )
        assert (logger.handlers, logger.level) == (handlers, level)


def test_a_failing_command_leaves_logging_as_it_was(monkeypatch):
    def run(args):
        raise ValueError("bad input")

    monkeypatch.setattr(loki.cli, "_run", run)
    logger = logging.getLogger("loki")
    handlers, level = list(logger.handlers), logger.level
    with pytest.raises(SystemExit, match="loki tile: bad input"):
        main(["tile", "store.zarr", "--image", "he"])
    assert (logger.handlers, logger.level) == (handlers, level)


def test_a_handler_the_program_set_is_kept_and_not_doubled(logging_command):
    logger = logging.getLogger("loki")
    own = io.StringIO()
    handler = logging.StreamHandler(own)
    logger.addHandler(handler)
    try:
        err = io.StringIO()
        with contextlib.redirect_stderr(err):
            assert main(logging_command) == 0
        assert own.getvalue() == "a warning of tile\n"  # once, through the program's own handler
        assert err.getvalue() == ""
        assert logger.handlers == [handler]
    finally:
        logger.removeHandler(handler)
