"""The BPF ring-buffer batch reader against a ring laid out by hand in a memfd (no kernel BPF).

The fake reproduces the mapping the kernel gives a ring-buffer map: consumer page, producer page,
then the data area twice (the kernel maps it twice so records never wrap; here both copies are
written).
"""

from __future__ import annotations

import mmap
import os
import struct
import time

import numpy as np
import pytest

from tracekit.errors import RecorderError
from tracekit.recorder.ringbuf import BUSY_BIT, DISCARD_BIT, RingReader, record_stride

PAGE = mmap.PAGESIZE
DTYPE = np.dtype([("a", "<u8"), ("b", "<u4"), ("c", "<u4"), ("d", "<u8")])  # 24 bytes -> stride 32
DATA = 4 * PAGE


class FakeRing:
    def __init__(self, data_size: int = DATA):
        self.size = data_size
        self.fd = os.memfd_create("fake-ring")
        os.ftruncate(self.fd, 2 * PAGE + 2 * data_size)
        self.map = mmap.mmap(self.fd, 2 * PAGE + 2 * data_size)
        self.producer = 0

    @property
    def consumer(self) -> int:
        return struct.unpack_from("<Q", self.map, 0)[0]

    def put(self, a: int, *, flags: int = 0, length: int = DTYPE.itemsize) -> None:
        record = np.zeros(1, DTYPE)
        record["a"], record["b"], record["c"], record["d"] = a, a + 1, a + 2, a * 3
        blob = struct.pack("<II", length | flags, 0) + record.tobytes()
        blob += bytes(record_stride(DTYPE.itemsize) - len(blob))
        for copy in (0, self.size):  # both mappings of the data area
            start = 2 * PAGE + copy + (self.producer & (self.size - 1))
            end = min(start + len(blob), 2 * PAGE + 2 * self.size)
            self.map[start:end] = blob[: end - start]
        if (self.producer & (self.size - 1)) + len(blob) > self.size:  # wrapped part, first copy
            over = (self.producer & (self.size - 1)) + len(blob) - self.size
            self.map[2 * PAGE:2 * PAGE + over] = blob[len(blob) - over:]
        self.producer += len(blob)
        struct.pack_into("<Q", self.map, PAGE, self.producer)

    def commit(self, position: int) -> None:
        """Clear the BUSY bit of the record starting at byte ``position``."""
        for copy in (0, self.size):
            offset = 2 * PAGE + copy + (position & (self.size - 1))
            word = struct.unpack_from("<I", self.map, offset)[0]
            struct.pack_into("<I", self.map, offset, word & ~BUSY_BIT)


@pytest.fixture
def ring():
    fake = FakeRing()
    yield fake
    fake.map.close()
    os.close(fake.fd)


def test_reads_committed_records_and_advances_consumer(ring):
    for i in range(5):
        ring.put(i)
    with RingReader(ring.fd, DATA, DTYPE) as reader:
        batch = reader.drain()
        assert list(batch["a"]) == [0, 1, 2, 3, 4] and list(batch["d"]) == [0, 3, 6, 9, 12]
        assert ring.consumer == 5 * 32
        assert len(reader.drain()) == 0


def test_busy_record_ends_the_batch_until_committed(ring):
    ring.put(1)
    ring.put(2, flags=BUSY_BIT)
    ring.put(3)
    with RingReader(ring.fd, DATA, DTYPE) as reader:
        assert list(reader.drain()["a"]) == [1]
        assert ring.consumer == 32
        ring.commit(32)
        assert list(reader.drain()["a"]) == [2, 3]


def test_discarded_records_are_skipped_but_consumed(ring):
    ring.put(1)
    ring.put(2, flags=DISCARD_BIT)
    ring.put(3)
    with RingReader(ring.fd, DATA, DTYPE) as reader:
        assert list(reader.drain()["a"]) == [1, 3]
        assert ring.consumer == 96


def test_wraparound_is_read_contiguously(ring):
    per_ring = DATA // 32
    with RingReader(ring.fd, DATA, DTYPE) as reader:
        for i in range(per_ring - 2):
            ring.put(i)
        assert len(reader.drain()) == per_ring - 2
        for i in range(100, 106):  # crosses the end of the data area
            ring.put(i)
        assert list(reader.drain()["a"]) == list(range(100, 106))
        assert reader.records_read == per_ring - 2 + 6


def test_max_batch_limits_one_drain(ring):
    for i in range(10):
        ring.put(i)
    with RingReader(ring.fd, DATA, DTYPE, max_batch=4) as reader:
        assert [len(reader.drain()) for _ in range(4)] == [4, 4, 2, 0]


def test_foreign_record_size_raises(ring):
    ring.put(1, length=16)
    with RingReader(ring.fd, DATA, DTYPE) as reader, pytest.raises(RecorderError, match="16 bytes"):
        reader.drain()


def test_size_must_be_a_power_of_two(ring):
    with pytest.raises(RecorderError, match="power of two"):
        RingReader(ring.fd, 3 * PAGE, DTYPE)


def test_consumer_position_is_written_in_one_store(ring):
    """A process reading the consumer position while the reader publishes new ones only ever sees values
    the reader wrote: never 0 or a torn mix (the kernel fails reservations when it reads 0 there).
    ``struct.pack_into`` fails this: it zero-fills the 8 bytes before writing them."""
    start = 0x0123_4567_89AB_CD00
    with RingReader(ring.fd, DATA, DTYPE) as reader:
        reader.store_consumer(start)
        rd, wr = os.pipe()
        child = os.fork()
        if child == 0:  # the observer: single 8-byte loads for 0.4 s
            view = np.frombuffer(ring.map, np.uint64, count=1)
            low, until = start, time.monotonic() + 0.4
            while time.monotonic() < until:
                low = min(low, int(view.min()), *(int(view[0]) for _ in range(100)))
            os.write(wr, struct.pack("<Q", low))
            os._exit(0)
        os.close(wr)
        position, until = start, time.monotonic() + 0.4
        while time.monotonic() < until:
            for _ in range(1000):
                position += 8
                reader.store_consumer(position)
        os.waitpid(child, 0)
        lowest = struct.unpack("<Q", os.read(rd, 8))[0]
        os.close(rd)
    assert lowest >= start


def test_drained_records_are_copies_not_views_of_the_ring(ring):
    """A single record is a contiguous slice of the ring: the reader must still copy it, since the producer
    overwrites the space once the consumer position moves past it."""
    ring.put(7)
    with RingReader(ring.fd, DATA, DTYPE) as reader:
        batch = reader.drain()
        assert not np.shares_memory(batch, reader._data)
        ring.map[2 * PAGE:2 * PAGE + 2 * DATA] = bytes(2 * DATA)  # the producer reuses the space
        assert list(batch["a"]) == [7] and list(batch["d"]) == [21]
