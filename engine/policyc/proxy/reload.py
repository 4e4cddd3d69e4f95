"""Live reload: ``SIGHUP`` and ``policyc proxy --reload-on-change`` (issue #15, item 2).

A reload reads again the policy file, its JWKS (a file is parsed, a new https URL fetched),
the TLS certificate and key, and the service password from ``--password-file`` or
``--password-command``.  All of it is read and checked first; then, on the event loop and
with no ``await`` in between, the server takes the new configuration, judge, token verifier,
logins and TLS context together (:meth:`Reloader.reload`).

* **What a session keeps.** A login takes the policy in force when its startup packet has been
  read (:meth:`ProxyServer._connection <policyc.proxy.server.ProxyServer>` takes the
  configuration, the judge and the logins at once) and the session keeps them to its end:
  its group (limits, approval rules, ``functions:``), the judge, result recording, holds.  A
  session never reads the server's configuration again, so nothing an agent does, and no
  reload, changes the rules of an open session.  Its ``audit.sessions`` row names the policy
  by its hash (:func:`policy_hash`).
* **A bad file changes nothing**: a policy that does not load (reported as ``file:line: key:
  message``), names another database or has no ``identity``; a JWKS without a usable key; a
  certificate that does not load or does not match its key; an approval webhook whose secret
  cannot be read; a password source that fails or is empty.  The reload fails as a whole, the
  log says why (``reload_failed``) and :attr:`ProxyServer.reload_counts` counts it.  One
  exception is older than reloads: a JWKS *file* is re-read by its key source whenever it
  changes and fails closed (a key is withdrawn by editing the file), so a broken JWKS file
  refuses logins until it is fixed whether or not a reload ran.
* **The service password.** A new password the database does not accept yet is not a
  failure: the operator writes the new secret first, then changes the role's password
  (``policyc service-password``), so until then the proxy keeps the one that works.  When
  the database refuses the service password at a login (28P01), the source is read again (at
  most every :data:`PASSWORD_REREAD_SECONDS`, however many logins fail) and that login is
  tried once more with the new password.  A password is never logged.
* **--reload-on-change** polls the policy file, the JWKS file, the certificate, the key and
  the password file every :data:`POLL_SECONDS` (mtime, size, inode) and reloads when one of
  them changes.  With ``--workers N`` the supervisor polls and passes ``SIGHUP`` on, and keeps
  the newest policy that passed its checks for the workers it restarts
  (:mod:`policyc.proxy.workers`).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import math
import os
import ssl
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from policyc.errors import InvalidPassword, PolicycError, PolicyError
from policyc.identity import (
    FileKeySource,
    HttpsKeySource,
    IdentityConfigError,
    KeySetError,
    KeySource,
    TokenVerifier,
    key_source_for,
)
from policyc.policy import load_policy
from policyc.policy.model import Policy
from policyc.proxy.codec import TERMINATE
from policyc.proxy.config import ProxyConfig, ProxyConfigError, Upstream, read_service_password
from policyc.proxy.holds import ApprovalBroker
from policyc.proxy.judge.cache import Judge
from policyc.proxy.upstream import UpstreamError, connect
from policyc.webhook import WebhookNotifier

if TYPE_CHECKING:
    from policyc.proxy.server import ProxyServer

log = logging.getLogger("policyc.proxy")

#: Seconds between two looks at the files with ``--reload-on-change``.
POLL_SECONDS: Final = 2.0
#: After the database refused the service password, the least time before its source is read
#: again (a flood of logins must not run ``--password-command`` a flood of times).
PASSWORD_REREAD_SECONDS: Final = 5.0
#: How long a reload waits for the database to say whether it takes a new service password.
PASSWORD_CHECK_SECONDS: Final = 10.0


class ReloadFailed(PolicycError):
    """A file a reload read is not usable; nothing was changed."""

    code = "reload"


def policy_hash(policy: Policy) -> str:
    """The policy's version: the hex sha256 of its file's bytes as loaded (``""`` for a policy
    built in memory).  Recorded in ``audit.sessions.policy_hash`` for every session."""
    return policy.sha256 or ""


@dataclass(frozen=True)
class Checked:
    """What a reload read from the files, every part of it checked."""

    policy: Policy
    verifier: TokenVerifier
    ssl: ssl.SSLContext | None
    webhook: WebhookNotifier | None


def check_files(config: ProxyConfig, keys: KeySource | None = None) -> Checked:
    """Read and check the policy file ``config.policy`` was loaded from, its JWKS and the TLS
    pair; :class:`ReloadFailed` says what is wrong.  Blocking (files, YAML): a server runs it
    in a thread.  ``keys`` is the key source in force, kept when the policy names the same
    JWKS (an https source keeps its cache and its refresh limits)."""
    running = config.policy
    try:
        policy = load_policy(running.source)
    except PolicyError as exc:
        raise ReloadFailed(_first_problem(exc)) from None
    if policy.database != running.database:
        raise ReloadFailed(
            f"{policy.where('database')}: the policy is for database {policy.database!r}, "
            f"and this proxy runs the policy of {running.database!r}; restart the proxy to "
            "serve another database")
    identity = policy.identity
    if identity is None:
        raise ReloadFailed(f"{policy.source}:1: identity: missing: the proxy cannot verify "
                           "agents without it")
    try:
        if keys is None or running.identity is None or identity.jwks != running.identity.jwks:
            keys = key_source_for(identity.jwks, ".")
        if isinstance(keys, FileKeySource):
            keys.current()  # parsed now: a set without a usable key fails the reload
        verifier = TokenVerifier(identity, keys)
    except (KeySetError, IdentityConfigError) as exc:
        raise ReloadFailed(f"{policy.where('identity.jwks')}: {exc}") from None
    try:
        context = config.server_ssl_context()
    except (OSError, ssl.SSLError, ValueError, ProxyConfigError) as exc:
        raise ReloadFailed(f"TLS certificate {config.tls_cert}, key "
                           f"{config.tls_key or config.tls_cert}: {_tls_reason(exc)}") from None
    webhook = None
    if policy.approvals.webhook is not None:
        try:
            webhook = WebhookNotifier(policy.approvals.webhook)  # reads its secret now
        except PolicycError as exc:
            raise ReloadFailed(f"{policy.where('approvals.webhook')}: {exc}") from None
    return Checked(policy, verifier, context, webhook)


def _first_problem(exc: PolicyError) -> str:
    if not exc.problems:
        return str(exc)
    more = len(exc.problems) - 1
    tail = f" (and {more} more; `policyc check` lists them)" if more else ""
    return f"{exc.problems[0]}{tail}"


def _tls_reason(exc: BaseException) -> str:
    if isinstance(exc, ssl.SSLError):
        reason = exc.reason or exc.strerror or type(exc).__name__
        return str(reason).replace("_", " ").lower()
    if isinstance(exc, OSError):
        return (exc.strerror or type(exc).__name__).lower()
    return str(exc)


# --- the files --reload-on-change watches ------------------------------------------------------
Stamp = tuple[int, int, int] | None


def watched_files(config: ProxyConfig) -> list[Path]:
    """The files a reload reads: the policy, its JWKS when that is a file, the certificate and
    key, the password file."""
    paths = [Path(config.policy.source)]
    identity = config.policy.identity
    if identity is not None and "://" not in identity.jwks:
        paths.append(Path(identity.jwks))
    paths += [p for p in (config.tls_cert, config.tls_key, config.password_file) if p]
    return list(dict.fromkeys(paths))


def stamps(paths: Iterable[Path]) -> dict[Path, Stamp]:
    """(mtime, size, inode) of each file; None for one that cannot be read."""
    found: dict[Path, Stamp] = {}
    for path in paths:
        try:
            st = os.stat(path)
        except OSError:
            found[path] = None
        else:
            found[path] = (st.st_mtime_ns, st.st_size, st.st_ino)
    return found


def changed(seen: dict[Path, Stamp], now: dict[Path, Stamp]) -> bool:
    """A file watched before looks different now (a file newly watched, such as the JWKS a
    reloaded policy names, was read by that reload: it is not a change)."""
    return any(path in seen and seen[path] != stamp for path, stamp in now.items())


# --- the server's side -------------------------------------------------------------------------
class Reloader:
    """Reloads one :class:`~policyc.proxy.server.ProxyServer`; see the module docstring."""

    def __init__(self, server: ProxyServer) -> None:
        self.server = server
        self._reloading = asyncio.Lock()  # one reload at a time; SIGHUPs meanwhile wait
        self._credential = asyncio.Lock()  # one change of the service password at a time
        self._refused_read_at = -math.inf  # monotonic: the last read after a 28P01
        self._watcher: asyncio.Task[None] | None = None

    # ---- reload ----------------------------------------------------------------------------
    async def reload(self) -> bool:
        """Read and check everything, then swap it in at once; False (and nothing changed)
        when something is not usable.  Never raises."""
        server = self.server
        async with self._reloading:
            try:
                note = await self._reload()
            except ReloadFailed as exc:
                return self._failed(str(exc))
            except Exception as exc:  # a reload must never take the proxy down
                log.error("reload failed: %s", type(exc).__name__, exc_info=exc)
                return self._failed(f"internal error ({type(exc).__name__})")
        server.reload_counts["ok"] += 1
        server.last_reload_error = None
        log.info("reloaded: policy %s; %s", server.policy_hash, note,
                 extra=self._extra(event="policy_reloaded", policy_hash=server.policy_hash))
        return True

    def _failed(self, reason: str) -> bool:
        server = self.server
        server.reload_counts["failed"] += 1
        server.last_reload_error = reason
        log.warning("reload failed, the configuration in force is kept: %s", reason,
                    extra=self._extra(event="reload_failed", reason=reason,
                                      policy_hash=server.policy_hash))
        return False

    def _extra(self, **fields: Any) -> dict[str, Any]:
        config = self.server.config
        if config.workers > 1:
            fields["worker"] = config.worker_index
        return fields

    async def _reload(self) -> str:
        server = self.server
        before = server.config
        keys = server.verifier.keys if server.verifier is not None else None
        checked = await asyncio.to_thread(check_files, before, keys)
        new_keys = checked.verifier.keys
        if isinstance(new_keys, HttpsKeySource) and new_keys is not keys:
            try:
                await new_keys.load()
            except KeySetError as exc:
                raise ReloadFailed(f"{checked.policy.where('identity.jwks')}: {exc}") from None
        async with self._credential:
            upstream, password_note = await self._password_for_reload()
            broker = server.approvals
            if broker is None and checked.policy.approvals.approvers:
                broker = ApprovalBroker(upstream.conninfo(), before.proxy_name, checked.webhook)
                await broker.start()
            # ---- from here on no await: every new login sees all of it, or none
            self._swap(checked, upstream, broker)
        what = "changed" if policy_hash(checked.policy) != policy_hash(before.policy) \
            else "unchanged"
        return (f"the policy file {what}, its JWKS and the TLS certificate read again; "
                f"service password {password_note}")

    def _swap(self, checked: Checked, upstream: Upstream,
              broker: ApprovalBroker | None) -> None:
        server = self.server
        old_judge = server.judge
        assert old_judge is not None and server.audit is not None and server._logins is not None
        config = dataclasses.replace(server.config, policy=checked.policy, upstream=upstream)
        # the registry the server chose for its PostgreSQL major; the parse cache is the
        # policy's no more than the text's (classification reads no policy)
        judge = Judge(checked.policy, config.max_statement_bytes, registry=old_judge.registry)
        judge.classifier = old_judge.classifier
        password_changed = upstream.password != server.config.upstream.password
        server.config = config
        server.judge = judge
        server.verifier = checked.verifier
        server._logins = dataclasses.replace(server._logins, config=config,
                                             verifier=checked.verifier)
        server._ssl = checked.ssl
        if broker is not None:
            broker.use_notifier(checked.webhook)
        server.approvals = broker
        if password_changed:
            self._connect_with(upstream)
        server.audit.forget_runtime()  # apply may have upgraded the runtime (policy_hash)

    # ---- the service password ----------------------------------------------------------------
    async def _password_for_reload(self) -> tuple[Upstream, str]:
        """The upstream to use after this reload, and what happened to the password."""
        config = self.server.config
        current = config.upstream
        if not (config.password_file or config.password_command):
            return current, "not re-read (no --password-file or --password-command)"
        try:
            password = await asyncio.to_thread(read_service_password, config.password_file,
                                               config.password_command)
        except ProxyConfigError as exc:
            raise ReloadFailed(str(exc)) from None
        if password == current.password:
            return current, "unchanged"
        candidate = dataclasses.replace(current, password=password)
        accepted = await _accepted(candidate)
        if accepted:
            log.info("service password changed (reload)",
                     extra=self._extra(event="service_password_changed"))
            return candidate, "changed"
        if accepted is None:
            why = "the database could not be asked"
        else:
            why = "the database does not accept it yet"
        log.warning("a new service password was read, but %s: the one in use is kept (a "
                    "login the database refuses reads the source again)", why,
                    extra=self._extra(event="service_password_pending"))
        return current, f"new but not in use ({why})"

    async def refresh_password(self, used: Upstream) -> Upstream | None:
        """The database refused the service password of ``used`` (28P01): the upstream to
        try once more with, or None.  Reads the password source at most every
        :data:`PASSWORD_REREAD_SECONDS`, whatever the number of logins refused."""
        server = self.server
        async with self._credential:
            config = server.config
            current = config.upstream
            if current.password != used.password:
                return current  # changed since that login began (another login, a reload)
            if not (config.password_file or config.password_command):
                return None
            now = time.monotonic()
            if now - self._refused_read_at < PASSWORD_REREAD_SECONDS:
                return None
            self._refused_read_at = now
            try:
                password = await asyncio.to_thread(read_service_password, config.password_file,
                                                   config.password_command)
            except ProxyConfigError as exc:
                log.warning("the database refused the service password, and reading it "
                            "again failed: %s", exc,
                            extra=self._extra(event="service_password_unreadable",
                                              reason=str(exc)))
                return None
            if password == current.password:
                log.warning("the database refused the service password, and its source "
                            "still holds the same one",
                            extra=self._extra(event="service_password_refused"))
                return None
            fresh = dataclasses.replace(current, password=password)
            server.config = dataclasses.replace(config, upstream=fresh)
            if server._logins is not None:
                server._logins = dataclasses.replace(server._logins, config=server.config)
            self._connect_with(fresh)
            log.info("service password changed: the database refused the one in use, its "
                     "source holds a new one", extra=self._extra(event="service_password_changed"))
            return fresh

    def _connect_with(self, upstream: Upstream) -> None:
        """The proxy's own connections opened from now on log in with ``upstream``'s password
        (those open stay: a role's new password does not end its sessions)."""
        server = self.server
        conninfo = upstream.conninfo()
        if server.audit is not None:
            server.audit.use_conninfo(conninfo)
        if server._reads is not None:
            server._reads.conninfo = conninfo
        if server.approvals is not None:
            server.approvals.use_conninfo(conninfo)

    # ---- --reload-on-change ----------------------------------------------------------------
    def watch(self, interval: float = POLL_SECONDS) -> None:
        """Poll the files a reload reads every ``interval`` seconds; reload when one changes."""
        if self._watcher is None:
            self._watcher = asyncio.create_task(self._watch(interval),
                                                name="policyc-reload-watch")

    async def _watch(self, interval: float) -> None:
        seen = await asyncio.to_thread(stamps, watched_files(self.server.config))
        while True:
            await asyncio.sleep(interval)
            now = await asyncio.to_thread(stamps, watched_files(self.server.config))
            if changed(seen, now):
                log.debug("a watched file changed: reloading")
                await self.reload()
            seen = now

    async def close(self) -> None:
        task, self._watcher = self._watcher, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


async def current_credential(config: ProxyConfig) -> ProxyConfig:
    """``config`` with the service password its source holds now, if the database takes it
    (a worker the supervisor restarts: the password the supervisor read at start may have
    been rotated since); ``config`` as it is otherwise."""
    if not (config.password_file or config.password_command):
        return config
    try:
        password = await asyncio.to_thread(read_service_password, config.password_file,
                                           config.password_command)
    except ProxyConfigError:
        return config
    if password == config.upstream.password:
        return config
    candidate = dataclasses.replace(config.upstream, password=password)
    if await _accepted(candidate):
        return dataclasses.replace(config, upstream=candidate)
    return config


async def _accepted(upstream: Upstream) -> bool | None:
    """Whether the database takes ``upstream``'s service password: a login as the service
    role, closed at once; None when the database could not be asked."""
    try:
        session = await connect(upstream, upstream.service_user, {},
                                timeout=PASSWORD_CHECK_SECONDS)
    except UpstreamError as exc:
        return False if exc.sqlstate == InvalidPassword.sqlstate else None
    with contextlib.suppress(Exception):
        session.writer.write(TERMINATE)
        session.writer.close()
    return True
