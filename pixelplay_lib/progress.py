"""The one progress bar of the package: every loop that shows progress goes through `bar`.

Where nothing redraws a line in place, every redraw of a bar is kept: a notebook run by
papermill (Kaggle's "Save & Run All" included) stores each one as an output of the executed
.ipynb, and a log file or CI pipe appends it. tqdm's defaults there (a redraw every 0.1 s,
one more per `set_postfix`, widget bars when ipywidgets is installed) grew executed
notebooks by megabytes and tripped Jupyter's IOPub rate limit (papermill issues #765, #426).

So: text bars only (tqdm.std, never widgets, whose state an executed notebook cannot show),
`set_postfix` / `set_description` wait for the next timed redraw, and redraws are at least
INTERVAL_S apart unless stderr is a terminal. papermill sets no environment variable in the
kernel (PAPERMILL_INPUT_PATH / _OUTPUT_PATH are opt-in notebook parameters), and a kernel
cannot tell whether a person watches it, so a terminal is the one sign of an interactive run.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable
from typing import Any

from tqdm import tqdm

INTERVAL_S = 5.0  # seconds between redraws where every redraw is kept (notebook, log)
TERMINAL_INTERVAL_S = 0.5  # a terminal redraws the line in place: nothing accumulates


class Bar(tqdm):
    """tqdm whose postfix and description show at the next timed redraw: tqdm redraws at
    once by default, one kept line per training step."""

    def set_postfix(self, ordered_dict=None, refresh: bool = False, **kwargs: Any) -> None:
        super().set_postfix(ordered_dict, refresh, **kwargs)

    def set_description(self, desc: str | None = None, refresh: bool = False) -> None:
        super().set_description(desc, refresh)


def interactive() -> bool:
    """True when stderr (where the bars go) is a terminal."""
    isatty = getattr(sys.stderr, "isatty", None)
    return bool(isatty and isatty())


def bar(iterable: Iterable | None = None, desc: str = "", total: int | None = None,
        initial: int = 0, enabled: bool = True) -> Bar:
    """A progress bar over `iterable` (`total` steps, `initial` already done: a resume).

    enabled=False (e.g. ranks other than 0 of a distributed run) shows nothing. The bar
    disappears when done (leave=False): logs carry the results.
    """
    return Bar(iterable, desc=desc, total=total, initial=initial, disable=not enabled,
               leave=False, mininterval=TERMINAL_INTERVAL_S if interactive() else INTERVAL_S)
