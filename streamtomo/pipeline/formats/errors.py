"""The one error type every stream decoder raises for malformed input."""

from __future__ import annotations


class FrameError(ValueError):
    """A stream message that cannot be decoded (bad JSON, truncated data, ...).

    A ``ValueError`` so that callers validating input in general catch it too; the
    message says which message part and field is wrong.
    """
