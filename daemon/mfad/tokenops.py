"""Control operations for tokens that exist already: hardware HOTP tokens and imports.

Administrators only (control.py checks; none of these is self-service):

- ``enroll_hotp``: a hardware OATH token whose seed the administrator has; the
  key arrives in the request (read by `mfa` from stdin, never from argv) and
  the account is active at once, with new recovery codes.
- ``resync``: two consecutive codes of an HOTP token pressed past the
  look-ahead, checked by the one verifier under the guard like any code.
- ``import_google_authenticator``: each named user's own
  ``~/.google_authenticator`` (or the pattern given), read here, by mfad as
  root, never by `mfa`: the files are each user's own and mode 0400, so only
  root can read them all; mfad can check, on the open file, that it belongs to
  the uid NSS gives the user; and no key crosses the control socket.
- ``import_oath``: a pam_oath usersfile's text, sent by `mfa`, which reads it
  with the administrator's own permissions: one file the administrator names,
  so mfad (root) never opens a path someone else chose.

An imported token is an ordinary active account from then on (lockout, audit,
policy, fleet mode): nothing marks it. ``dry_run`` reads and reports, and
changes nothing. Answers name users, kinds and what differs from the old
module; never a key or a code. Each user's import is recorded (``control``,
with ``op``) before it is made, as every change (accounts._audited).
"""

from __future__ import annotations

import asyncio
import pwd
from dataclasses import replace
from pathlib import Path
from typing import Any

from mfa_wire.events import Outcome
from mfad import enrolment, hotp, identity, importers, recovery
from mfad.accounts import SITE, AccountOps, Caller, Handler, _refused, user_field
from mfad.errors import EnrolmentRefused, NoSuchUser, NotEnrolled, RequestError, StaleAccount
from mfad.identity import Identity
from mfad.importers import ImportFileError, Token
from mfad.lockout import control_source
from mfad.model import Kind, TokenParams
from mfad.verify import Subject

MAX_COUNTER = 2**62


class TokenOps:
    def __init__(self, accounts: AccountOps) -> None:
        self.accounts = accounts
        self.ctx = accounts.ctx
        self.admin: dict[str, Handler] = {
            "enroll_hotp": self.enroll_hotp,
            "resync": self.resync,
            "import_google_authenticator": self.import_google_authenticator,
            "import_oath": self.import_oath,
        }

    async def _resolve(self, name: str) -> Identity:
        ident = await identity.resolve(name)
        if ident is None:
            raise NoSuchUser(f"there is no user {name!r} on this system")
        return ident

    async def enroll_hotp(self, caller: Caller, request: dict[str, Any]) -> dict[str, Any]:
        ident = await self._resolve(user_field(request))
        encoding = request.get("encoding", "base32")
        key, counter = request.get("secret"), request.get("counter", 0)
        if encoding not in ("base32", "hex") or not isinstance(key, str):
            raise RequestError("the request needs `secret` in base32 or hex (`encoding`)")
        if type(counter) is not int or not 0 <= counter < MAX_COUNTER:
            raise RequestError("`counter` must be the token's next counter, 0 or more")
        digits, algorithm = request.get("digits", 6), request.get("algorithm", "SHA1")
        if digits not in (6, 7, 8) or type(digits) is not int or algorithm not in _ALGORITHMS:
            raise RequestError("digits 6, 7 or 8; algorithm SHA1, SHA256 or SHA512")
        secret = importers.decode_key(key, encoding)
        params = TokenParams(algorithm, digits, 30, Kind.HOTP)
        account = await identity.account_of(self.ctx, ident)
        refused = enrolment.refusal(ident, account)
        if refused is not None:
            raise EnrolmentRefused(refused)
        codes = recovery.generate(self.ctx.config.enrolment.recovery_codes)
        last = counter - 1 if counter > 0 else None
        await self.accounts._audited(
            caller,
            "enroll_hotp",
            ident.name,
            lambda: enrolment.install(self.ctx, ident, secret, params, last, codes),
            state="active",
            kind="hotp",
            counter=counter,
        )
        return {"user": ident.name, "state": "active", "kind": "hotp", "recovery_codes": codes}

    async def resync(self, caller: Caller, request: dict[str, Any]) -> dict[str, Any]:
        ident = await self._resolve(user_field(request))
        codes = request.get("codes")
        if not isinstance(codes, list) or len(codes) != 2:
            raise RequestError("the request needs `codes`: two consecutive codes of the token")
        first, second = (c if isinstance(c, str) else "" for c in codes)
        account = await identity.account_of(self.ctx, ident)
        if account is None or account.sealed_secret is None or account.params.kind is Kind.TOTP:
            raise NotEnrolled(
                f"{ident.name} has no active HOTP token; resync is for counter-based tokens "
                "(an app's time-based codes need only the right clock)"
            )
        subject = Subject(ident.name, control_source(caller.uid), SITE, account)
        verdict = await self.accounts.verifier.resync(
            subject, first, second, op="resync", actor_uid=caller.uid, actor=caller.name
        )
        if not verdict.ok:
            raise _refused(
                verdict,
                f"those are not two consecutive codes of {ident.name}'s token within "
                f"{hotp.RESYNC_WINDOW} presses after the last one used; press the button "
                "twice and give both new codes",
            )
        await self.accounts._audit(caller, "resync", ident.name, counter=verdict.step)
        return {"user": ident.name, "counter": verdict.step}

    # --- imports ---

    async def import_google_authenticator(
        self, caller: Caller, request: dict[str, Any]
    ) -> dict[str, Any]:
        pattern = request.get("path") or importers.DEFAULT_GA_PATH
        if not isinstance(pattern, str) or len(pattern) > 4096:
            raise RequestError("`path` must be a path pattern such as ~/.google_authenticator")
        every = request.get("all") is True
        names = request.get("users") or []
        if not isinstance(names, list) or not all(identity.valid_user_name(n) for n in names):
            raise RequestError("`users` must be a list of user names")
        if every == bool(names):
            raise RequestError("name the users to import, or all (not both)")
        dry_run = request.get("dry_run") is True
        cfg = self.ctx.config
        report = _Report(dry_run)
        entries = await asyncio.to_thread(_nss_users, None if every else names)
        for name, found in entries:
            if found is None:
                report.skip(name, "there is no such user on this system")
                continue
            user, uid, home = found
            try:
                path = importers.expand(pattern, user, home)
                if caller.uid != 0 and not path.is_relative_to(Path(home)):
                    # root reads every file anyway; a member of admin_group must not have
                    # mfad open (or say whether there is) any path they could not read
                    raise importers.ImportFileError(
                        f"{path} is outside {user}'s home: only root may import from there"
                    )
                text = await asyncio.to_thread(importers.read_owned, path, uid)
            except importers.NoFile as exc:
                if every:
                    report.absent += 1
                else:
                    report.skip(user, str(exc))
                continue
            except ImportFileError as exc:
                report.skip(user, str(exc))
                continue
            try:
                token = importers.parse_google_authenticator(
                    text, user, str(path), cfg.totp.window, cfg.hotp.look_ahead
                )
            except ImportFileError as exc:
                report.skip(user, str(exc))
                continue
            await self._import(caller, "import_google_authenticator", token, report)
        return report.answer()

    async def import_oath(self, caller: Caller, request: dict[str, Any]) -> dict[str, Any]:
        text, name = request.get("text"), request.get("name") or "usersfile"
        if not isinstance(text, str) or not isinstance(name, str):
            raise RequestError("the request needs the usersfile's `text`")
        tokens = importers.parse_oath_usersfile(
            text, name[:256], self.ctx.config.totp.window
        )  # a malformed line refuses the whole file here: nothing of it is imported
        report = _Report(request.get("dry_run") is True)
        seen: set[str] = set()
        for token in tokens:
            ident = await identity.resolve(token.user)
            if ident is None:
                report.skip(token.user, f"line {token.line}: no such user on this system")
                continue
            if ident.name in seen:
                report.skip(
                    ident.name,
                    f"line {token.line}: a second token for the user; mfad keeps one per user",
                )
                continue
            seen.add(ident.name)
            await self._import(caller, "import_oath", _renamed(token, ident.name), report)
        return report.answer()

    async def _import(self, caller: Caller, op: str, token: Token, report: _Report) -> None:
        """One user's token: refused if the user has one, else recorded and installed."""
        ident = await identity.resolve(token.user)
        if ident is None:
            report.skip(token.user, "there is no such user on this system")
            return
        try:
            account = await identity.account_of(self.ctx, ident)
        except StaleAccount as exc:
            report.skip(ident.name, str(exc))
            return
        refused = enrolment.refusal(ident, account)
        if refused is not None:
            report.skip(ident.name, refused)
            return
        fields = {
            "kind": str(token.params.kind),
            "recovery_codes": len(token.scratch),
            "last_used": token.last,
        }
        if report.dry_run:
            await self.accounts._audit(caller, op, ident.name, Outcome.SUCCESS, dry_run=True)
        else:
            await self.accounts._audited(
                caller,
                op,
                ident.name,
                lambda: enrolment.install(
                    self.ctx, ident, token.secret, token.params, token.last, token.scratch
                ),
                state="active",
                **fields,
            )
        report.imported.append({"user": ident.name, **fields, "notes": list(token.notes)})


_ALGORITHMS = ("SHA1", "SHA256", "SHA512")


class _Report:
    def __init__(self, dry_run: bool) -> None:
        self.dry_run = dry_run
        self.imported: list[dict[str, Any]] = []
        self.skipped: list[dict[str, str]] = []
        self.absent = 0  # users without a file, with `all`

    def skip(self, user: str, reason: str) -> None:
        self.skipped.append({"user": user, "reason": reason})

    def answer(self) -> dict[str, Any]:
        return {
            "dry_run": self.dry_run,
            "imported": self.imported,
            "skipped": self.skipped,
            "without_file": self.absent,
        }


def _renamed(token: Token, user: str) -> Token:
    return replace(token, user=user)


def _nss_users(names: list[str] | None) -> list[tuple[str, tuple[str, int, str] | None]]:
    """(name as asked, (canonical name, uid, home) or None) for each name, or for every
    user NSS lists when `names` is None."""
    if names is None:
        return [(e.pw_name, (e.pw_name, e.pw_uid, e.pw_dir)) for e in pwd.getpwall()]
    found: list[tuple[str, tuple[str, int, str] | None]] = []
    for name in names:
        try:
            e = pwd.getpwnam(name)
        except KeyError:
            found.append((name, None))
            continue
        found.append((name, (e.pw_name, e.pw_uid, e.pw_dir)))
    return found
