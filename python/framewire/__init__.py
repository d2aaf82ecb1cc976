"""framewire for Python.

- :class:`framewire.Client`: run commands and move files on a framewire
  server (over the Rust client, the GIL released while it waits).
- :mod:`framewire.framing`: message boundaries on a TCP stream, in plain
  Python (the lesson of "sticky packets", done correctly).
- Every error framewire raises is a :class:`framewire.Error`.
"""

from __future__ import annotations

from typing import Any

from ._errors import (
    AuthenticationError,
    BadHeader,
    ConnectionError,
    Error,
    FrameTooLarge,
    FramingError,
    IncompleteFrame,
    NotFound,
    PermissionDenied,
    ProcessError,
    RemoteError,
    TimeoutError,
)
from . import framing

__all__ = [
    "Client",
    "Error",
    "FramingError",
    "IncompleteFrame",
    "FrameTooLarge",
    "BadHeader",
    "AuthenticationError",
    "ConnectionError",
    "TimeoutError",
    "NotFound",
    "PermissionDenied",
    "RemoteError",
    "ProcessError",
    "framing",
]


def __getattr__(name: str) -> Any:
    # The client needs the native module, built by `pip install ./python`;
    # framewire.framing (plain Python) works without it, from a checkout.
    if name == "Client":
        from .client import Client

        return Client
    raise AttributeError(f"module 'framewire' has no attribute {name!r}")
