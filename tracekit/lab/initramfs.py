"""Write an uncompressed ``newc`` initramfs from a root directory plus extra files.

:func:`write_initramfs` archives files, directories and links under ``root`` (not device nodes), minus
``exclude`` prefixes, then the ``extra`` entries (mode 0755 for ``init``, ``*.sh``, ``usr/local/bin/*``)
with their parent directories. Uncompressed so the emulated kernel unpacks it without a decompressor.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import BinaryIO

__all__ = ["write_initramfs", "NewcWriter"]


class NewcWriter:
    """Append ``newc`` entries to a binary stream."""

    def __init__(self, sink: BinaryIO):
        self.sink = sink
        self.inode = 1
        self.count = 0
        self.seen: set[str] = set()

    def _pad(self, length: int) -> None:
        if length % 4:
            self.sink.write(b"\0" * (4 - length % 4))

    def add(self, name: str, mode: int, data: bytes = b"", mtime: int = 0) -> None:
        encoded = name.encode() + b"\0"
        header = "070701" + "".join(
            f"{v:08x}"
            for v in (self.inode, mode, 0, 0, 1, mtime, len(data), 0, 0, 0, 0, len(encoded), 0)
        )
        self.sink.write(header.encode() + encoded)
        self._pad(110 + len(encoded))
        self.sink.write(data)
        self._pad(len(data))
        self.inode += 1
        self.count += 1
        self.seen.add(name)

    def add_dirs_for(self, name: str) -> None:
        parts = name.split("/")[:-1]
        for i in range(1, len(parts) + 1):
            directory = "/".join(parts[:i])
            if directory not in self.seen:
                self.add(directory, stat.S_IFDIR | 0o755)

    def trailer(self) -> None:
        self.add("TRAILER!!!", 0)


def write_initramfs(
    path: Path, root: Path | None, extra: dict[str, bytes], exclude: tuple[str, ...] = ()
) -> int:
    """Write the archive to ``path``; see the module contract."""
    with open(path, "wb") as sink:
        writer = NewcWriter(sink)
        if root is not None:
            for dirpath, dirnames, filenames in os.walk(root):
                dirnames.sort()
                rel_dir = os.path.relpath(dirpath, root)
                for name in sorted(dirnames) + sorted(filenames):
                    full = os.path.join(dirpath, name)
                    rel = name if rel_dir == "." else f"{rel_dir}/{name}"
                    if any(rel == p or rel.startswith(p + "/") for p in exclude) or rel in extra:
                        continue
                    info = os.lstat(full)
                    if stat.S_ISLNK(info.st_mode):
                        writer.add(rel, info.st_mode, os.readlink(full).encode(), int(info.st_mtime))
                    elif stat.S_ISDIR(info.st_mode):
                        writer.add(rel, info.st_mode, b"", int(info.st_mtime))
                    elif stat.S_ISREG(info.st_mode):
                        writer.add(rel, info.st_mode, Path(full).read_bytes(), int(info.st_mtime))
                # symlinked directories are archived as links by the loop above; do not descend
                dirnames[:] = [
                    d
                    for d in dirnames
                    if not os.path.islink(os.path.join(dirpath, d))
                    and not any(
                        (d if rel_dir == "." else f"{rel_dir}/{d}").startswith(p) for p in exclude
                    )
                ]
        for name, data in extra.items():
            writer.add_dirs_for(name)
            mode = 0o755 if name == "init" or name.endswith(".sh") or name.startswith("usr/local/bin/") else 0o644
            writer.add(name, stat.S_IFREG | mode, data)
        writer.trailer()
        return writer.count
