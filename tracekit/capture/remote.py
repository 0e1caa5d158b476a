"""Captures at file system URLs (``file://``, ``hdfs://``, ``s3a://``, ...), read through pyarrow.fs.

:func:`find_url_captures` lists the captures at or below a URL (as a directory path is searched);
:func:`open_url_capture` opens one with the local reader's checks (manifest, then each family by
:func:`tracekit.capture.reader.read_family`, the one routine for both), its files read through the same
file system. ``s3a://``, the Hadoop name Spark is given, is read as ``s3://``. An
unsupported scheme, a file system that cannot be reached or a file that cannot be read is one line
(CaptureFormatError). Symbolic links are followed here: the refusal of links out is the local reader's.
"""

from __future__ import annotations

import re
from typing import Any, BinaryIO, Collection

import pyarrow as pa
import pyarrow.fs as pafs

from tracekit.capture.format import MANIFEST_NAME, is_family_name, shown_path
from tracekit.capture.manifest import MAX_MANIFEST_BYTES
from tracekit.capture.reader import (Capture, arrow_reason, check_manifest_bytes, family_reads, read_family,
                                     recorded_families)
from tracekit.capture.writer import CaptureWriteError
from tracekit.errors import CaptureFormatError

__all__ = ["SCHEMES", "CaptureUrl", "is_url", "find_url_captures", "open_url_capture", "write_url_file"]

#: URL schemes read (pyarrow's file systems; ``s3a`` read as ``s3``).
SCHEMES = ("file", "hdfs", "viewfs", "s3", "s3a", "gs")

_URL = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")
_from_uri = pafs.FileSystem.from_uri  # (file system, path) of a URL; a test puts a mock file system here


def is_url(text: Any) -> bool:
    """True when ``text`` is a URL (``scheme://...``), not a local path."""
    return isinstance(text, str) and _URL.match(text) is not None


class CaptureUrl(str):
    """A URL in a capture (its directory, a family, a file) with the file system that reads it: a string
    where a path is taken, with ``name`` and ``/`` as a Path has."""

    filesystem: pafs.FileSystem
    fs_path: str  # the path on ``filesystem``

    def __new__(cls, url: str, filesystem: pafs.FileSystem, fs_path: str) -> "CaptureUrl":
        made = super().__new__(cls, url)
        made.filesystem, made.fs_path = filesystem, fs_path
        return made

    @property
    def name(self) -> str:
        return self.rstrip("/").rsplit("/", 1)[-1]

    def lexists(self) -> bool:
        """True when there is a file or directory here (CaptureFormatError when that cannot be learnt)."""
        return _type(self) != pafs.FileType.NotFound

    def __truediv__(self, part: str) -> "CaptureUrl":
        return CaptureUrl(f"{self.rstrip('/')}/{part}", self.filesystem, f"{self.fs_path.rstrip('/')}/{part}")


def _failed(url: Any, what: str, error: BaseException) -> CaptureFormatError:
    return CaptureFormatError(f"{shown_path(url)}: {what} ({arrow_reason(error)})")


def _resolve(url: str) -> CaptureUrl:
    """``url`` with its file system; one line for an unsupported scheme or a file system out of reach."""
    scheme = _URL.match(url).group(1).lower()
    if scheme not in SCHEMES:
        raise CaptureFormatError(f"{shown_path(url)}: unsupported URL scheme {scheme!r} (tracekit reads "
                                 f"{', '.join(s + '://' for s in SCHEMES)} and local paths)")
    try:
        filesystem, path = _from_uri("s3" + url[len("s3a"):] if scheme == "s3a" else url)
    except (OSError, pa.ArrowException, ValueError) as error:
        raise _failed(url, f"cannot reach its {scheme} file system", error) from None
    return CaptureUrl(url.split("?", 1)[0].rstrip("/") or url, filesystem, path)


def _listing(url: CaptureUrl) -> dict[str, pafs.FileType]:
    """``{name: type}`` of the entries of directory ``url``."""
    try:
        infos = url.filesystem.get_file_info(pafs.FileSelector(url.fs_path))
    except (OSError, pa.ArrowException, ValueError) as error:
        raise _failed(url, "cannot list", error) from None
    return {info.base_name: info.type for info in infos}


def _type(url: CaptureUrl) -> pafs.FileType:
    try:
        return url.filesystem.get_file_info(url.fs_path).type
    except (OSError, pa.ArrowException, ValueError) as error:
        raise _failed(url, "cannot read", error) from None


def find_url_captures(url: str) -> list[CaptureUrl]:
    """The captures at or below ``url``, sorted (a capture's own directories are not searched); ``url``
    itself when it names none (opening it says why)."""
    root = _resolve(url)
    if _type(root) != pafs.FileType.Directory:
        return [root]
    found, queue = [], [root]
    while queue:
        directory = queue.pop()
        entries = _listing(directory)
        if entries.get(MANIFEST_NAME) == pafs.FileType.File:
            found.append(directory)
        else:
            queue.extend(directory / name for name, kind in sorted(entries.items(), reverse=True)
                         if kind == pafs.FileType.Directory)
    return sorted(found, key=lambda url: url.split("/")) or [root]  # as Paths sort: by part


def _open(url: CaptureUrl) -> BinaryIO:
    try:
        return url.filesystem.open_input_file(url.fs_path)
    except (OSError, pa.ArrowException, ValueError) as error:
        raise _failed(url, "cannot open", error) from None


def open_url_capture(url: str, families: Collection[str] | None = None, *, footers: bool = True) -> Capture:
    """Open and check the capture at ``url`` (a :class:`CaptureUrl` from :func:`find_url_captures`, or a URL),
    its families read as :func:`tracekit.capture.reader.open_capture` reads a local one's."""
    capture = url if isinstance(url, CaptureUrl) else _resolve(url)
    kind = _type(capture)
    if kind == pafs.FileType.NotFound:
        raise CaptureFormatError(f"{shown_path(capture)}: no such capture")
    if kind != pafs.FileType.Directory:
        raise CaptureFormatError(f"{shown_path(capture)}: not a tracekit capture (a capture is a NAME.tkcap directory)")
    entries = _listing(capture)
    if entries.get(MANIFEST_NAME) != pafs.FileType.File:
        raise CaptureFormatError(f"{shown_path(capture)}: " + (f"not a tracekit capture (no {MANIFEST_NAME})" if entries
                                                               else "empty directory, not a tracekit capture"))
    manifest_url = capture / MANIFEST_NAME
    try:
        with manifest_url.filesystem.open_input_stream(manifest_url.fs_path) as f:
            data = f.read(MAX_MANIFEST_BYTES + 1)
    except (OSError, pa.ArrowException, ValueError) as error:
        raise _failed(manifest_url, "unreadable manifest", error) from None
    manifest = check_manifest_bytes(data, capture)
    recording = manifest.get("status") == "recording"
    reads = family_reads(None) if recording else family_reads(families, footers, recorded_families(manifest))
    found = {}
    for name, kind in sorted(entries.items()):
        if kind == pafs.FileType.Directory and is_family_name(name):
            directory = capture / name
            family = read_family(directory, list(_listing(directory)), recording, reads(name), _open)
            if family is not None:
                found[name] = family
    return Capture(capture, manifest, found, opener=_open)


def write_url_file(url: CaptureUrl, data: bytes) -> None:
    """``data`` written as the file ``url`` (a capture's own file, as the stored verdicts) through its file
    system: under a hidden temporary name beside it, then moved over it; one line when that is refused."""
    tmp = url.fs_path.rsplit("/", 1)
    tmp = f"{tmp[0]}/.{tmp[1]}.tmp"
    try:
        with url.filesystem.open_output_stream(tmp) as f:
            f.write(data)
        url.filesystem.move(tmp, url.fs_path)
    except (OSError, pa.ArrowException, ValueError) as error:
        raise CaptureWriteError(f"{shown_path(url)}: cannot write ({arrow_reason(error)})") from None
