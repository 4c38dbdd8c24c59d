"""Running a command-line tool of ``tools/`` inside the test process, as ``python tools/<tool>.py`` would run.

A fresh interpreter spends seconds importing torch, torchvision, timm and Hydra before a tool reads its first
argument; in the test process they are imported already.  :func:`run_tool` executes the script itself (its
``if __name__ == "__main__":`` block included, so ``check_overrides(sys.argv[1:])`` and ``@hydra.main`` read
the arguments given here) with what a fresh process would have: the script's folder first on ``sys.path``
(``hydra_plugins`` of ``tools/`` is found), the repository as working directory, ``HYDRA_FULL_ERROR=0``, no
visible CUDA device (``torch.cuda.is_available()`` is false), and Hydra's plugins scanned anew.  It returns
what the process would have: the exit code, stdout and stderr; an exception that escapes the script is
written to stderr as the interpreter would print it (``Traceback ...``), so that a "no traceback" assertion
keeps its meaning.  Everything the run changes in this process (``sys.argv``, ``sys.path``, the environment,
the working directory, Hydra's singletons, logging, warning filters, torch's thread count and CUDA check,
the sweep's list of failed jobs) is put back.

What only a real process shows (import-time output, interpreter start-up, signals) is left to the tests that
start one; each tool keeps at least one such test.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import runpy
import sys
import traceback
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from hydra.core.config_store import ConfigStore
from hydra.core.plugins import Plugins
from hydra.core.singleton import Singleton

from mixbench.sweep import FAILED_JOBS
from tests.helpers.config import REPO

TOOLS = REPO / "tools"


@dataclass(frozen=True)
class ToolRun:
    """What ``python tools/<tool>.py <arguments>`` left: its exit code and everything it printed."""

    returncode: int
    stdout: str
    stderr: str


def run_tool(tool: str, arguments: Sequence[str], cwd: Path = REPO) -> ToolRun:
    """Run ``tools/<tool>.py`` with ``arguments`` in this process; its exit code, stdout and stderr."""
    script = TOOLS / f"{tool}.py"
    stdout, stderr = io.StringIO(), io.StringIO()
    with _process_state_restored(), contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        sys.argv = [str(script), *arguments]
        sys.path.insert(0, str(script.parent))
        os.environ.update(CUDA_VISIBLE_DEVICES="", HYDRA_FULL_ERROR="0")
        torch.cuda.is_available = _no_cuda  # the variable above is read when CUDA starts: maybe long ago
        os.chdir(cwd)
        Singleton._instances.pop(Plugins, None)  # scanned again, with tools/hydra_plugins on the path
        FAILED_JOBS.clear()
        returncode = _exit_code_of(lambda: runpy.run_path(str(script), run_name="__main__"))
    return ToolRun(returncode, stdout.getvalue(), stderr.getvalue())


def _exit_code_of(run) -> int:
    """The exit status the interpreter would report for ``run()``, printing what it would print."""
    try:
        run()
    except SystemExit as done:
        code = done.code
        if code is None or isinstance(code, int):
            return code or 0
        print(code, file=sys.stderr)  # sys.exit("message"): printed, status 1
        return 1
    except Exception:  # the interpreter's own handling: a traceback, status 1 (Ctrl-C still stops the tests)
        traceback.print_exc()
        return 1
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
    return 0


def _no_cuda() -> bool:
    """``torch.cuda.is_available`` of a process started with ``CUDA_VISIBLE_DEVICES=""``."""
    return False


@contextlib.contextmanager
def _process_state_restored() -> Iterator[None]:
    """Put back what a tool run changes in this process (see the module's docstring)."""
    argv, path, environ, cwd = sys.argv, sys.path[:], dict(os.environ), os.getcwd()
    threads, cuda_is_available = torch.get_num_threads(), torch.cuda.is_available
    singletons = dict(Singleton._instances)
    singleton_states = {
        cls: dict(vars(instance)) for cls, instance in singletons.items() if cls is not ConfigStore
    }
    loggers = _logging_state()
    try:
        with warnings.catch_warnings():
            yield
    finally:
        sys.argv, sys.path[:] = argv, path
        os.environ.clear()
        os.environ.update(environ)
        os.chdir(cwd)
        torch.set_num_threads(threads)
        torch.cuda.is_available = cuda_is_available
        Singleton._instances.clear()
        Singleton._instances.update(singletons)
        for cls, state in singleton_states.items():
            vars(singletons[cls]).clear()
            vars(singletons[cls]).update(state)
        _restore_logging(loggers)
        FAILED_JOBS.clear()


def _logging_state() -> dict[str, tuple]:
    """Every logger (the root one included) with its handlers, level, disabled and propagate flags."""
    everyone = {"": logging.getLogger()}
    everyone.update(
        (name, logger)
        for name, logger in logging.Logger.manager.loggerDict.items()
        if isinstance(logger, logging.Logger)
    )
    return {
        name: (logger, logger.handlers[:], logger.level, logger.disabled, logger.propagate)
        for name, logger in everyone.items()
    }


def _restore_logging(state: dict[str, tuple]) -> None:
    """Loggers as ``state`` (:func:`_logging_state`) holds them; those made since then without handlers."""
    for logger, handlers, level, disabled, propagate in state.values():
        logger.handlers[:] = handlers
        logger.setLevel(level)
        logger.disabled, logger.propagate = disabled, propagate
    for name, logger in logging.Logger.manager.loggerDict.items():  # made by the run: quiet, as new ones are
        if name not in state and isinstance(logger, logging.Logger):
            logger.handlers.clear()
