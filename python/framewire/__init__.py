"""framewire for Python.

- :class:`framewire.Client`: run commands and move files on a framewire
  server (over the Rust client, the GIL released while it waits), and
  :class:`framewire.AsyncClient`, the same for asyncio.
- :func:`framewire.fleet.run`: one command on many hosts at once.
- :mod:`framewire.framing`: message boundaries on a TCP stream, in plain
  Python (the lesson of "sticky packets", done correctly).
- Every error framewire raises is a :class:`framewire.Error`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ._errors import (
    AuthenticationError,
    BadHeader,
    ConnectionError,
    CopyError,
    Error,
    FrameTooLarge,
    FramingError,
    IncompleteFrame,
    LocalError,
    NotFound,
    PermissionDenied,
    ProcessError,
    ProtocolError,
    RemoteError,
    TimeoutError,
)
from . import framing

if TYPE_CHECKING:
    from . import fleet
    from .aio import AsyncClient
    from .client import Client

# framewire.ConnectionError and framewire.TimeoutError are left out of
# `__all__`: `from framewire import *` must not hide the builtins.
__all__ = [
    "Client",
    "AsyncClient",
    "fleet",
    "Error",
    "FramingError",
    "IncompleteFrame",
    "FrameTooLarge",
    "BadHeader",
    "AuthenticationError",
    "NotFound",
    "PermissionDenied",
    "RemoteError",
    "ProcessError",
    "CopyError",
    "ProtocolError",
    "LocalError",
    "framing",
]


def __getattr__(name: str) -> Any:
    # The client needs the native module, built by `pip install ./python`;
    # framewire.framing (plain Python) works without it, from a checkout.
    if name == "Client":
        from .client import Client

        return Client
    if name == "AsyncClient":
        from .aio import AsyncClient

        return AsyncClient
    if name == "fleet":
        import importlib

        return importlib.import_module(".fleet", __name__)
    raise AttributeError(f"module 'framewire' has no attribute {name!r}")
