"""The audit trail's vocabulary: event, outcome and reason names, one place for writers and readers.

mfad writes records with these names (audit.py, and every module that records),
`mfa audit verify`/`summary` and the `mfa audit` table read them (mfad.auditread,
mfa_cli.audit). The values are the strings in the JSON lines, so a record is
compared and filtered with plain strings too. docs/protocol.md and README's
"The daemon" section describe each one; a reason sentence written for people
(``reason`` of control records, ``audit_tampered``'s) is text, never a name here.
"""

from __future__ import annotations

import enum


class Event(enum.StrEnum):
    # a login on the PAM socket
    CHALLENGE = "challenge"  # a code is asked for
    ATTEMPT = "attempt"  # an answer not accepted (wrong, or refused unseen)
    LOGIN = "login"  # the login's outcome: one per login, the canonical line
    ENROLMENT_STARTED = "enrolment_started"
    ENROLMENT_CONFIRMED = "enrolment_confirmed"
    RECOVERY_CODE_USED = "recovery_code_used"
    STATE_CHANGED = "state_changed"  # a login moved the account (pending, exemption ended)
    CLOCK_ANOMALY = "clock_anomaly"  # a later step than now was already used
    UID_BOUND = "uid_bound"  # an account from before uids was given its owner
    # the guard
    LOCK_SET = "lock_set"
    SOURCE_BLOCKED = "source_blocked"
    LOCK_CLEARED = "lock_cleared"
    # the control socket
    CONTROL = "control"  # an administrative action (written before it is made), or a refusal
    CONTROL_REFUSALS = "control_refusals"  # how many like refusals were not written one by one
    PROTOCOL_ERROR = "protocol_error"
    # the daemon and its log
    DAEMON_START = "daemon_start"
    DAEMON_RELOAD = "daemon_reload"
    DAEMON_STOP = "daemon_stop"
    AUDIT_REPAIRED = "audit_repaired"  # a partial last line moved into a record at start
    AUDIT_TAMPERED = "audit_tampered"  # the log ends before its head: cut or altered
    # mail to the administrators (mfad.notify)
    NOTICE_SENT = "notice_sent"  # a message listing recorded facts was accepted by the server
    NOTICE_FAILED = "notice_failed"  # a try to send one failed (retried, or given up)
    AUDIT_SEAL_INIT = "audit_seal_init"  # sealing starts: the first record of epoch 0
    AUDIT_SEALED = "audit_sealed"  # an epoch ended; sealed with that epoch's key
    # a code mailed to a user (mfad.emailcodes): success, refused (resend too soon, no
    # confirmed address) or error (the mail server failed); `purpose` says what for
    EMAIL_CODE = "email_code"


class Outcome(enum.StrEnum):
    SUCCESS = "success"
    FAILURE = "failure"
    ERROR = "error"  # could not decide or record: the store, the audit log, mfad itself
    PENDING = "pending"  # a code or an enrolment is awaited
    SKIPPED = "skipped"  # no second factor needed (PAM_IGNORE)
    REFUSED = "refused"
    LOCKED = "locked"
    BLOCKED = "blocked"
    ABORTED = "aborted"  # a login mfad could not finish: its deadline, a shutdown, a bug


class Reason(enum.StrEnum):
    """Why an answer was not accepted, or how a login ended (besides the policy rules'
    reasons, mfad.policy.RULES, for skips and refusals)."""

    # an answer (``attempt``)
    INCORRECT_CODE = "incorrect_code"
    REPLAYED_CODE = "replayed_code"
    MALFORMED_CODE = "malformed_code"
    INCORRECT_RECOVERY_CODE = "incorrect_recovery_code"
    LOCKED = "locked"
    SOURCE_BLOCKED = "source_blocked"
    # a login's end (``login``)
    CORRECT_CODE = "correct_code"
    ENROLLED = "enrolled"
    TOO_MANY_ATTEMPTS = "too_many_attempts"
    TIMEOUT = "timeout"
    ABORTED = "aborted"
    ENROLMENT_EXPIRED = "enrolment_expired"
    NOT_ENROLLED = "not_enrolled"
    # on the user PAM socket: the name is not the connecting uid's own account
    NOT_OWN_ACCOUNT = "not_own_account"
    STALE_ACCOUNT = "stale_account"
    NAME_UNRESOLVED = "name_unresolved"
    UNAVAILABLE = "unavailable"
    INTERNAL_ERROR = "internal_error"
    DEADLINE = "deadline"  # the connection outlived mfad's deadline (paused, or stalled)
    SHUTDOWN = "shutdown"  # mfad stopped with the login under way
    PEER_GONE = "peer_gone"  # the module's connection broke before the login's end
    PROTOCOL_ERROR = "protocol_error"  # the module broke the conversation (FAILURE sent)
    # a lock (``lock_set``)
    DENY = "deny"
    LIFETIME_CAP = "lifetime_cap"
    EXEMPTION_EXPIRED = "exemption_expired"
    # a mailed code (``email_code``, and ``login`` when it ends one)
    EMAIL_UNAVAILABLE = "email_unavailable"  # the mail server did not take the code
    RESEND_TOO_SOON = "resend_too_soon"  # within email.resend_interval of the last one
    NO_ADDRESS = "no_address"  # the email method without a confirmed address
