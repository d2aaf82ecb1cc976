"""framewire for Python.

- :mod:`framewire.framing`: message boundaries on a TCP stream, in plain
  Python (the lesson of "sticky packets", done correctly).
- Every error framewire raises is a :class:`framewire.Error`.
"""

from __future__ import annotations

from ._errors import BadHeader, Error, FrameTooLarge, FramingError, IncompleteFrame
from . import framing

__all__ = [
    "Error",
    "FramingError",
    "IncompleteFrame",
    "FrameTooLarge",
    "BadHeader",
    "framing",
]
