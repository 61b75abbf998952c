"""Who a name means: the canonical name and uid NSS gives, and whether an account is theirs.

A name as typed is never a key. Directories such as SSSD and AD often match
names case-insensitively, so ``Alice`` would authenticate as ``alice`` yet find
no account under ``Alice`` and, with ``mode: optional``, skip alice's second
factor. So every name, from PAM or from a control request, is resolved through
NSS first, and everything after that (policy, guard, store, audit) uses the
canonical spelling NSS returns.

An account belongs to a uid. A user deleted and re-created with the same name
but another uid does not inherit the old token: the old account is *stale*,
nothing may use or change it, and an administrator removes it with
``mfa forget``. (A re-created user who gets the same uid back is the same
owner to the kernel as well, and to us: forget accounts when deleting users.)
Rows written before uids were kept are bound to their owner on first use.

NSS calls may block on a directory server: they run in a thread.
"""

from __future__ import annotations

import asyncio
import pwd
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from mfa_wire.events import Event, Outcome
from mfad.errors import StaleAccount
from mfad.model import Account, PendingEnrolment
from mfad.store import Store

if TYPE_CHECKING:
    from mfad.context import Context

MAX_USER = 256  # bytes of UTF-8, as the PAM module allows


def valid_user_name(name: object) -> bool:
    """The one rule for a user name from any peer: text NSS could hold and a terminal can show.

    Printable (no C0, C1 or DEL control), no '/', no ':' (the passwd field separator),
    no NUL, at most MAX_USER bytes.
    """
    return (
        isinstance(name, str)
        and 0 < len(name.encode("utf-8", "surrogatepass")) <= MAX_USER
        and name.isprintable()
        and "/" not in name
        and ":" not in name
    )


@dataclass(frozen=True, slots=True)
class Identity:
    name: str  # canonical, as NSS spells it
    uid: int
    typed: str  # as the peer gave it (the same as name in most cases)


def _lookup(typed: str) -> Identity | None:
    try:
        entry = pwd.getpwnam(typed)
    except (KeyError, ValueError, OSError):  # unknown, or a name NSS cannot take
        return None
    return Identity(entry.pw_name, entry.pw_uid, typed)


async def resolve(typed: str) -> Identity | None:
    """The user NSS knows by `typed`, or None."""
    return await asyncio.to_thread(_lookup, typed)


def _current_uid(name: str) -> int | None:
    try:
        return pwd.getpwnam(name).pw_uid
    except (KeyError, ValueError, OSError):
        return None


async def current_uids(names: list[str]) -> dict[str, int | None]:
    """Each stored name's uid now (None: no such user), for spotting stale accounts."""
    return await asyncio.to_thread(lambda: {n: _current_uid(n) for n in names})


def stale_message(name: str, owner: int | None, now_uid: int | None) -> str:
    who = f"uid {now_uid}" if now_uid is not None else "no user"
    return (
        f"mfad's account {name!r} belongs to uid {owner}, but {name!r} is now {who}: the user "
        f"was deleted or re-created. `mfa forget {name}` removes the old account"
    )


def owns(ident: Identity, account: Account | PendingEnrolment) -> bool:
    return account.uid is None or account.uid == ident.uid


async def has_rows(store: Store, typed: str) -> bool:
    """Whether the store has an account or enrolment under `typed`, in any spelling: for
    a name NSS cannot resolve, a reason to fail closed rather than treat it as unknown
    (NSS down, or a directory mfad cannot reach, must not skip anybody's second factor)."""
    return bool(await store.spellings(typed))


async def account_of(ctx: Context, ident: Identity) -> Account | None:
    """`ident`'s account, bound to their uid if it was not yet (audited first).

    StaleAccount if the account under this name is another uid's, or if this user's
    account was stored under another spelling of the name (before names were
    resolved): a second factor is never passed over because of how a name is spelt.
    """
    account = await ctx.store.get_account(ident.name)
    if account is None:
        await _no_other_spelling(ctx.store, ident)
        return None
    if not owns(ident, account):
        raise StaleAccount(stale_message(ident.name, account.uid, ident.uid))
    if account.uid is None:
        await ctx.audit.record(
            Event.UID_BOUND,
            outcome=Outcome.SUCCESS,
            user=ident.name,
            uid=ident.uid,
            reason="an account written before uids were kept",
        )
        await ctx.store.bind_uid(ident.name, ident.uid)
        account = replace(account, uid=ident.uid)
    return account


async def _no_other_spelling(store: Store, ident: Identity) -> None:
    for name in await store.spellings(ident.name):
        other = await resolve(name) if name != ident.name else ident
        if other is not None and other.uid == ident.uid and name != ident.name:
            raise StaleAccount(
                f"mfad keeps {ident.name}'s account under the spelling {name!r} (written "
                f"before names were resolved); `mfa forget {name}`, then enrol again"
            )


async def pending_of(store: Store, ident: Identity, now: float) -> PendingEnrolment | None:
    """`ident`'s enrolment waiting for confirmation, unless it expired or is not theirs."""
    pending = await store.get_pending(ident.name)
    if pending is None or pending.uid != ident.uid:  # one from before uids: nobody's
        return None
    if pending.expires_at is not None and pending.expires_at <= now:
        return None
    return pending
