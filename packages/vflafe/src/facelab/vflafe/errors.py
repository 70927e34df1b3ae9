"""VFL-AFE's own bad-input errors (all ``FacelabError`` subclasses, so the CLI ends them with one
``facelab vflafe: error: ...`` line and exit status 2)."""

from __future__ import annotations

from facelab.core.errors import FacelabError, KeyMismatchError


class AlignmentError(KeyMismatchError):
    """A passive party's sample ids do not match the active party's (missing, extra, repeated)."""


class BudgetError(FacelabError):
    """A privacy target cannot be met (e.g. no noise level reaches the target epsilon)."""


class ProtocolError(FacelabError):
    """A party's message does not fit the protocol (wrong shape, party, step or an error reply)."""


__all__ = ["AlignmentError", "BudgetError", "ProtocolError"]
