"""ipywidgets panels used by the notebooks.

Every panel follows one rule: a bad value shows an error line in the panel's own output
area, the panel keeps working, and nothing the student typed is lost.
"""

from __future__ import annotations

from contextlib import contextmanager

import ipywidgets as widgets
from IPython.display import HTML, display


def error_html(message: str) -> HTML:
    return HTML(f'<div style="color:#b00020;font-weight:600">{message}</div>')


@contextmanager
def errors_shown_in(output: widgets.Output):
    """Run a panel callback; a ValueError (bad input) is shown in `output`, not raised."""
    try:
        yield
    except ValueError as err:  # the kit raises ValueError (or a subclass) for bad input
        with output:
            display(error_html(f"{type(err).__name__}: {err}"))
