"""A family whose BPF program the kernel refuses is left out, named with the verifier's words, and the others
load: BccBackend against a stand-in for bcc that refuses the programs holding a chosen family's source."""

from __future__ import annotations

import os

import pytest

from tracekit.errors import ProbeLoadError
from tracekit.recorder.backend_bcc import BccBackend
from tracekit.recorder.probe_family import ProbeFamily

#: The tail of 6.1's verifier log for the mmu family before tk_bpf.h kept the lost-batch loop's counter.
VERIFIER_TAIL = """188: (61) r1 = *(u32 *)(r6 +0)
invalid access to map value, value_size=8720 off=8740 size=4
R6 min value is outside of the allowed memory range
processed 4582 insns (limit 1000000) max_states_per_insn 24 total_states 119 peak_states 61 mark_read 25
"""


class Family(ProbeFamily):
    def __init__(self, name: str):
        self.name = name
        super().__init__()

    def bpf_source(self) -> str:
        return f"/* source of {self.name} */\n"

    def cflags(self, available, target_tgid):
        return []

    def tables(self):
        return {}

    def rings(self):
        return []

    def decode(self, map_name, records):
        return {}


class RefusingBcc:
    """``bcc.BPF`` refusing any program whose text holds a source in ``refuse`` (or, with ``together``, any
    program of more than one family), writing a verifier log on stderr as bcc does."""

    def __init__(self, refuse: set[str], together: bool = False):
        self.refuse, self.together, self.loads = refuse, together, []
        outer = self

        class BPF:
            def __init__(self, text: bytes, cflags: list[str]):
                names = [n for n in ("walk", "mmu", "tdp") if f"source of {n} " in text.decode()]
                outer.loads.append(names)
                if set(names) & outer.refuse or (outer.together and len(names) > 1):
                    os.write(2, VERIFIER_TAIL.encode())
                    raise Exception("Failed to load BPF program b'tracepoint__kvm__kvm_age_hva': Permission denied")

            def cleanup(self):
                pass

        self.BPF = BPF


def _backend(*names: str) -> BccBackend:
    return BccBackend([(Family(n), []) for n in names], 1234)


def test_refused_family_is_named_and_the_others_load():
    backend, bcc = _backend("walk", "mmu", "tdp"), RefusingBcc({"mmu"})
    backend._load_what_the_kernel_accepts(bcc)
    assert [f.name for f, _ in backend.families] == ["walk", "tdp"]
    assert bcc.loads == [["walk", "mmu", "tdp"], ["walk"], ["mmu"], ["tdp"], ["walk", "tdp"]]
    (refused,) = backend.refused
    assert refused["probe"] == "family:mmu" and refused["family"] == "mmu"
    assert refused["reason"] == ("the kernel refused its BPF program: Failed to load BPF program "
                                 "b'tracepoint__kvm__kvm_age_hva': Permission denied (invalid access to map value, "
                                 "value_size=8720 off=8740 size=4; R6 min value is outside of the allowed memory "
                                 "range)")  # fmt: skip


def test_nothing_left_out_when_every_family_loads():
    backend, bcc = _backend("walk", "mmu"), RefusingBcc(set())
    backend._load_what_the_kernel_accepts(bcc)
    assert backend.refused == [] and bcc.loads == [["walk", "mmu"]]


@pytest.mark.parametrize("bcc", [RefusingBcc({"walk", "mmu"}), RefusingBcc(set(), together=True)],
                         ids=["every-family-refused", "refused-only-together"])
def test_the_whole_refusal_when_leaving_families_out_cannot_help(bcc):
    backend = _backend("walk", "mmu")
    with pytest.raises(ProbeLoadError, match="Permission denied") as caught:
        backend._load_what_the_kernel_accepts(bcc)
    assert "invalid access to map value" in caught.value.detail
    assert [f.name for f, _ in backend.families] == ["walk", "mmu"] and backend.refused == []


def test_a_single_family_is_not_loaded_twice():
    backend, bcc = _backend("mmu"), RefusingBcc({"mmu"})
    with pytest.raises(ProbeLoadError):
        backend._load_what_the_kernel_accepts(bcc)
    assert bcc.loads == [["mmu"]]
