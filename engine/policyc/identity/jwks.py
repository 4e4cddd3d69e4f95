"""Where the proxy's token-verification keys come from: a JWKS file or an https URL.

A key set is parsed once into :class:`KeySet` (pure, no I/O) which answers "which key verifies
a token with this ``kid`` and this ``alg``".  Two sources keep one fresh: :class:`FileKeySource`
re-reads its file when the mtime changes (rotation on disk), :class:`HttpsKeySource` caches the
IdP's set for a TTL and refreshes it on an unknown ``kid`` at most once per
``min_refresh_interval`` (so a flood of random kids cannot hammer the IdP), and keeps serving a
cached set through fetch failures until a hard maximum age, then fails closed.

Symmetric (``oct``) keys and keys whose ``use`` is not ``sig`` are never usable: a public key set
must not be able to turn into an HMAC secret.  A key only ever verifies the algorithm family of
its own key type, and an ``alg`` declared on the key must equal the token's.
"""

from __future__ import annotations

import asyncio
import json
import logging
import ssl
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import jwt

from policyc.errors import ConfigFileError, InvalidPassword, PolicycError

log = logging.getLogger("policyc.identity")

MAX_JWKS_BYTES = 1024 * 1024

# Asymmetric JWS algorithms and the (kty, curve) a key needs to verify them.  HS* and "none"
# are absent on purpose: nothing here can ever select them.
_RSA = ("RSA", None)
ALGORITHM_KEY_TYPES: Mapping[str, tuple[tuple[str, str | None], ...]] = {
    "RS256": (_RSA,),
    "RS384": (_RSA,),
    "RS512": (_RSA,),
    "PS256": (_RSA,),
    "PS384": (_RSA,),
    "PS512": (_RSA,),
    "ES256": (("EC", "P-256"),),
    "ES384": (("EC", "P-384"),),
    "ES512": (("EC", "P-521"),),
    "EdDSA": (("OKP", "Ed25519"), ("OKP", "Ed448")),
}
SUPPORTED_ALGORITHMS = frozenset(ALGORITHM_KEY_TYPES)

Fetch = Callable[[str], bytes]
Clock = Callable[[], float]


class KeySetError(PolicycError):
    """A key set (or where it lives) is unusable: bad JSON, duplicate kids, http URL..."""

    code = "jwks"
    sqlstate = ConfigFileError.sqlstate


class KeysUnavailable(KeySetError):
    """No key set fresh enough to trust can be had right now; verification fails closed."""


class UnknownKey(PolicycError):
    """The key set has no key for the token's ``kid`` (or, without a kid, no single key)."""

    code = "auth"
    sqlstate = InvalidPassword.sqlstate
    reason = "unknown_kid"


class KeyMismatch(UnknownKey):
    """The ``kid`` names a key of another type or declared algorithm than the token's ``alg``."""

    reason = "key_mismatch"


def key_fits(jwk: Mapping[str, Any], alg: str) -> bool:
    """True when this JWK may verify ``alg``: right key type and curve, same declared alg."""
    wanted = ALGORITHM_KEY_TYPES.get(alg)
    if wanted is None:
        return False
    declared = jwk.get("alg")
    if declared is not None and declared != alg:
        return False
    kty = jwk.get("kty")
    crv = jwk.get("crv")
    return any(kty == w_kty and (w_crv is None or crv == w_crv) for w_kty, w_crv in wanted)


def _usable(jwk: Mapping[str, Any]) -> bool:
    """Signature keys of an asymmetric type; everything else in a set is ignored."""
    use = jwk.get("use")
    if use is not None and use != "sig":
        return False
    ops = jwk.get("key_ops")
    if ops is not None and (not isinstance(ops, list) or "verify" not in ops):
        return False
    kty = jwk.get("kty")
    return any(kty == w_kty for kinds in ALGORITHM_KEY_TYPES.values() for w_kty, _ in kinds)


@dataclass
class KeySet:
    """A parsed, validated JWKS: the signature keys, each checked to load, kids unique."""

    keys: tuple[Mapping[str, Any], ...]
    _cache: dict[tuple[str | None, str], jwt.PyJWK] = field(default_factory=dict, repr=False)

    @classmethod
    def parse(cls, data: bytes | str) -> KeySet:
        """Parse JWKS JSON; unusable keys are skipped, duplicate kids refuse the whole set."""
        try:
            doc = json.loads(data)
        except (ValueError, RecursionError):
            raise KeySetError("JWKS is not valid JSON") from None
        if not isinstance(doc, dict) or not isinstance(doc.get("keys"), list):
            raise KeySetError('JWKS must be an object with a "keys" list')
        return cls.from_jwks(doc["keys"])

    @classmethod
    def from_jwks(cls, raw_keys: Iterable[object]) -> KeySet:
        keys: list[Mapping[str, Any]] = []
        kids: set[str] = set()
        for raw in raw_keys:
            if not isinstance(raw, dict) or not _usable(raw):
                continue
            kid = raw.get("kid")
            if kid is not None and not isinstance(kid, str):
                continue
            alg = _default_alg(raw)
            if alg is None:
                continue
            try:
                jwt.PyJWK(raw, alg)
            except jwt.PyJWTError:
                log.warning("JWKS key skipped: its key material does not load")
                continue
            if kid is not None:
                if kid in kids:
                    raise KeySetError("JWKS has duplicate key ids")
                kids.add(kid)
            keys.append(raw)
        if not keys:
            raise KeySetError("JWKS has no usable signature keys")
        return cls(tuple(keys))

    def select(self, kid: str | None, alg: str) -> jwt.PyJWK:
        """The key that verifies a token with header ``kid``/``alg``; raises UnknownKey."""
        cached = self._cache.get((kid, alg))
        if cached is not None:
            return cached
        if kid is None:
            fitting = [k for k in self.keys if key_fits(k, alg)]
            if len(fitting) != 1:
                raise UnknownKey("no single key for a token without kid")
            chosen = fitting[0]
        else:
            named = [k for k in self.keys if k.get("kid") == kid]
            if not named:
                raise UnknownKey("no key with this kid")
            chosen = named[0]
            if not key_fits(chosen, alg):
                raise KeyMismatch("key type does not fit the token algorithm")
        try:
            key = jwt.PyJWK(dict(chosen), alg)
        except jwt.PyJWTError:
            raise KeyMismatch("key does not load for the token algorithm") from None
        self._cache[(kid, alg)] = key
        return key


def _default_alg(jwk: Mapping[str, Any]) -> str | None:
    """An algorithm this key can verify (its declared one if any), or None: unusable."""
    for alg in ALGORITHM_KEY_TYPES:
        if key_fits(jwk, alg):
            return alg
    return None


@runtime_checkable
class KeySource(Protocol):
    """Anything that finds the verification key for a token's ``kid`` and ``alg``.

    Raises :class:`UnknownKey` (or :class:`KeyMismatch`) when the set has no fitting key and
    :class:`KeySetError` when no trustworthy set can be had.
    """

    async def get(self, kid: str | None, alg: str) -> jwt.PyJWK: ...

    def get_sync(self, kid: str | None, alg: str) -> jwt.PyJWK: ...


class StaticKeySource:
    """A fixed key set; for tests and for callers that manage keys themselves."""

    def __init__(self, keys: KeySet) -> None:
        self.keys = keys
        self.refreshes: Counter[str] = Counter()  # never refreshed: nothing to count

    async def problem(self) -> str | None:
        """Why no token could be verified now (None: the keys are loaded)."""
        return None

    async def get(self, kid: str | None, alg: str) -> jwt.PyJWK:
        return self.keys.select(kid, alg)

    def get_sync(self, kid: str | None, alg: str) -> jwt.PyJWK:
        return self.keys.select(kid, alg)


def _read_key_file(path: Path) -> KeySet:
    try:
        data = path.read_bytes()
    except OSError:
        raise KeysUnavailable(f"JWKS file {path} cannot be read") from None
    if len(data) > MAX_JWKS_BYTES:
        raise KeySetError(f"JWKS file {path} is larger than 1 MiB")
    return KeySet.parse(data)


class FileKeySource:
    """A JWKS file, re-read whenever its mtime or size changes (key rotation on disk).

    A file that vanishes or stops parsing fails closed: the old set is not kept, because
    editing the file is how an operator withdraws a compromised key.
    """

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self._stamp: tuple[int, int] | None = None
        self._keys: KeySet | None = None
        self._lock = threading.Lock()
        self.refreshes: Counter[str] = Counter()  # reads of the file, by outcome (metrics)

    async def problem(self) -> str | None:
        """Why no token could be verified now (None: the keys are loaded)."""
        try:
            self.current()
        except KeySetError as exc:
            return str(exc)
        return None

    def current(self) -> KeySet:
        """The key set as the file is now."""
        try:
            st = self.path.stat()
        except OSError:
            self.refreshes["failed"] += 1
            raise KeysUnavailable(f"JWKS file {self.path} cannot be read") from None
        stamp = (st.st_mtime_ns, st.st_size)
        with self._lock:
            if self._keys is None or stamp != self._stamp:
                self._keys = None
                try:
                    self._keys = _read_key_file(self.path)
                except KeySetError:
                    self.refreshes["failed"] += 1
                    raise
                self.refreshes["ok"] += 1
                self._stamp = stamp
            return self._keys

    async def get(self, kid: str | None, alg: str) -> jwt.PyJWK:
        # A stat per token and a small read on rotation: cheap enough for the event loop.
        return self.current().select(kid, alg)

    def get_sync(self, kid: str | None, alg: str) -> jwt.PyJWK:
        return self.current().select(kid, alg)


class _HttpsOnlyRedirect(urllib.request.HTTPRedirectHandler):
    """Follow redirects only to https: a redirect must not downgrade the key fetch."""

    def redirect_request(
        self,
        req: urllib.request.Request,
        fp: Any,
        code: int,
        msg: str,
        headers: Any,
        newurl: str,
    ) -> urllib.request.Request | None:
        if not newurl.lower().startswith("https://"):
            raise KeySetError("JWKS URL redirected away from https")
        return super().redirect_request(req, fp, code, msg, headers, newurl)


def https_fetcher(
    timeout: float = 5.0,
    limit: int = MAX_JWKS_BYTES,
    context: ssl.SSLContext | None = None,
) -> Fetch:
    """A blocking fetch with certificate verification, https-only redirects and a size cap.

    ``context`` is for an IdP behind a private CA; it must verify (the default context does).
    """
    context = context or ssl.create_default_context()
    if context.verify_mode != ssl.CERT_REQUIRED or not context.check_hostname:
        raise KeySetError("JWKS fetch requires certificate and host name verification")
    opener = urllib.request.build_opener(
        urllib.request.HTTPSHandler(context=context), _HttpsOnlyRedirect()
    )

    def fetch(url: str) -> bytes:
        if not url.lower().startswith("https://"):
            raise KeySetError("JWKS URL must be https")
        request = urllib.request.Request(url, headers={"Accept": "application/json"})  # noqa: S310 - scheme checked above
        with opener.open(request, timeout=timeout) as response:
            if response.status != 200:
                raise KeySetError(f"JWKS fetch answered HTTP {response.status}")
            body: bytes = response.read(limit + 1)
        if len(body) > limit:
            raise KeySetError("JWKS document is larger than 1 MiB")
        return body

    return fetch


class HttpsKeySource:
    """The IdP's JWKS over https: cached, refreshed on TTL or unknown kid, rate-limited.

    ``fetch(url) -> bytes`` does the transfer (default :func:`https_fetcher`); ``get`` runs it
    in a worker thread so the proxy's event loop never blocks.  ``clock`` is monotonic seconds.
    """

    def __init__(
        self,
        url: str,
        ttl: float = 300,
        min_refresh_interval: float = 30,
        timeout: float = 5,
        fetch: Fetch | None = None,
        *,
        max_age: float = 24 * 3600,
        clock: Clock = time.monotonic,
    ) -> None:
        if not url.lower().startswith("https://"):
            raise KeySetError("JWKS URL must be https")
        self.url = url
        self.ttl = ttl
        self.min_refresh_interval = min_refresh_interval
        self.max_age = max_age
        self._fetch = fetch if fetch is not None else https_fetcher(timeout)
        self._clock = clock
        self._keys: KeySet | None = None
        self._fetched_at = 0.0
        self._attempted_at: float | None = None
        self._async_lock: asyncio.Lock | None = None
        self._lock_loop: asyncio.AbstractEventLoop | None = None
        self._sync_lock = threading.Lock()
        self.refreshes: Counter[str] = Counter()  # fetches of the URL, by outcome (metrics)

    async def problem(self) -> str | None:
        """Why no token could be verified now (None: the keys are loaded); fetches the set
        when none was fetched yet or it is due (rate-limited as for tokens)."""
        loop = asyncio.get_running_loop()
        if self._async_lock is None or self._lock_loop is not loop:
            self._async_lock, self._lock_loop = asyncio.Lock(), loop
        async with self._async_lock:
            now = self._clock()
            if self._due(now) and self._may_attempt(now):
                await self._refresh_async()
            try:
                self._fresh(self._clock())
            except KeySetError as exc:
                return str(exc)
        return None

    # -- decisions (no I/O) ------------------------------------------------------------

    def _may_attempt(self, now: float) -> bool:
        return self._attempted_at is None or now - self._attempted_at >= self.min_refresh_interval

    def _due(self, now: float) -> bool:
        return self._keys is None or now - self._fetched_at >= self.ttl

    def _fresh(self, now: float) -> KeySet:
        if self._keys is None:
            raise KeysUnavailable("JWKS has not been fetched")
        if now - self._fetched_at > self.max_age:
            raise KeysUnavailable("cached JWKS is past its maximum age")
        return self._keys

    def _begin(self, now: float) -> None:
        self._attempted_at = now

    def _finish(self, body: bytes | None, error: BaseException | None) -> None:
        if error is None and body is not None:
            try:
                self._keys = KeySet.parse(body)
                self._fetched_at = self._clock()
                self.refreshes["ok"] += 1
                return
            except KeySetError as exc:
                error = exc
        self.refreshes["failed"] += 1
        log.warning(
            "JWKS refresh from %s failed (%s); keeping the cached set",
            self.url,
            type(error).__name__,
        )

    # -- the two drivers --------------------------------------------------------------

    async def _refresh_async(self) -> None:
        self._begin(self._clock())
        try:
            body = await asyncio.to_thread(self._fetch, self.url)
        except Exception as exc:  # any transport or size failure: keep the cache
            self._finish(None, exc)
        else:
            self._finish(body, None)

    def _refresh_sync(self) -> None:
        self._begin(self._clock())
        try:
            body = self._fetch(self.url)
        except Exception as exc:  # any transport or size failure: keep the cache
            self._finish(None, exc)
        else:
            self._finish(body, None)

    def _loop_lock(self) -> asyncio.Lock:
        loop = asyncio.get_running_loop()
        if self._async_lock is None or self._lock_loop is not loop:
            self._async_lock, self._lock_loop = asyncio.Lock(), loop
        return self._async_lock

    async def load(self) -> KeySet:
        """The key set now, fetched first when due (how a reload checks a new URL);
        KeysUnavailable when no set fresh enough can be had."""
        async with self._loop_lock():
            if self._due(self._clock()) and self._may_attempt(self._clock()):
                await self._refresh_async()
            return self._fresh(self._clock())

    async def get(self, kid: str | None, alg: str) -> jwt.PyJWK:
        async with self._loop_lock():
            if self._due(self._clock()) and self._may_attempt(self._clock()):
                await self._refresh_async()
            try:
                return self._fresh(self._clock()).select(kid, alg)
            except KeyMismatch:
                raise
            except UnknownKey:
                if not self._may_attempt(self._clock()):
                    raise
            await self._refresh_async()
            return self._fresh(self._clock()).select(kid, alg)

    def get_sync(self, kid: str | None, alg: str) -> jwt.PyJWK:
        with self._sync_lock:
            if self._due(self._clock()) and self._may_attempt(self._clock()):
                self._refresh_sync()
            try:
                return self._fresh(self._clock()).select(kid, alg)
            except KeyMismatch:
                raise
            except UnknownKey:
                if not self._may_attempt(self._clock()):
                    raise
            self._refresh_sync()
            return self._fresh(self._clock()).select(kid, alg)


def key_source_for(jwks: str, base_dir: Path | str) -> KeySource:
    """The source for a policy's ``identity.jwks``: an https URL, or a path relative to the
    policy file's directory.  ``http://`` is refused."""
    lowered = jwks.lower()
    if lowered.startswith("https://"):
        return HttpsKeySource(jwks)
    if "://" in lowered:
        raise KeySetError("identity.jwks must be an https URL or a file path")
    path = Path(jwks)
    return FileKeySource(path if path.is_absolute() else Path(base_dir) / path)
