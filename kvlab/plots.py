"""matplotlib figures used by the notebooks."""

from __future__ import annotations
