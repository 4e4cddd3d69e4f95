"""The container's health check: GET /ready from every proxy process (standard library only).

Usage:
  python healthcheck.py /etc/policyc/proxy.toml     # the admin listener(s) the file configures
  python healthcheck.py http://127.0.0.1:9187/ready [URL ...]

With a configuration file, the URLs follow its ``admin`` and ``workers`` keys as the proxy
reads them: ``admin = "HOST:PORT"`` or a bare port (127.0.0.1), and with ``workers = N``
worker K listens on PORT + K; a wildcard host is asked on loopback. Healthy (exit 0) only when
every URL answers 200; otherwise exit 1, printing why (a 503's body names the check that
failed), which ``docker inspect`` shows in the container's health log. Options given on the
proxy's command line instead of the file are not seen here: keep ``admin`` in the file.
"""

from __future__ import annotations

import sys
import tomllib
import urllib.error
import urllib.request
from pathlib import Path

TIMEOUT_SECONDS = 4.0
MAX_BODY = 2000
LOOPBACK = ("http://127.0.0.1:", "http://[::1]:", "http://localhost:")


def urls(config: Path) -> list[str]:
    """The /ready URL of each proxy process the configuration file starts."""
    settings = tomllib.loads(config.read_text())
    admin = settings.get("admin")
    if admin is None:
        raise ValueError(f"{config} has no admin listener (admin = \"127.0.0.1:9187\")")
    text = str(admin)
    if text.isdigit():
        host, port = "127.0.0.1", int(text)
    else:
        host, _, port_text = text.rpartition(":")
        host, port = host.strip("[]") or "127.0.0.1", int(port_text)
    if host in ("::", "::1"):
        base = "http://[::1]"
    elif host in ("0.0.0.0", "127.0.0.1", "localhost"):  # noqa: S104 - read, not bound
        base = "http://127.0.0.1"
    else:
        raise ValueError(f"{config}: admin listens on {host}, not on loopback: check it there")
    workers = int(settings.get("workers", 1))
    return [f"{base}:{port + k}/ready" for k in range(workers)]


def check(url: str) -> tuple[bool, str]:
    """(ready, what to print) for one GET of ``url``."""
    if not url.startswith(LOOPBACK):
        return False, f"{url}: not a loopback http:// URL"
    try:
        with urllib.request.urlopen(url, timeout=TIMEOUT_SECONDS) as answer:  # noqa: S310
            body = answer.read(MAX_BODY).decode("utf-8", "replace")
            return answer.status == 200, f"{url}: {answer.status} {body}".strip()
    except urllib.error.HTTPError as exc:  # 503: not ready, the body says which check
        body = exc.read(MAX_BODY).decode("utf-8", "replace")
        return False, f"{url}: {exc.code} {body}".strip()
    except (urllib.error.URLError, OSError) as exc:
        return False, f"{url}: {getattr(exc, 'reason', exc)}"


def main(argv: list[str]) -> int:
    if len(argv) < 2:
        print(__doc__, file=sys.stderr)
        return 1  # a health check's exit status is 0 or 1 (2 is reserved)
    targets = argv[1:]
    if len(targets) == 1 and targets[0].endswith(".toml"):
        try:
            targets = urls(Path(targets[0]))
        except (OSError, ValueError, tomllib.TOMLDecodeError) as exc:
            print(f"healthcheck: {exc}")
            return 1
    results = [check(url) for url in targets]
    for _ready, said in results:
        print(said)
    return 0 if all(ready for ready, _said in results) else 1


if __name__ == "__main__":
    raise SystemExit(main(sys.argv))
