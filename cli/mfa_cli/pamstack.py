"""A PAM service's auth stack: read it as libpam does, and find where pam_mfa.so can be
bypassed. The one reading of /etc/pam.d that `mfa doctor` and `mfa pam install` share.

Reading (``flatten``): lines are joined at a trailing backslash and cut at the first
``#`` (Linux-PAM's pam_assemble_line.h); ``@include FILE`` brings in every line of
FILE, ``auth include FILE`` its auth lines, ``auth substack FILE`` its auth lines one
level down, so that ``done`` and ``die`` in it end only the substack. A leading ``-``
on the type is dropped. The four control keywords are their bracket forms (pam.conf(5)):

    required    [success=ok new_authtok_reqd=ok ignore=ignore default=bad]
    requisite   [success=ok new_authtok_reqd=ok ignore=ignore default=die]
    sufficient  [success=done new_authtok_reqd=done default=ignore]
    optional    [success=ok new_authtok_reqd=ok default=ignore]

Judging (``analyse``): libpam's own walk of the stack (``_pam_dispatch_aux`` in
pam_dispatch.c: the impression, the status, jumps, ``reset``, substack levels) is run
over every outcome each module can give: pam_mfa.so success, skip (PAM_IGNORE) or
failure; a password module (pam_unix, pam_sss, ...) success or failure; pam_deny
failure; pam_permit success; pam_rootok success only for root (who can become anyone
anyway); any other module success, skip or failure. Every path is followed, and a
stack is accepted only if on every one:

- pam_mfa.so runs only after a password module has succeeded and while the stack
  is still heading for success: otherwise someone without the password is asked for
  a code, shown a pending user's new secret, and can confirm it (``mfa_after_failed_password``);
- the stack succeeds only if pam_mfa.so ran and did not fail, or through pam_rootok
  (``bypass``: a ``sufficient`` line that ends the stack first, a jump over it,
  an ``optional`` pam_mfa.so whose failure is ignored);
- a skip (PAM_IGNORE: the user needs no code) after a right password can end in
  success, and so can a right code: otherwise those users are refused
  (``skip_refused``, ``code_refused``).

A stack without any password module is the *key* deployment (sshd checks a public
key before PAM runs, AuthenticationMethods publickey,keyboard-interactive); where that
is safe is sshd's configuration, which `mfa doctor` reads separately.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

MODULE = "pam_mfa.so"

# Linux-PAM return codes (security/_pam_types.h) by the names pam.conf(5) uses in brackets.
RETURN_CODES = {
    "success": 0,
    "open_err": 1,
    "symbol_err": 2,
    "service_err": 3,
    "system_err": 4,
    "buf_err": 5,
    "perm_denied": 6,
    "auth_err": 7,
    "cred_insufficient": 8,
    "authinfo_unavail": 9,
    "user_unknown": 10,
    "maxtries": 11,
    "new_authtok_reqd": 12,
    "acct_expired": 13,
    "session_err": 14,
    "cred_unavail": 15,
    "cred_expired": 16,
    "cred_err": 17,
    "no_module_data": 18,
    "conv_err": 19,
    "authtok_err": 20,
    "authtok_recover_err": 21,
    "authtok_lock_busy": 22,
    "authtok_disable_aging": 23,
    "try_again": 24,
    "ignore": 25,
    "abort": 26,
    "authtok_expired": 27,
    "module_unknown": 28,
    "bad_item": 29,
    "conv_again": 30,
    "incomplete": 31,
}
SUCCESS, PERM_DENIED, AUTH_ERR = 0, 6, 7
AUTHINFO_UNAVAIL, USER_UNKNOWN, MAXTRIES, IGNORE = 9, 10, 11, 25
MUST_FAIL = PERM_DENIED  # libpam's PAM_MUST_FAIL_CODE

Action = str | int
"""'ok', 'done', 'bad', 'die', 'ignore', 'reset', or a jump of N lines."""

_KEYWORDS: dict[str, tuple[Action, dict[int, Action]]] = {
    "required": ("bad", {SUCCESS: "ok", 12: "ok", IGNORE: "ignore"}),
    "requisite": ("die", {SUCCESS: "ok", 12: "ok", IGNORE: "ignore"}),
    "sufficient": ("ignore", {SUCCESS: "done", 12: "done"}),
    "optional": ("ignore", {SUCCESS: "ok", 12: "ok"}),
}

PASSWORD_MODULES = frozenset(
    {
        "pam_unix.so",
        "pam_unix2.so",
        "pam_pwdb.so",
        "pam_sss.so",
        "pam_ldap.so",
        "pam_krb5.so",
        "pam_winbind.so",
        "pam_userdb.so",
        "pam_radius_auth.so",
        "pam_systemd_home.so",
        "pam_kanidm.so",
    }
)
"""Modules that check the user's password: the first factor pam_mfa.so must follow."""

# What each kind of module may return; pam_unix never returns PAM_IGNORE from auth.
_MFA_OUTCOMES = (SUCCESS, IGNORE, AUTH_ERR, MAXTRIES, AUTHINFO_UNAVAIL)
_OUTCOMES: dict[str, tuple[int, ...]] = {
    "pam_unix.so": (SUCCESS, AUTH_ERR, USER_UNKNOWN, AUTHINFO_UNAVAIL),
    "pam_deny.so": (AUTH_ERR,),
    "pam_permit.so": (SUCCESS,),
    "pam_rootok.so": (SUCCESS, AUTH_ERR),
}
_PASSWORD_OUTCOMES = (SUCCESS, AUTH_ERR, USER_UNKNOWN, AUTHINFO_UNAVAIL, IGNORE)
_OTHER_OUTCOMES = (SUCCESS, IGNORE, AUTH_ERR)
_NEUTRAL = frozenset(
    {
        "pam_env.so",
        "pam_faildelay.so",
        "pam_echo.so",
        "pam_warn.so",
        "pam_cap.so",
        "pam_group.so",
        "pam_keyinit.so",
        "pam_umask.so",
        "pam_gnome_keyring.so",
        "pam_kwallet5.so",
    }
)
"""Modules whose auth part sets something up and checks nothing: success or skip."""


class StackError(Exception):
    """A service file that cannot be read or followed; the message names file and line."""


@dataclass(frozen=True, slots=True)
class Line:
    """One auth line as libpam will run it."""

    file: Path
    number: int  # where the line starts in `file`, 1-based
    text: str  # as written, comment cut off
    control: str
    module: str  # as written: a name in the module directory or an absolute path
    args: tuple[str, ...]
    level: int  # substack depth, 0 at the top
    default: Action
    actions: tuple[tuple[int, Action], ...]

    @property
    def name(self) -> str:
        """The module's file name (``pam_unix.so``), whatever directory it was given in."""
        return self.module.rsplit("/", 1)[-1]

    def action(self, code: int) -> Action:
        return dict(self.actions).get(code, self.default)

    @property
    def where(self) -> str:
        return f"{self.file}:{self.number}"

    def __str__(self) -> str:
        return f"{self.where} `{self.text}`"


@dataclass(frozen=True, slots=True)
class Physical:
    """A logical line of one file: its type, the text after it, and the file lines it spans."""

    first: int  # 0-based index of its first physical line
    last: int  # 0-based index of its last physical line
    kind: str  # "auth", "account", ..., or "@include"
    rest: list[str]
    text: str


def logical_lines(text: str) -> list[Physical]:
    """The file's configuration lines as libpam assembles them (continuations joined,
    comments cut), with the physical lines each came from."""
    out: list[Physical] = []
    physical = text.splitlines()
    i = 0
    while i < len(physical):
        first, parts = i, []
        while True:
            raw = physical[i]
            cut = raw.find("#")
            body = raw if cut < 0 else raw[:cut]
            stripped = body.rstrip(" \t")
            if cut < 0 and stripped.endswith("\\"):
                parts.append(stripped[:-1])
                i += 1
                if i < len(physical):
                    continue
                break
            parts.append(body)
            break
        joined = " ".join(p.strip() for p in parts).strip()
        if joined:
            tokens = _tokens(joined)
            out.append(Physical(first, min(i, len(physical) - 1), tokens[0], tokens[1:], joined))
        i += 1
    return out


def _tokens(text: str) -> list[str]:
    """Split on blanks, keeping a ``[...]`` together (controls and bracketed arguments)."""
    tokens: list[str] = []
    i = 0
    while i < len(text):
        if text[i] in " \t":
            i += 1
            continue
        if text[i] == "[":
            end = text.find("]", i)
            end = len(text) if end < 0 else end + 1
        else:
            end = i
            while end < len(text) and text[end] not in " \t":
                end += 1
        tokens.append(text[i:end])
        i = end
    return tokens


def parse_control(control: str) -> tuple[Action, dict[int, Action]]:
    """The default action and the per-code actions of a control field."""
    if control in _KEYWORDS:
        keyword_default, keyword_actions = _KEYWORDS[control]
        return keyword_default, dict(keyword_actions)
    if not (control.startswith("[") and control.endswith("]")):
        raise ValueError(f"unknown control {control!r}")
    default: Action = "bad"  # libpam: an action not given is `bad`
    actions: dict[int, Action] = {}
    for item in control[1:-1].split():
        value, sep, action_text = item.partition("=")
        if not sep:
            raise ValueError(f"{item!r} in {control} is not value=action")
        action: Action
        if action_text.isdigit() and int(action_text) > 0:
            action = int(action_text)
        elif action_text in ("ok", "done", "bad", "die", "ignore", "reset"):
            action = action_text
        else:
            raise ValueError(f"unknown action {action_text!r} in {control}")
        if value == "default":
            default = action
        elif value in RETURN_CODES:
            actions[RETURN_CODES[value]] = action
        else:
            raise ValueError(f"unknown return value {value!r} in {control}")
    return default, actions


def flatten(pam_dir: Path, service: str, kind: str = "auth", text: str | None = None) -> list[Line]:
    """The `kind` lines of `service` in the order libpam runs them, includes followed;
    `text` stands for the service file's own text (a stack not yet written)."""
    return _flatten(pam_dir, pam_dir / service, kind, 0, (), text)


_MAX_DEPTH = 16


def _flatten(
    pam_dir: Path,
    path: Path,
    kind: str,
    level: int,
    seen: tuple[Path, ...],
    text: str | None = None,
) -> list[Line]:
    if path in seen or len(seen) > _MAX_DEPTH:
        raise StackError(f"{seen[-1]}: includes {path} in a loop")
    try:
        if text is None:
            text = path.read_text(encoding="utf-8", errors="surrogateescape")
    except FileNotFoundError:
        where = f"{seen[-1]}: includes " if seen else ""
        raise StackError(f"{where}{path}: no such PAM service file") from None
    except OSError as exc:
        raise StackError(f"{path}: cannot read it: {exc.strerror}") from None
    lines: list[Line] = []
    for logical in logical_lines(text):
        number = logical.first + 1
        if logical.kind == "@include":
            if logical.rest:
                lines += _flatten(
                    pam_dir, _target(pam_dir, logical.rest[0]), kind, level, (*seen, path)
                )
            continue
        if logical.kind.lstrip("-").lower() != kind:
            continue
        if len(logical.rest) < 2:
            raise StackError(f"{path}:{number}: `{logical.text}` lacks a control or a module")
        control, module, *args = logical.rest
        if control in ("include", "substack"):
            down = level + 1 if control == "substack" else level
            lines += _flatten(pam_dir, _target(pam_dir, module), kind, down, (*seen, path))
            continue
        try:
            default, actions = parse_control(control)
        except ValueError as exc:
            raise StackError(f"{path}:{number}: {exc}") from None
        lines.append(
            Line(
                path,
                number,
                logical.text,
                control,
                module,
                tuple(args),
                level,
                default,
                tuple(sorted(actions.items())),
            )
        )
    return lines


def _target(pam_dir: Path, name: str) -> Path:
    return Path(name) if name.startswith("/") else pam_dir / name


# ------------------------------------------------------------------ the walk


@dataclass(frozen=True, slots=True)
class _State:
    index: int
    impression: int  # -1 negative, 0 undefined, +1 positive (libpam's)
    status: int
    substates: tuple[tuple[int, int], ...]  # (impression, status) saved per level entered
    password: bool  # a password module succeeded on this path
    failed_password: int | None  # the first password module that failed here, or other
    # module whose failure set the stack towards refusal
    mfa: int | None  # what pam_mfa.so returned on this path
    root: bool  # pam_rootok succeeded: the caller is root
    culprit: int | None  # the line that ended the stack early or jumped over pam_mfa.so


@dataclass(frozen=True, slots=True)
class _End:
    status: int
    password: bool
    mfa: int | None
    root: bool
    culprit: int | None


class Problem(enum.Enum):
    MISSING = "missing"
    MFA_AFTER_FAILED_PASSWORD = "mfa_after_failed_password"  # noqa: S105 - a name, not one
    BYPASS = "bypass"
    SKIP_REFUSED = "skip_refused"
    CODE_REFUSED = "code_refused"
    TWICE = "twice"
    AFTER_FAILED_CHECK = "after_failed_check"  # not the password: the user still had to know it


@dataclass(frozen=True, slots=True)
class Finding:
    problem: Problem
    message: str
    fix: str


@dataclass(slots=True)
class Report:
    service: str
    lines: list[Line]
    mfa: list[Line]
    mode: str | None  # "password" (a password module precedes it), "key", or None (absent)
    findings: list[Finding] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.findings


def analyse(pam_dir: Path, service: str, text: str | None = None) -> Report:
    """Read `service` (or take its `text`) and judge where pam_mfa.so stands in its auth
    stack (StackError if the file cannot be read or followed)."""
    return judge(service, flatten(pam_dir, service, text=text))


def judge(service: str, lines: list[Line]) -> Report:
    mfa = [line for line in lines if line.name == MODULE]
    has_password = any(line.name in PASSWORD_MODULES for line in lines)
    report = Report(service, lines, mfa, None if not mfa else "password" if has_password else "key")
    if not mfa:
        report.findings.append(
            Finding(
                Problem.MISSING,
                f"pam_mfa.so is not in the {service} auth stack: nothing asks for a code",
                f"mfa pam install {service}",
            )
        )
        return report
    if len(mfa) > 1:
        report.findings.append(
            Finding(
                Problem.TWICE,
                f"pam_mfa.so is in the {service} auth stack {len(mfa)} times "
                f"({', '.join(line.where for line in mfa)}): a code is asked for twice",
                "keep one pam_mfa.so line",
            )
        )
    ends, early = _walk(lines, has_password)
    report.findings += _judge_ends(service, lines, ends, early, has_password)
    return report


def _outcomes(line: Line) -> tuple[int, ...]:
    if line.name == MODULE:
        return _MFA_OUTCOMES
    if line.name in _OUTCOMES:
        return _OUTCOMES[line.name]
    if line.name in PASSWORD_MODULES:
        return _PASSWORD_OUTCOMES
    if line.name in _NEUTRAL:
        return (SUCCESS, IGNORE)
    return _OTHER_OUTCOMES


def _walk(lines: list[Line], has_password: bool) -> tuple[set[_End], list[_State]]:
    """Every way through the stack: the ends, and the states in which pam_mfa.so ran too
    early (before a password succeeded, or with the stack already failing)."""
    ends: set[_End] = set()
    early: list[_State] = []
    start = _State(0, 0, MUST_FAIL, ((0, MUST_FAIL),), False, None, None, False, None)
    todo, seen = [start], {start}
    while todo:
        state = todo.pop()
        if state.index >= len(lines):
            status = state.status
            if status == SUCCESS and state.impression != 1:
                status = MUST_FAIL
            ends.add(_End(status, state.password, state.mfa, state.root, state.culprit))
            continue
        line = lines[state.index]
        if line.name == MODULE and (
            state.impression == -1 or (has_password and not state.password)
        ):
            early.append(state)
        for code in _outcomes(line):
            for nxt in _step(lines, state, code):
                if nxt not in seen:
                    seen.add(nxt)
                    todo.append(nxt)
    return ends, early


def _step(lines: list[Line], s: _State, code: int) -> Iterable[_State]:
    """libpam's handling of one module's return code (pam_dispatch.c, auth: no frozen chain)."""
    i, line = s.index, lines[s.index]
    level = line.level
    substates = s.substates
    prev_level = lines[i - 1].level if i else 0
    if level > prev_level:  # entering a substack: remember the state to reset to
        substates = (
            *substates[: prev_level + 1],
            *((s.impression, s.status),) * (level - prev_level),
        )
    impression, status = s.impression, s.status
    password = s.password or (line.name in PASSWORD_MODULES and code == SUCCESS)
    failed = s.failed_password
    if failed is None and line.name in PASSWORD_MODULES and code != SUCCESS:
        failed = i
    if failed is None and s.impression != -1 and line.action(code) in ("bad", "die"):
        failed = i  # this failure turned the stack towards refusal, and it carries on
    mfa = code if line.name == MODULE else s.mfa
    root = s.root or (line.name == "pam_rootok.so" and code == SUCCESS)
    culprit = s.culprit
    action = line.action(code)
    end_here = False
    if action == "reset":
        impression, status = substates[min(level, len(substates) - 1)]
    elif action in ("ok", "done"):
        if impression == 0 or (impression == 1 and status == SUCCESS):
            impression, status = 1, code
        if impression == 1 and action == "done":
            end_here = True
    elif action in ("bad", "die"):
        if impression != -1:
            impression, status = -1, (MUST_FAIL if code == IGNORE else code)
        end_here = action == "die"
    elif isinstance(action, int):
        # libpam skips `action` lines of this level (a substack counts as one); a jump
        # past the end of its (sub)stack is its "bad jump in stack": the stack fails
        target, remaining = i, action
        while remaining and target + 1 < len(lines) and lines[target + 1].level >= level:
            target += 1
            while target + 1 < len(lines) and lines[target + 1].level > level:
                target += 1
            remaining -= 1
        if remaining:
            impression, status = -1, MUST_FAIL
        if culprit is None and any(lines[j].name == MODULE for j in range(i + 1, target + 1)):
            culprit = i
        yield _State(
            target + 1, impression, status, substates, password, failed, mfa, root, culprit
        )
        return
    nxt = i + 1
    if end_here:  # skip to the end of this (sub)stack
        skipped = nxt
        while nxt < len(lines) and lines[nxt].level >= level:
            nxt += 1
        if (
            culprit is None
            and any(lines[j].name == MODULE for j in range(skipped, nxt))
            and mfa is None
        ):
            culprit = i
    yield _State(nxt, impression, status, substates, password, failed, mfa, root, culprit)


def _judge_ends(
    service: str, lines: list[Line], ends: set[_End], early: list[_State], has_password: bool
) -> list[Finding]:
    found: list[Finding] = []
    mfa_line = next(line for line in lines if line.name == MODULE)
    if early:
        culprits = sorted({s.failed_password for s in early if s.failed_password is not None})
        checks = [i for i in culprits if lines[i].name not in PASSWORD_MODULES]
        if culprits and len(checks) == len(culprits):
            named = ", ".join(str(lines[i]) for i in culprits)
            found.append(
                Finding(
                    Problem.AFTER_FAILED_CHECK,
                    f"pam_mfa.so ({mfa_line.where}) runs after a failed check ({named} fails "
                    "and the stack carries on): the login is already refused, yet the user is "
                    "asked for a code and a pending user shown a new secret",
                    "make that line `requisite`, or put pam_mfa.so before it",
                )
            )
        elif culprits:
            named = ", ".join(str(lines[i]) for i in culprits if i not in checks)
            found.append(
                Finding(
                    Problem.MFA_AFTER_FAILED_PASSWORD,
                    f"pam_mfa.so ({mfa_line.where}) runs after a failed password ({named} lets "
                    "the stack carry on): someone without the password is asked for a code and "
                    "shown a pending user's new secret",
                    "end the stack on a wrong password: make that line `requisite`, or use "
                    "Debian's `@include common-auth` (pam_unix, then requisite pam_deny); "
                    f"`mfa pam install {service}` writes a safe stack",
                )
            )
        else:
            found.append(
                Finding(
                    Problem.MFA_AFTER_FAILED_PASSWORD,
                    f"pam_mfa.so ({mfa_line.where}) runs before the password is checked: "
                    "someone without the password is asked for a code and shown a pending "
                    "user's new secret",
                    "put the pam_mfa.so line after the password check "
                    f"(`mfa pam install {service}` does)",
                )
            )
    bypass = [
        e
        for e in ends
        if e.status == SUCCESS and not e.root and (e.mfa is None or e.mfa not in (SUCCESS, IGNORE))
    ]
    if bypass:
        culprits = sorted({e.culprit for e in bypass if e.culprit is not None})
        failed_mfa = [e for e in bypass if e.mfa is not None]
        if failed_mfa:
            why = f"a wrong code does not fail the login ({mfa_line})"
            fix = "make it `auth required pam_mfa.so`"
        elif culprits:
            why = (
                "the stack can succeed before pam_mfa.so runs: "
                + ", ".join(str(lines[i]) for i in culprits)
                + " ends it or jumps past it"
            )
            fix = (
                "move the pam_mfa.so line before that line, or make that line end nothing "
                f"(`mfa pam install {service}` writes a safe stack)"
            )
        else:
            why = "the stack can succeed without pam_mfa.so"
            fix = f"`mfa pam install {service}` writes a safe stack"
        found.append(
            Finding(Problem.BYPASS, f"pam_mfa.so can be bypassed in {service}: {why}", fix)
        )
    if found:  # a stack that is unsafe: whether skips and codes also succeed is beside the point
        return found
    first_factor = (lambda e: e.password) if has_password else (lambda e: True)
    if not any(e.status == SUCCESS and e.mfa == IGNORE and first_factor(e) for e in ends):
        found.append(
            Finding(
                Problem.SKIP_REFUSED,
                f"users who need no code are refused by {service}: pam_mfa.so's skip "
                "(PAM_IGNORE) leaves no module that succeeded",
                "add `auth required pam_permit.so` after the pam_mfa.so line "
                f"(`mfa pam install {service} --mode key` writes it)",
            )
        )
    if not any(e.status == SUCCESS and e.mfa == SUCCESS and first_factor(e) for e in ends):
        found.append(
            Finding(
                Problem.CODE_REFUSED,
                f"no login through {service} can succeed, even with the right password and code",
                "look at the lines after pam_mfa.so (a `pam_deny.so` that always runs?)",
            )
        )
    return found
