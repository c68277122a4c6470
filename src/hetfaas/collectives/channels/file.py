"""``file:///dir``: a shared directory as the store (the default; what HPC users share).

A message is written to a temporary name and renamed into place, so a reader sees it whole
or not at all. A message for one reader is removed by it; one for several readers by the last
of them (each read adds a hard link; the read that completes the count removes them all). The
last rank to close removes the group's directory.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import threading
from typing import Any, ClassVar

from ...exceptions import ChannelUnavailable, ConfigurationError, GroupMismatch
from .base import MediatedChannel, register_channel, split_uri


def default_root() -> str:
    """Per user, so that another user's directory in a shared /tmp is never in the way."""
    return os.path.join(tempfile.gettempdir(), f"hetfaas-collectives-{os.getuid()}")


class FileChannel(MediatedChannel):
    """A group is a directory under ``root``; each message one file in it."""

    scheme: ClassVar[str] = "file"
    limits = 1 << 36
    poll_min_s = 50e-6
    poll_max_s = 2e-3

    def __init__(self, root: str | None = None) -> None:
        self.root = os.path.abspath(root or default_root())
        self.dir = ""
        self._closed = False

    @classmethod
    def from_uri(cls, uri: str) -> FileChannel:
        parts = split_uri(uri, "file")
        if parts.netloc not in ("", "localhost"):
            raise ConfigurationError(f"file:// URIs name a local directory, got host in {uri!r}")
        return cls(parts.path or None)

    def connect(self, group: str, rank: int, size: int, deadline: float) -> None:
        self.group, self.rank, self.size = group, rank, size
        self.dir = os.path.join(self.root, group)
        try:
            os.makedirs(self.dir, exist_ok=True)
        except OSError as exc:
            raise ChannelUnavailable(f"cannot use directory {self.dir!r}: {exc}") from exc
        self._write(f"hello.{rank}", [str(size).encode()])
        for peer, peer_size in self._hellos().items():
            if peer_size != size:
                raise GroupMismatch(
                    f"group {group!r}: rank {peer} joined with size {peer_size}, "
                    f"rank {rank} with size {size}"
                )

    def _hellos(self) -> dict[int, int]:
        found = {}
        for name in self._names():
            if name.startswith("hello."):
                try:
                    with open(os.path.join(self.dir, name), "rb") as f:
                        found[int(name[6:])] = int(f.read() or b"-1")
                except (OSError, ValueError):
                    continue
        return found

    def _names(self) -> list[str]:
        try:
            return os.listdir(self.dir)
        except FileNotFoundError:
            return []

    def present(self) -> set[int]:
        return set(self._hellos())

    def _write(self, key: str, segments: list[Any]) -> None:
        tmp = os.path.join(self.dir, f".tmp.{key}.{os.getpid()}.{threading.get_ident()}")
        try:
            with open(tmp, "wb") as f:
                for seg in segments:
                    f.write(seg)
            os.replace(tmp, os.path.join(self.dir, key))
        except OSError as exc:
            raise ChannelUnavailable(f"cannot write to {self.dir!r}: {exc}") from exc

    def _put(self, key: str, segments: list[Any], total: int, readers: int) -> None:
        self._write(key, segments)

    def _try_get(self, key: str, readers: int) -> Any | None:
        path = os.path.join(self.dir, key)
        try:
            fd = os.open(path, os.O_RDONLY)
        except FileNotFoundError:
            return None
        try:
            n = os.fstat(fd).st_size
            data = bytearray(n)
            view = memoryview(data)
            got = 0
            while got < n:
                k = os.readv(fd, [view[got:]])
                if k == 0:
                    break
                got += k
        finally:
            os.close(fd)
        if readers == 1:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
        elif readers > 1:
            self._ack(path, readers)
        return data

    def _ack(self, path: str, readers: int) -> None:
        """Count this read as a hard link to the message; the reader that brings the count to
        ``readers`` removes it, so a long loop does not fill the directory."""
        try:
            os.link(path, f"{path}.r{self.rank}")
            done = os.stat(path).st_nlink > readers  # the message itself plus one per reader
        except FileNotFoundError:
            return  # the last reader already removed it
        except OSError:
            return  # no hard links on this filesystem: removed when the group closes
        if done:
            for name in [path, *(f"{path}.r{r}" for r in range(self.size))]:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(name)

    def close(self) -> None:
        if self._closed or not self.dir:
            return
        self._closed = True
        try:
            self._write(f"bye.{self.rank}", [b""])
        except ChannelUnavailable:
            return
        byes = sum(1 for n in self._names() if n.startswith("bye."))
        if byes >= self.size:
            shutil.rmtree(self.dir, ignore_errors=True)


register_channel(FileChannel)
