"""The audit log's local spool: append-only segment files made durable with fsync.

Why a file and not the database: a statement must not reach the database before its audit
record is durable, and the agent's own transaction cannot carry that record (a rollback
would erase it).  A local fsync costs a few hundred microseconds and needs no network; the
audit log drains the spool into PostgreSQL afterwards.

Layout: ``<dir>/seg-00000001.jsonl`` ... one JSON object per line, written in whole batches
(``os.pwrite`` loop + ``os.fdatasync``).  A crash can leave the last line of a segment torn; it
is skipped on recovery.  After a write error the segment is abandoned (never appended to
again) so a torn line can only ever be a segment's last.  ``<dir>/spool.lock`` holds an
exclusive ``flock`` for as long as the spool is open, so two proxies never share (and delete
each other's) segments; it also says which process holds it (its pid), for the refusal of the
second.  Whom the spool belongs to is :mod:`policyc.proxy.audit.owner`'s business.

Preallocated segments (why: the fsync is the floor of every statement's latency).  Appending
to a file changes its size, so every ``fdatasync`` also commits the file system's journal;
overwriting blocks that already exist does not, which makes the flush about a third cheaper
(and far cheaper while other processes keep the journal busy).  So, as PostgreSQL does for
its WAL, a background thread writes the next segment full of zeros and fsyncs it ahead of
time (``<dir>/next.prealloc``); rotation renames it into place.  JSON text never contains a
NUL byte (control characters are escaped), so a reader takes a segment's content to be
everything before its first NUL: acknowledged batches were durable before any later byte was
written, so they always lie before it.

This module is synchronous and knows nothing of records: the audit log calls it from its
spool thread or from the event loop, never both at once (one owner at a time serialises every
mutation of a :class:`Spool`).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import re
import stat
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger("policyc.proxy.audit")

_SEGMENT = re.compile(r"^seg-(\d{8})\.jsonl$")
LOCK_NAME = "spool.lock"
PREALLOC_NAME = "next.prealloc"
_PREALLOC_TMP = "next.prealloc.tmp"
_ZEROS = bytes(1 << 20)


class SpoolLocked(OSError):
    """Another process (or another AuditLog in this one) holds the spool directory."""


def segment_name(number: int) -> str:
    return f"seg-{number:08d}.jsonl"


@dataclass
class RecoveredSegment:
    """Events read back from a segment left by an earlier run; ``torn`` counts skipped lines."""

    number: int
    events: list[dict[str, Any]]
    torn: int = 0
    size: int = 0  # bytes of content (a preallocated tail not counted)


@dataclass
class Spool:
    """Segment files under one directory; every method may raise ``OSError``."""

    directory: Path
    segment_bytes: int = 8 << 20
    preallocate: bool = True
    fsyncs: int = 0
    current: int = 0
    total_bytes: int = 0
    sizes: dict[int, int] = field(default_factory=dict)
    _fd: int = -1
    _dir_fd: int = -1
    _lock_fd: int = -1
    _abandon: bool = False
    _offset: int = 0
    _prealloc_thread: threading.Thread | None = None
    _prealloc_lock: threading.Lock = field(default_factory=threading.Lock)

    # --- lifecycle --------------------------------------------------------------------
    def open(self, *, begin: bool = True) -> list[RecoveredSegment]:
        """Create/lock the directory and read back earlier segments; with ``begin`` (the
        default) also start a fresh segment (:meth:`begin`).  Without it nothing in the
        directory changes but the lock file, so the caller may first check whom the spool
        belongs to (and close it untouched)."""
        _make_private_dirs(self.directory)
        mode = stat.S_IMODE(self.directory.stat().st_mode)
        if mode & 0o077:
            # the spool holds statement text and parameters, which may be PHI
            os.chmod(self.directory, 0o700)
            log.warning("audit spool directory was group/world accessible; set it to 0700")
        self._dir_fd = os.open(self.directory, os.O_RDONLY | os.O_DIRECTORY)
        self._lock_fd = os.open(self.directory / LOCK_NAME,
                                os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as exc:
            holder = _lock_holder(self._lock_fd)
            self.close()
            raise SpoolLocked(
                f"audit spool {self.directory} is in use by another proxy{holder}: "
                "a spool serves one proxy process at a time") from exc
        with contextlib.suppress(OSError):  # who holds it, for the refusal of the next one
            os.ftruncate(self._lock_fd, 0)
            os.pwrite(self._lock_fd, f"{os.getpid()}\n".encode(), 0)
        recovered = [self._read(n) for n in self._existing()]
        for seg in recovered:
            self.sizes[seg.number] = seg.size
        self.total_bytes = sum(self.sizes.values())
        if begin:
            self.begin()
        return recovered

    def begin(self) -> None:
        """Start writing, once, after :meth:`open`: a fresh segment numbered after every
        recovered one (earlier segments are never appended to)."""
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.directory / _PREALLOC_TMP)  # an interrupted preallocation
        if self.preallocate and not (self.directory / PREALLOC_NAME).exists():
            self._write_prealloc()  # the first segment too (once, at start)
        self._start_segment(max(self.sizes, default=0) + 1)

    def close(self) -> None:
        """Close every descriptor (data already written was fsynced by ``append``)."""
        thread = self._prealloc_thread
        if thread is not None:
            thread.join()
        for name in ("_fd", "_dir_fd", "_lock_fd"):
            fd = getattr(self, name)
            if fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(fd)
                setattr(self, name, -1)

    # --- writing ----------------------------------------------------------------------
    def append(self, data: bytes) -> int:
        """Write ``data`` (whole lines) and fsync; return the segment number it went to.

        Rotates first when the current segment is full or was abandoned after an error.
        On any error the current segment is abandoned and the error propagates.
        """
        if self._abandon or self._fd < 0 or self.sizes[self.current] >= self.segment_bytes:
            self._start_segment(self.current + 1)
        number = self.current
        try:
            view = memoryview(data)
            while view:
                written = os.pwrite(self._fd, view, self._offset)
                view = view[written:]
                self._offset += written
            # the data (and the file size when a batch outgrows a preallocated segment, or
            # the segment is an ordinary file): fdatasync skips only timestamps
            os.fdatasync(self._fd)
        except OSError:
            self._abandon = True
            self.total_bytes += self._offset - self.sizes[number]
            self.sizes[number] = self._offset
            raise
        self.fsyncs += 1
        self.sizes[number] += len(data)
        self.total_bytes += len(data)
        return number

    def delete_unreferenced(self, live: set[int]) -> list[int]:
        """Remove every segment but the current one and those in ``live``; fsync the directory.

        ``live`` is the caller's snapshot of segments that still hold undrained events.
        Returns the numbers removed.
        """
        doomed = [n for n in self.sizes if n != self.current and n not in live]
        for number in doomed:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.directory / segment_name(number))
            self.total_bytes -= self.sizes.pop(number)
        if doomed:
            self._sync_dir()
        return doomed

    def segments(self) -> list[int]:
        return sorted(self.sizes)

    # --- internals --------------------------------------------------------------------
    def _start_segment(self, number: int) -> None:
        if self._fd >= 0:
            with contextlib.suppress(OSError):
                os.close(self._fd)
            self._fd = -1
        path = self.directory / segment_name(number)
        with self._prealloc_lock:  # the preallocator is not renaming it right now
            try:
                os.rename(self.directory / PREALLOC_NAME, path)
            except FileNotFoundError:
                flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
                self._fd = os.open(path, flags, 0o600)
            else:
                self._fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
        self.current = number
        self.sizes[number] = 0
        self._offset = 0
        self._abandon = True  # until the directory entry is durable
        self._sync_dir()
        self._abandon = False
        self._preallocate_next()

    def _preallocate_next(self) -> None:
        """Start writing the next segment's zeros in the background (one at a time)."""
        if not self.preallocate or (self.directory / PREALLOC_NAME).exists():
            return
        thread = self._prealloc_thread
        if thread is not None and thread.is_alive():
            return
        thread = threading.Thread(target=self._write_prealloc, name="policyc-spool-prealloc",
                                  daemon=True)
        self._prealloc_thread = thread
        thread.start()

    def _write_prealloc(self) -> None:
        """On the preallocation thread: ``next.prealloc``, zero-filled and durable.

        It touches only its own two file names, so it never races the spool's owner; a
        failure just means the next segment is an ordinary (appended) file.
        """
        tmp = self.directory / _PREALLOC_TMP
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
            try:
                left = self.segment_bytes + (64 << 10)  # room for the batch that crosses
                while left > 0:
                    chunk = _ZEROS[:min(left, len(_ZEROS))]
                    left -= os.write(fd, chunk)
                os.fsync(fd)
            finally:
                os.close(fd)
            with self._prealloc_lock:
                os.rename(tmp, self.directory / PREALLOC_NAME)
            fsync_directory(self.directory)
        except OSError as exc:
            log.warning("audit spool: could not preallocate the next segment (%s)",
                        exc.strerror or type(exc).__name__)
            with contextlib.suppress(OSError):
                os.unlink(tmp)

    def _sync_dir(self) -> None:
        os.fsync(self._dir_fd)
        self.fsyncs += 1

    def _existing(self) -> list[int]:
        numbers = []
        for entry in os.listdir(self.directory):
            match = _SEGMENT.match(entry)
            if match:
                numbers.append(int(match.group(1)))
        return sorted(numbers)

    def _read(self, number: int) -> RecoveredSegment:
        raw = read_segment(self.directory / segment_name(number))
        lines = raw.split(b"\n")
        # the piece after the last newline is a torn write (or b"" when the file is whole)
        torn = 1 if lines[-1] else 0
        events: list[dict[str, Any]] = []
        for lineno, line in enumerate(lines[:-1], start=1):
            try:
                event = json.loads(line)
            except ValueError:
                event = None
            if isinstance(event, dict):
                events.append(event)
            else:
                torn += 1
                log.error("audit spool %s line %d is unreadable; skipped",
                          segment_name(number), lineno)
        if lines[-1]:
            log.warning("audit spool %s ends with a torn line (%d bytes); ignored",
                        segment_name(number), len(lines[-1]))
        return RecoveredSegment(number, events, torn, len(raw))


def read_segment(path: Path) -> bytes:
    """A segment's content: its bytes before the first NUL (the rest was preallocated)."""
    return path.read_bytes().split(b"\0", 1)[0]


def _make_private_dirs(directory: Path) -> None:
    """Create ``directory`` and each missing parent with mode 0700 (existing ones are left
    alone), fsyncing each new entry's parent so it survives a crash."""
    missing: list[Path] = []
    path = directory
    while not path.exists():
        missing.append(path)
        if path.parent == path:
            break
        path = path.parent
    for path in reversed(missing):
        try:
            path.mkdir(mode=0o700)
        except FileExistsError:
            continue
        os.chmod(path, 0o700)  # whatever the umask
        fsync_directory(path.parent)


def _lock_holder(fd: int) -> str:
    """`` (pid N)`` from a lock file's content, or nothing when it says nothing useful."""
    try:
        text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
    except OSError:
        return ""
    return f" (pid {text})" if text.isdigit() else ""


def fsync_directory(path: Path) -> None:
    """Make a directory's entries (a new or renamed file) durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
