"""What the command line shows while a run works: one line per finished stage, a progress bar for
the parallel stages on a terminal, then the summary. Prefect's own per-task log lines still go to
the Prefect API (and UI); on the console they, and other libraries' progress bars and warnings,
appear only with ``--verbose``.

Off unless the command line turns it on, so a deployment's flow run prints nothing extra.
"""
from __future__ import annotations

import logging
import os
import sys
import warnings
from contextlib import contextmanager

_enabled = False


def enable(verbose: bool) -> None:
    """Print stage lines from now on; without ``verbose``, Prefect's console shows warnings only."""
    global _enabled
    _enabled = True
    from prefect.logging.configuration import setup_logging
    from prefect.logging.handlers import PrefectConsoleHandler

    if not verbose:  # worker processes (process pool, local Dask) read this at start-up
        os.environ.setdefault("PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL", "WARNING")
        quiet_third_parties()
    setup_logging()
    # Prefect sets its console handlers up once per process, on the stderr of that moment: a later
    # command in the same process (a notebook, a test) must print to its own stderr
    loggers = [logging.getLogger(), *(lg for lg in logging.root.manager.loggerDict.values()
                                      if isinstance(lg, logging.Logger))]
    for handler in {h for lg in loggers for h in lg.handlers if isinstance(h, PrefectConsoleHandler)}:
        handler.stream = sys.stderr  # (setStream would flush the old one, which may be closed)
        handler.console.file = sys.stderr
        if not verbose:
            handler.setLevel(logging.WARNING)


def quiet_third_parties() -> None:
    """Keep other libraries' progress bars and Python warnings off the console (``--verbose`` keeps them).

    transformers reads ``HF_HUB_DISABLE_PROGRESS_BARS`` when it is imported (its "Loading weights"
    bar), so the variable is set first and, if it was imported already, its bars are turned off."""
    for name, value in (("HF_HUB_DISABLE_PROGRESS_BARS", "1"), ("TRANSFORMERS_VERBOSITY", "error"),
                        ("PYTHONWARNINGS", "ignore")):  # the last one for worker processes
        os.environ.setdefault(name, value)
    if "transformers" in sys.modules:
        sys.modules["transformers"].utils.logging.disable_progress_bar()
    warnings.simplefilter("ignore")


def stage_done(name: str, seconds: float) -> None:
    if _enabled:
        print(f"  {name:<20} {seconds:7.1f} s", file=sys.stderr, flush=True)


@contextmanager
def progress_bar(description: str, total: int):
    """Yield ``advance()``; a transient bar on a terminal, nothing otherwise."""
    if not (_enabled and sys.stderr.isatty()):
        yield lambda: None
        return
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    with Progress(TextColumn("  {task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=Console(file=sys.stderr), transient=True) as bar:
        task = bar.add_task(description, total=total)
        yield lambda: bar.advance(task)
