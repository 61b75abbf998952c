"""Enrolment: a new secret held aside, confirmed by a code, then active with recovery codes.

One implementation for both ways in: `mfa enroll` over the control socket and
enrolment at next login in the PAM conversation. A secret becomes the user's
token only when a code made from it has been typed back, so a QR code that
was never scanned cannot lock anybody out. The recovery codes exist in clear
only in the return value of `confirm`, to be shown once.
"""

from __future__ import annotations

from dataclasses import dataclass

from mfad import recovery, totp
from mfad.context import Context
from mfad.errors import NoPendingEnrolment
from mfad.store import PendingEnrolment, TokenParams


@dataclass(frozen=True, slots=True)
class Offer:
    user: str
    secret: str  # base32, for typing in by hand
    uri: str  # otpauth://, for the QR code
    params: TokenParams


def default_params(ctx: Context) -> TokenParams:
    cfg = ctx.config.totp
    return TokenParams(cfg.algorithm, cfg.digits, cfg.period)


def key_groups(secret: str) -> str:
    """The base32 key in groups of four, as people read it aloud or type it."""
    return " ".join(secret[i : i + 4] for i in range(0, len(secret), 4))


REOFFER_WITHIN = 86400.0
"""At login, an unconfirmed secret younger than this is shown again rather than replaced:
whoever scanned it and was then cut off should not end up with two entries in their app."""


async def begin(
    ctx: Context, user: str, params: TokenParams | None = None, *, reoffer: bool = False
) -> Offer:
    """Keep aside a new secret (replacing an unconfirmed one), or with `reoffer` a recent one."""
    pending = await ctx.store.get_pending(user) if reoffer else None
    if pending is not None and ctx.clock() - pending.created_at < REOFFER_WITHIN:
        secret = ctx.box.open(user, pending.sealed_secret)
        params = pending.params
    else:
        params = params or default_params(ctx)
        secret = totp.new_secret(params)
        await ctx.store.begin_enrolment(
            PendingEnrolment(user, ctx.box.seal(user, secret), params, ctx.clock())
        )
    uri = totp.provisioning_uri(secret, params, user, ctx.config.totp.issuer)
    return Offer(user, totp.b32(secret), uri, params)


async def confirm(ctx: Context, user: str, answer: str) -> list[str] | None:
    """Activate the pending secret if `answer` is its current code: the new recovery codes.

    None for a wrong code (the enrolment stays pending). The confirming step
    counts as used, so the same code cannot then log in.
    """
    pending = await ctx.store.get_pending(user)
    if pending is None:
        raise NoPendingEnrolment(f"{user} has no enrolment waiting; run `mfa enroll {user}`")
    code = totp.normalise(answer, pending.params.digits)
    if code is None:
        return None
    secret = ctx.box.open(user, pending.sealed_secret)
    now = ctx.clock()
    found = totp.match(secret, pending.params, code, now, ctx.config.totp.window)
    if found is None:
        return None
    codes = recovery.generate(ctx.config.enrolment.recovery_codes)
    digests = [ctx.box.digest(user, c) for c in codes]
    await ctx.store.activate(pending, found.step, now, digests)
    return codes


async def new_recovery_codes(ctx: Context, user: str) -> list[str]:
    """Replace all of `user`'s recovery codes; the old ones stop working at once."""
    codes = recovery.generate(ctx.config.enrolment.recovery_codes)
    await ctx.store.replace_recovery_codes(
        user, [ctx.box.digest(user, c) for c in codes], ctx.clock()
    )
    return codes
