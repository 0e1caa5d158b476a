"""The Debian mirror the host's own apt sources name.

:func:`debian_mirror` returns the ``TRACEKIT_DEBIAN_MIRROR`` override when set, else the first
enabled ``deb`` source in ``/etc/apt/sources.list``, ``sources.list.d/*.list`` (one-line format) and
``sources.list.d/*.sources`` (deb822) whose suite is a Debian release (``bookworm``,
``trixie-updates``, ``stable``, ...; not ``*-security``) and whose components include ``main``.
Unreadable, binary or malformed files and entries are skipped; files that apt itself ignores (other
extensions) are never read. No Debian source at all raises :class:`tracekit.errors.LabError`
naming the override.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from tracekit.errors import LabError

__all__ = ["AptSource", "MIRROR_ENV", "debian_mirror", "parse_one_line", "parse_deb822", "deb822_fields", "host_sources"]

MIRROR_ENV = "TRACEKIT_DEBIAN_MIRROR"
#: Debian release codenames and aliases (suites also appear with -updates, -backports, -proposed-updates).
_DEBIAN_SUITES = frozenset(
    "buzz rex bo hamm slink potato woody sarge etch lenny squeeze wheezy jessie stretch buster bullseye bookworm "
    "trixie forky duke sid experimental stable testing unstable oldstable oldoldstable".split()
)
_SCHEMES = ("http://", "https://", "mirror+http://", "mirror+https://", "ftp://", "file:/")


@dataclass(frozen=True)
class AptSource:
    """One ``deb`` entry: its archive URI, suites and components."""

    uri: str
    suites: tuple[str, ...]
    components: tuple[str, ...]

    def is_debian_main(self) -> bool:
        releases = [suite for suite in self.suites if not suite.endswith("-security")]
        debian = any(suite.split("-", 1)[0] in _DEBIAN_SUITES for suite in releases)
        return debian and "main" in self.components and self.uri.startswith(_SCHEMES)


def parse_one_line(text: str) -> list[AptSource]:
    """The ``deb`` entries of a one-line-format file (``deb [options] URI SUITE COMPONENT...``)."""
    found = []
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        if not line.startswith("deb") or line.startswith("deb-src"):
            continue
        line = re.sub(r"\[[^\]]*\]", " ", line[3:], count=1)
        words = line.split()
        if len(words) >= 3:
            found.append(AptSource(words[0].rstrip("/"), (words[1],), tuple(words[2:])))
    return found


def parse_deb822(text: str) -> list[AptSource]:
    """The enabled ``deb`` entries of a deb822 ``.sources`` file (one entry per URI of each stanza)."""
    found = []
    for stanza in re.split(r"\n\s*\n", text):
        fields = {key.lower(): value for key, value in deb822_fields(stanza).items()}
        if "deb" not in fields.get("types", "").split() or fields.get("enabled", "yes").lower() == "no":
            continue
        suites = tuple(fields.get("suites", "").split())
        components = tuple(fields.get("components", "").split())
        for uri in fields.get("uris", "").split():
            if suites:
                found.append(AptSource(uri.rstrip("/"), suites, components))
    return found


def deb822_fields(stanza: str) -> dict[str, str]:
    """The fields of one deb822 stanza (apt sources, Debian ``Packages``): continuation lines joined by a
    space, ``#`` comment lines and lines without a colon skipped."""
    fields: dict[str, str] = {}
    key = None
    for line in stanza.splitlines():
        if line.startswith("#") or not line.strip():
            continue
        if line[0] in " \t" and key:
            fields[key] += " " + line.strip()
        elif ":" in line:
            key, value = line.split(":", 1)
            key = key.strip()
            fields[key] = value.strip()
    return fields


def host_sources(etc: Path = Path("/etc/apt")) -> list[AptSource]:
    """Every ``deb`` entry of the host's apt sources under ``etc``, in apt's reading order."""
    files = [etc / "sources.list"]
    parts = etc / "sources.list.d"
    if parts.is_dir():
        files += sorted(p for p in parts.iterdir() if p.suffix in (".list", ".sources"))
    found = []
    for path in files:
        try:
            text = path.read_bytes().decode("utf-8")
        except (OSError, UnicodeDecodeError):
            continue
        found += parse_deb822(text) if path.suffix == ".sources" else parse_one_line(text)
    return found


def debian_mirror(etc: Path = Path("/etc/apt")) -> str:
    """The Debian archive to fetch lab packages from (see the module docstring)."""
    override = os.environ.get(MIRROR_ENV, "").strip()
    if override:
        if not override.startswith(_SCHEMES):
            raise LabError(f"{MIRROR_ENV}={override!r} is not a mirror URL (http://, https:// or file:/...)")
        return override.rstrip("/")
    for source in host_sources(etc):
        if source.is_debian_main():
            return source.uri
    raise LabError(f"the host's apt sources ({etc}/sources.list, sources.list.d) name no Debian archive with a main "
                   f"component; set {MIRROR_ENV} to the URL of a Debian mirror")  # fmt: skip
