"""Control operations for the email method: a user's address and a user's method.

- ``email_set`` (self-service): an administrator's address is confirmed when
  set; a user's own is mailed a code (emailcodes, purpose ``confirm``) and is
  unconfirmed until ``email_confirm`` brings that code back. Addresses must be
  in ``email.domains`` when that lists any. The address is mfad's own record:
  it is not read from NSS or LDAP (the passwd entry has no mail field, and a
  directory lookup would be one more thing a login waits for).
- ``email_confirm`` (self-service): the mailed code, checked by the one
  verifier under the guard, from the caller's control source.
- ``method`` (administrators: users, ``group`` or ``all``, like the lifecycle
  actions; a user on their own account): ``email`` needs ``email.enabled``,
  a confirmed address and no group in ``email.deny_groups``, and makes the
  account active on it (any token is erased: one method per user); ``totp``
  from email makes the account pending, to enrol an authenticator at the next
  login or with `mfa enroll`.

Every change is recorded first (``control`` with the op), as every change
(accounts._audited); an address in a record or an answer is masked.
"""

from __future__ import annotations

import asyncio
from functools import partial
from typing import Any

from mfa_wire.events import Outcome
from mfad import emailcodes, identity, lifecycle, nss
from mfad.accounts import SITE, AccountOps, Caller, Handler, _refused, _with_user
from mfad.config import _ADDRESS
from mfad.errors import (
    EnrolmentRefused,
    Forbidden,
    MailError,
    NoSuchUser,
    RateLimited,
    RequestError,
    StaleAccount,
)
from mfad.identity import Identity
from mfad.lockout import control_source
from mfad.model import Address, CodePurpose, Kind, State, StateChange, state_of
from mfad.verify import Purpose, Subject

METHODS = ("email", "totp")


class EmailOps:
    def __init__(self, accounts: AccountOps) -> None:
        self.accounts = accounts
        self.ctx = accounts.ctx
        self.self_service: dict[str, Handler] = {
            "email_set": self.email_set,
            "email_confirm": self.email_confirm,
            "method": self.method,
        }

    def _check_address(self, address: Any) -> str:
        cfg = self.ctx.config.email
        if not cfg.enabled:
            raise RequestError("codes by email are turned off here (email.enabled in mfad.yaml)")
        if not isinstance(address, str) or not _ADDRESS.fullmatch(address):
            raise RequestError("give an email address such as alice@example.com")
        if not emailcodes.in_domains(address, cfg.domains):
            raise RequestError(f"the address must be in one of: {', '.join(cfg.domains)}")
        return address

    async def email_set(self, caller: Caller, request: dict[str, Any]) -> dict[str, Any]:
        ident = await self.accounts.target(caller, request)
        address = self._check_address(request.get("address"))
        if not caller.is_admin:
            await self._no_factor_yet(ident, "the address codes are mailed to")
        now, shown = self.ctx.clock(), emailcodes.mask(address)
        confirmed = now if caller.is_admin else None
        await self.accounts._audited(
            caller,
            "email",
            ident.name,
            partial(
                self.ctx.store.set_address, Address(ident.name, address, confirmed, ident.uid), now
            ),
            address=shown,
            confirmed=confirmed is not None,
        )
        if confirmed is not None:
            return {"user": ident.name, "address": shown, "confirmed": True}
        try:
            sent = await emailcodes.send(self.ctx, ident.name, address, CodePurpose.CONFIRM)
        except MailError as exc:
            raise RequestError(f"the confirmation code could not be mailed: {exc}") from None
        if not sent:
            raise RateLimited(
                "a code was mailed to you moments ago; wait a minute, then set the address again"
            )
        return {"user": ident.name, "address": shown, "confirmed": False, "code_sent": True}

    async def email_confirm(self, caller: Caller, request: dict[str, Any]) -> dict[str, Any]:
        ident = await self.accounts.target(caller, request)
        address = await self.ctx.store.get_address(ident.name)
        if address is None:
            raise RequestError(f"{ident.name} has no address to confirm: `mfa email` sets one")
        code = request.get("code")
        if not isinstance(code, str):
            raise RequestError("the request needs the mailed `code`")
        subject = Subject(ident.name, control_source(caller.uid), SITE, mailed=CodePurpose.CONFIRM)
        verdict = await self.accounts.verifier.check(
            subject, code, Purpose.PROOF, actor_uid=caller.uid, actor=caller.name
        )
        if not verdict.ok:
            raise _refused(verdict, "that is not the code mailed to the address, or it expired")
        shown = emailcodes.mask(address.address)
        await self.accounts._audited(
            caller,
            "email_confirm",
            ident.name,
            partial(self.ctx.store.confirm_address, ident.name, address.address, self.ctx.clock()),
            address=shown,
        )
        return {"user": ident.name, "address": shown, "confirmed": True}

    async def method(self, caller: Caller, request: dict[str, Any]) -> dict[str, Any]:
        wanted = request.get("method")
        if wanted not in METHODS:
            raise RequestError(f"`method` must be one of {', '.join(METHODS)}")
        if caller.is_admin:
            names = await lifecycle.targets(self.ctx, _with_user(request))
        else:
            own = await self.accounts.target(caller, request)
            await self._no_factor_yet(own, "the method")
            names = [own.name]
        changed, refused = [], []
        for name in names:
            try:
                ident = await identity.resolve(name)
                if ident is None:
                    raise NoSuchUser(f"there is no user {name!r} on this system")
                change = await self._plan(ident, wanted)
            except RequestError as exc:
                refused.append({"user": name, "error": exc.code, "message": str(exc)})
                await self.accounts._audit(
                    caller, "method", name, outcome=Outcome.REFUSED, message=str(exc)
                )
                continue
            if change is None:
                changed.append({"user": ident.name, "method": wanted, "unchanged": True})
                continue
            await self.accounts._audited(caller, "method", ident.name, change, method=wanted)
            changed.append({"user": ident.name, "method": wanted})
        return {"changed": changed, "refused": refused}

    async def _no_factor_yet(self, ident: Identity, what: str) -> None:
        """Refuse a user changing `what` of their own account once it has a second factor.

        As no one enrols again on an active account by themselves: whoever has a user's
        shell (an unlocked session, a cron job) must not swap the factor for one they
        hold, nor point the lost-device recovery code at their own mailbox. Before the
        first factor, the user sets things up alone; after it, an administrator does."""
        account = await self.ctx.store.get_account(ident.name)
        if account is not None and account.has_factor:
            raise Forbidden(
                f"{ident.name} has a second factor already: only an administrator may change "
                f"{what} (`mfa email USER ADDRESS`, `mfa method METHOD USER`)"
            )

    async def _plan(self, ident: Identity, wanted: str) -> Any:
        """The change to `wanted` for one user (a coroutine function), None if already on
        it; a RequestError saying why not."""
        ctx, now = self.ctx, self.ctx.clock()
        try:
            account = await identity.account_of(ctx, ident)
        except StaleAccount:
            raise
        state = state_of(account)
        kind = account.params.kind if account is not None and account.has_factor else None
        if wanted == "totp":
            if kind is not Kind.EMAIL:
                return None  # an authenticator already, or nothing to switch from
            grace = ctx.config.enrolment.grace_days * 86400
            change = StateChange(
                State.PENDING, now + grace if grace > 0 else None, erase=True, uid=ident.uid
            )
            return partial(ctx.store.set_state, ident.name, change, now)
        if kind is Kind.EMAIL:
            return None
        cfg = ctx.config.email
        if not cfg.enabled:
            raise EnrolmentRefused("codes by email are turned off here (email.enabled)")
        if state in (State.SUSPENDED, State.EXEMPT):
            raise EnrolmentRefused(f"{ident.name} is {state}: resume or unexempt first")
        denied = set(cfg.deny_groups) & await asyncio.to_thread(nss.groups_of, ident.name)
        if denied:
            raise EnrolmentRefused(
                f"{ident.name} is in {', '.join(sorted(denied))}, whose members must use an "
                "authenticator app or token (email.deny_groups)"
            )
        address = await ctx.store.get_address(ident.name)
        if address is None or not address.confirmed:
            raise EnrolmentRefused(
                f"{ident.name} has no confirmed address: `mfa email {ident.name} ADDRESS` first"
            )
        if not emailcodes.in_domains(address.address, cfg.domains):
            raise EnrolmentRefused(f"{ident.name}'s address is not in email.domains")
        return partial(ctx.store.activate_email, ident.name, ident.uid, now)
