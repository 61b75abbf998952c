"""Enrolment: a new secret held aside, confirmed by a code, then active with recovery codes.

One implementation for both ways in: `mfa enroll` over the control socket and
enrolment at next login in the PAM conversation. A secret becomes the user's
token only when a code made from it has been typed back, so a QR code that
was never scanned cannot lock anybody out. The confirming code is checked by
the one verifier, under the guard, like any other code.

A secret held aside belongs to its user's uid and expires with the enrolment
deadline (``enrolment.grace_days``; a day when there is none): a key shown on a
screen and never confirmed does not stay usable for ever. At login it is shown
again only to the same source it was first shown to at login (`origin`): a key
made by `mfa enroll`, or shown to another host, is never handed to whoever next
gets past the password, who could otherwise read it, let the owner confirm it,
and hold the owner's token from then on.

Callers write their audit record between `confirm` and `activate`, so a
change is never in force without its record. The recovery codes exist in
clear only in `Confirmed.codes`, to be shown once.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

from mfad import identity, recovery, totp
from mfad.context import Context
from mfad.errors import AlreadyEnrolled, EnrolmentRefused, NoPendingEnrolment
from mfad.identity import Identity
from mfad.model import Account, PendingEnrolment, Site, State, TokenParams, state_of
from mfad.verify import Purpose, Subject, Verdict, Verifier


@dataclass(frozen=True, slots=True)
class Offer:
    user: str
    secret: str  # base32, for typing in by hand
    uri: str  # otpauth://, for the QR code
    params: TokenParams


@dataclass(frozen=True, slots=True)
class Confirmed:
    pending: PendingEnrolment
    step: int  # the confirming code's step, used from now on
    codes: list[str]  # the new recovery codes, in clear, to be shown once
    site: Site  # where the confirming code came from: the account's last verification


def default_params(ctx: Context) -> TokenParams:
    cfg = ctx.config.totp
    return TokenParams(cfg.algorithm, cfg.digits, cfg.period)


def key_groups(secret: str) -> str:
    """The base32 key in groups of four, as people read it aloud or type it."""
    return " ".join(secret[i : i + 4] for i in range(0, len(secret), 4))


REOFFER_WITHIN = 86400.0
"""At login, an unconfirmed secret younger than this is shown again rather than replaced:
whoever scanned it and was then cut off should not end up with two entries in their app."""
NO_DEADLINE_TTL = 86400.0
"""How long a secret held aside lasts when enrolment has no deadline (grace_days 0)."""


def _expiry(ctx: Context, now: float) -> float:
    grace = ctx.config.enrolment.grace_days * 86400
    return now + (grace if grace > 0 else NO_DEADLINE_TTL)


async def begin(
    ctx: Context,
    ident: Identity,
    origin: str,
    params: TokenParams | None = None,
    *,
    reoffer: bool = False,
) -> Offer:
    """Keep aside a new secret (replacing an unconfirmed one), or with `reoffer` a recent one
    first shown to the same `origin`."""
    now = ctx.clock()
    pending = await identity.pending_of(ctx.store, ident, now) if reoffer else None
    if (
        pending is not None
        and pending.origin == origin
        and now - pending.created_at < (REOFFER_WITHIN)
    ):
        secret = ctx.box.open(ident.name, pending.sealed_secret)
        params = pending.params
    else:
        params = params or default_params(ctx)
        secret = totp.new_secret(params)
        await ctx.store.begin_enrolment(
            PendingEnrolment(
                ident.name,
                ctx.box.seal(ident.name, secret),
                params,
                now,
                ident.uid,
                _expiry(ctx, now),
                origin,
            )
        )
    return _offer(ctx, ident, secret, params)


def decoy(ctx: Context, ident: Identity) -> Offer:
    """A key that is never stored, for a locked account under `lockout.silent`: the
    conversation looks as usual, and no real key is shown to a guesser."""
    params = default_params(ctx)
    return _offer(ctx, ident, totp.new_secret(params), params)


def _offer(ctx: Context, ident: Identity, secret: bytes, params: TokenParams) -> Offer:
    uri = totp.provisioning_uri(secret, params, ident.name, ctx.config.totp.issuer)
    return Offer(ident.name, totp.b32(secret), uri, params)


async def confirm(
    ctx: Context,
    ident: Identity,
    answer: str,
    source: str,
    site: Site,
    *,
    must_exist: bool = True,
    **fields: object,
) -> tuple[Verdict, Confirmed | None]:
    """Check `answer` against the secret held aside; on success, what `activate` commits.

    Raises NoPendingEnrolment when there is none (or it expired) and `must_exist`; without
    it, an answer with no secret held aside is checked like any and fails. StaleAccount or
    AlreadyEnrolled or EnrolmentRefused when the account is not the user's to enrol now
    (an administrator suspended or exempted it meanwhile). `fields` go into the
    verifier's records.
    """
    account = await identity.account_of(ctx, ident)
    state = state_of(account)
    if state is State.ACTIVE:
        raise AlreadyEnrolled(f"{ident.name} is already enrolled")
    if state not in (State.NONE, State.PENDING, State.DISABLED) and not reenrols(ctx, state):
        raise EnrolmentRefused(
            f"{ident.name} is {state}; an administrator must resume or unexempt it first"
        )
    pending = await identity.pending_of(ctx.store, ident, ctx.clock())
    if pending is None and must_exist:  # at login (a decoy key) it is checked and fails
        raise NoPendingEnrolment(
            f"{ident.name} has no enrolment waiting (or it expired); run `mfa enroll {ident.name}`"
        )
    subject = Subject(ident.name, source, site, pending=pending)
    verdict = await Verifier(ctx).check(subject, answer, Purpose.ENROL, **fields)
    if not verdict.ok or verdict.step is None or pending is None:
        return verdict, None
    codes = recovery.generate(ctx.config.enrolment.recovery_codes)
    return verdict, Confirmed(replace(pending, uid=ident.uid), verdict.step, codes, site)


def reenrols(ctx: Context, state: State) -> bool:
    """Whether a user in `state` may enrol themselves anew: a suspended one (a lost device,
    an emailed recovery code) where lost_device.self_enrol allows; that makes them active."""
    return state is State.SUSPENDED and ctx.config.lost_device.self_enrol


def refusal(ident: Identity, account: Account | None) -> str | None:
    """Why `ident` cannot be given a token now, or None: only a user with none (never
    enrolled, pending, or disabled) may; an active token is replaced only after a reset."""
    state = state_of(account)
    if state is State.ACTIVE:
        return f"{ident.name} is already enrolled; `mfa reset {ident.name}` first to replace it"
    if state not in (State.NONE, State.PENDING, State.DISABLED):
        return f"{ident.name} is {state}; resume or unexempt it first"
    return None


async def install(
    ctx: Context,
    ident: Identity,
    secret: bytes,
    params: TokenParams,
    last: int | None,
    codes: Sequence[str],
) -> None:
    """Make `secret`, which exists already (a hardware token's seed, an imported key), the
    user's active token at once, with `last` the step or counter it used last and `codes`
    its recovery codes. No code confirms it: whoever gives it (an administrator) holds it.
    The caller checked `refusal` and writes the audit record first."""
    now = ctx.clock()
    sealed = ctx.box.seal(ident.name, secret)
    pending = PendingEnrolment(ident.name, sealed, params, now, ident.uid)
    digests = [ctx.box.digest(ident.name, c) for c in codes]
    await ctx.store.activate(pending, last, now, digests)


async def activate(ctx: Context, confirmed: Confirmed) -> None:
    """Make the confirmed secret the user's token, its step used, with the new recovery codes.

    The confirming code was a correct code: `mfa status` shows it as the last verification
    (from the login's remote host; none for `mfa enroll`), not "never"."""
    user = confirmed.pending.user
    digests = [ctx.box.digest(user, c) for c in confirmed.codes]
    rhost = confirmed.site.rhost or None
    await ctx.store.activate(confirmed.pending, confirmed.step, ctx.clock(), digests, rhost)
