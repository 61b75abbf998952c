"""Codes by email: made by the CSPRNG, kept only as keyed digests, mailed, shown masked.

Three purposes (model.CodePurpose), each part of the digest so a code mailed
for one serves no other: the email method's code at a login, the code that
confirms an address a user gave themselves, and a lost device's one-time
recovery code. A user has one outstanding code at a time (the store keeps one
row per user): mailing a new one voids the last, so a code is bound to its
user and purpose, and to the latest mail. It works once, for ``email.code_ttl``
seconds; it is checked only by verify.Verifier, under the guard like any code.

Mailing is rate-limited per user in the store (``email.resend_interval``,
atomic, so parallel logins or hosts sharing a PostgreSQL store mail once): a
login within the interval gets no new mail and uses the code already sent,
which is how a flood of started logins cannot fill a mailbox. A code the mail
server did not take is voided at once, so the next login may try again.

The address is shown masked ("a•••@example.com"): the prompt tells whoever typed
the password no more than the domain and a first letter.
"""

from __future__ import annotations

import secrets
import socket

from mfad.context import Context
from mfad.errors import MailError
from mfad.model import CodePurpose

METHODS = {  # what a login or a record names an accepted code of each purpose
    CodePurpose.LOGIN: "email",
    CodePurpose.CONFIRM: "address",
    CodePurpose.RECOVERY: "email_recovery",
}
SUBJECTS = {
    CodePurpose.LOGIN: "Your verification code",
    CodePurpose.CONFIRM: "Confirm your address for verification codes",
    CodePurpose.RECOVERY: "Your one-time recovery code",
}
_USES = {
    CodePurpose.LOGIN: "to log in",
    CodePurpose.CONFIRM: "with `mfa email --confirm` to confirm this address",
    CodePurpose.RECOVERY: (
        "to log in once without your authenticator; your account is then suspended "
        "until you set up a new one with `mfa enroll`"
    ),
}


def new_code(digits: int) -> str:
    return f"{secrets.randbelow(10**digits):0{digits}d}"


def normalise(answer: str, digits: int) -> str | None:
    """The code if `answer` has its shape (digits, spaces allowed), else None."""
    raw = "".join(answer.split())
    return raw if len(raw) == digits and raw.isascii() and raw.isdigit() else None


def mask(address: str) -> str:
    """`alice@example.com` as `a•••@example.com`."""
    local, _, domain = address.rpartition("@")
    return f"{local[:1]}\u2022\u2022\u2022@{domain}"


def in_domains(address: str, domains: tuple[str, ...]) -> bool:
    """Whether `address` is in one of the allowed domains (any, if none are named)."""
    return not domains or address.rpartition("@")[2].lower() in domains


async def send(ctx: Context, user: str, address: str, purpose: CodePurpose) -> bool:
    """Mail a new code for `purpose` to `address`; False if one was mailed to `user` less
    than email.resend_interval ago (that one stands, nothing is sent). MailError if the
    server did not take it (then no code is outstanding)."""
    cfg, now = ctx.config.email, ctx.clock()
    if ctx.mailer is None:
        raise MailError("mfad has no mailer")
    code = new_code(cfg.digits)
    digest = ctx.box.digest(user, _keyed(purpose, code))
    stored = await ctx.store.put_email_code(
        user, digest, purpose, now + cfg.code_ttl, now, cfg.resend_interval
    )
    if not stored:
        return False
    minutes = max(1, round(cfg.code_ttl / 60))
    host = socket.gethostname()
    body = (
        f"Your code for {user} on {host} is\n\n    {code}\n\n"
        f"Use it {_USES[purpose]}. It works once, within {minutes} minute"
        f"{'s' if minutes != 1 else ''}.\n"
        "If you did not ask for it, someone knows your password: tell your administrator.\n"
    )
    try:
        await ctx.mailer.send([address], SUBJECTS[purpose], body)
    except MailError:
        await ctx.store.void_email_code(user, digest)
        raise
    return True


def digest_of(ctx: Context, user: str, purpose: CodePurpose, code: str) -> bytes:
    return ctx.box.digest(user, _keyed(purpose, code))


def _keyed(purpose: CodePurpose, code: str) -> str:
    # recovery codes are digested as box.digest(user, code): the prefix keeps the two apart
    return f"email/{purpose}/{code}"
