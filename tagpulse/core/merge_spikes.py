"""Stage 2 with the spike detector: final windows feed the detector as they close (pure).

The merge stage finalises each (tag, platform, window) exactly once and in
window order per key, which is what the detector needs; its baselines are
part of the partition's state and travel in the same changelog delta, so a
restart neither forgets a baseline nor scores a window twice.
"""
from __future__ import annotations

import struct
from operator import itemgetter

import orjson

from tagpulse.core.spikes import SpikeConfig, SpikeDetector
from tagpulse.core.stage2 import CLOSE_STEP, MergeState, Stage2Result
from tagpulse.core.windows import ROW_AUTHORS, ROW_PLATFORM, ROW_POSTS, ROW_SIZE, ROW_START, ROW_TAG

_LEN = struct.Struct(">I")


class MergeWithSpikes(MergeState):
    def __init__(self, partition: int, upstream_partitions: int, specs, spike_config: SpikeConfig | None = None,
                 close_step_s: int | None = CLOSE_STEP):
        super().__init__(partition, upstream_partitions, specs, close_step_s)
        self.detector = SpikeDetector(spike_config or SpikeConfig())
        self._sizes = frozenset(size for size, _ in self.detector.config.windows)
        self._touched: set[tuple[str, str, int]] = set()

    def _finalise(self, result: Stage2Result) -> None:
        first = len(result.rows)
        super()._finalise(result)
        # Most rows are of sizes the detector does not score (the 24 overlapping day windows
        # of every tag): skip them before any per-row work.
        sizes = self._sizes
        rows = result.rows[first:]
        if not sizes.intersection(map(itemgetter(ROW_SIZE), rows)):
            return  # a close step's rows are of one size: a step of day windows is skipped whole
        observe, touched, spikes = self.detector.observe_final, self._touched, result.spikes
        for row in rows:
            size = row[ROW_SIZE]
            if size not in sizes:
                continue
            tag, platform = row[ROW_TAG], row[ROW_PLATFORM]
            spike = observe(tag, platform, size, row[ROW_START], row[ROW_POSTS], row[ROW_AUTHORS])
            touched.add((tag, platform, size))
            if spike is not None:
                spikes.append(spike)

    def delta(self) -> bytes:
        merge = super().delta()
        detector = self.detector
        keys = [[tag, platform, size, detector.key_state(tag, platform, size)]
                for tag, platform, size in self._touched]
        self._touched = set()
        spikes = orjson.dumps({"started": detector.started, "keys": keys})
        # Length-prefixed, so the merge delta's own encoding is opaque here.
        return _LEN.pack(len(merge)) + merge + spikes

    def snapshot(self) -> bytes:
        merge = super().snapshot()
        detector = self.detector
        self._touched = set()
        spikes = orjson.dumps({"started": detector.started, "all": True,
                               "keys": [[*key, state.to_list()] for key, state in detector.keys.items()]})
        return _LEN.pack(len(merge)) + merge + spikes

    def apply_delta(self, raw: bytes) -> bool:
        (length,) = _LEN.unpack_from(raw)
        snapshot = super().apply_delta(raw[4:4 + length])
        body = orjson.loads(raw[4 + length:])
        if body.get("all"):  # a snapshot's: every key's baseline
            self.detector.keys = {}
        self.detector.started = body["started"]
        for tag, platform, size, state in body["keys"]:
            self.detector.set_key_state(tag, platform, size, state)
        return snapshot
