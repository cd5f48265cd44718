"""Every exercise check of the kit, in one place.

An exercise: the student writes a few lines in a marked cell, then calls its check, which
returns a `CheckResult`: shown as "Correct" or as what is off, with a hint. Solutions are
not printed unless asked for: `kvlab.checks.solution("name")`.
"""

from __future__ import annotations

from dataclasses import dataclass
from html import escape


@dataclass
class CheckResult:
    """The verdict of a check: `ok`, a one-line message, and a hint when not ok."""

    ok: bool
    message: str
    hint: str = ""

    def __bool__(self) -> bool:
        return self.ok

    def __str__(self) -> str:
        if self.ok:
            return f"Correct: {self.message}"
        text = f"Not yet: {self.message}"
        return f"{text}\nHint: {self.hint}" if self.hint else text

    __repr__ = __str__

    def _repr_html_(self) -> str:
        colour = "#1a7f37" if self.ok else "#b35900"
        body = escape(str(self)).replace("\n", "<br>")
        return f'<div style="color:{colour};font-weight:600">{body}</div>'


def correct(message: str) -> CheckResult:
    return CheckResult(True, message)


def wrong(message: str, hint: str = "") -> CheckResult:
    return CheckResult(False, message, hint)


# name -> solution text (code a student could paste), shown only on request
SOLUTIONS: dict[str, str] = {}


class Solution(str):
    """A solution's text; displays as a code block."""

    def _repr_markdown_(self) -> str:
        return f"```python\n{self}\n```"


def solution(name: str) -> Solution:
    """The solution of exercise `name` (see `SOLUTIONS` for the names)."""
    if name not in SOLUTIONS:
        raise KeyError(f"no exercise named {name!r}; known: {', '.join(sorted(SOLUTIONS))}")
    return Solution(SOLUTIONS[name].strip())
