"""What can go wrong on the wire, and the error codes the control socket answers with."""

from __future__ import annotations

import enum


class ProtocolError(Exception):
    """A peer broke the framing or the conversation order (or a frame cannot be sent).

    mfad.errors re-exports this very class: the daemon catches it where it reads a
    frame, and the CLI where it reads an answer.
    """


class BadMessage(Exception):
    """A well-framed control message whose content is not one: the wrong frame type,
    not JSON, not a JSON object, or (an answer) without a boolean ``ok``."""


class ErrorCode(enum.StrEnum):
    """The ``error`` of an ``{"ok": false}`` control answer (docs/protocol.md, "Control
    socket"). Members are strings: they compare equal to, and serialise as, the code."""

    BAD_REQUEST = "bad_request"
    FORBIDDEN = "forbidden"
    NO_SUCH_USER = "no_such_user"
    NOT_ENROLLED = "not_enrolled"
    ALREADY_ENROLLED = "already_enrolled"
    WRONG_CODE = "wrong_code"
    LOCKED = "locked"
    RATE_LIMITED = "rate_limited"
    STALE_ACCOUNT = "stale_account"
    NO_PENDING_ENROLMENT = "no_pending_enrolment"
    UNAVAILABLE = "unavailable"
