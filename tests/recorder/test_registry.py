"""The family registry: a plain mapping of ``--probes`` names to classes."""

from __future__ import annotations

import pytest

from tracekit.errors import UsageError
from tracekit.recorder.probe_family import ProbeFamily, RecordOptions
from tracekit.recorder.registry import FAMILIES, family_names, make_family


def test_every_name_is_its_family_s_own_name():
    assert family_names() == ["walk", "ioctl", "lock", "mmu", "stage2", "tdp"]
    for name, cls in FAMILIES.items():
        assert issubclass(cls, ProbeFamily) and cls.name == name


def test_make_family_builds_a_fresh_instance_with_the_options():
    options = RecordOptions(batch_events=16)
    first, second = make_family("walk", options), make_family("walk")
    assert first is not second and first.options is options
    assert second.options == RecordOptions()


def test_an_unknown_name_is_a_usage_error_listing_the_known_ones():
    with pytest.raises(UsageError, match=r"unknown probe family 'walks' \(known: walk, ioctl, lock, mmu, stage2, tdp\)"):
        make_family("walks")
