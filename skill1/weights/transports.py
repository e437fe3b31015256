"""One object per weight-sync transport (`learner.weight_sync`), one interface for the driver:

    open()         once, when the fleet starts (a process group, the GPU map)
    push(version)  start learner → every sampler: (sampler acks, other refs); each ack is the version that
                   sampler then holds (`skill1.loop.steps.finish_push` waits and checks)
    heal()         after a sampler restart, before the next push

Both schedules, a resume and a restarted sampler's rejoin go through it: the rollout worker is told at
every push (object store) or once (the others) where a restarted sampler gets the current weights.
The sampler side of each transport is one method of `skill1.rollout.host.SamplerHost`.
"""

from __future__ import annotations

import ray

from skill1.weights.wire import LOOPBACK, ipc_sources


class WeightTransport:
    name = ""

    def __init__(self, fleet, bucket_bytes: int):
        """`fleet`: the `skill1.runtime.Fleet` whose learner ranks and samplers it connects."""
        self.fleet, self.bucket_bytes, self.layout = fleet, bucket_bytes, None

    def open(self) -> None:
        self.layout = ray.get(self.fleet.learner.weights_layout.remote())
        # a restarted sampler asks the learner for its weights (the object store hands it the newest packet)
        self.fleet.worker.set_weights_source.remote([None], self.fleet.learner)

    def push(self, version: int) -> tuple[list, list]:
        raise NotImplementedError

    def heal(self) -> None:
        """A sampler was restarted since the last push."""


class ObjectStore(WeightTransport):
    """One packet put in the object store, one `load_weights` call per sampler."""

    name = "object_store"

    def open(self) -> None:
        """Nothing to set up: each push carries names and shapes."""

    def push(self, version: int) -> tuple[list, list]:
        packet, others = self.fleet.read_weights("get_weights")
        self.fleet.worker.set_weights_source.remote([packet])  # what a restarted sampler loads to rejoin
        return [s.load_weights.remote(packet) for s in self.fleet.samplers], others


class Collective(WeightTransport):
    """Learner rank 0 broadcasts bucket by bucket to a process group of itself and the samplers (gloo on CPU,
    NCCL on GPU); each sampler fills one buffer in place (`SamplerHost.receive_weights`)."""

    name = "collective"

    def open(self) -> None:
        super().open()
        fleet = self.fleet
        host, port = ray.get(fleet.learner.node_address.remote())
        host = LOOPBACK if fleet.single_machine() else host
        world, kind = len(fleet.samplers) + 1, "nccl" if fleet.on_gpu else "gloo"
        ray.get([fleet.learner.open_channel.remote(host, port, world, kind, self.bucket_bytes),
                 *[s.open_channel.remote(host, port, i + 1, world, kind, self.bucket_bytes, self.layout)
                   for i, s in enumerate(fleet.samplers)]])

    def push(self, version: int) -> tuple[list, list]:
        sent, others = self.fleet.read_weights("broadcast_weights")
        return [s.receive_weights.remote(version) for s in self.fleet.samplers], [sent, *others]

    def heal(self) -> None:
        """The group lacks the restarted rank: form it again."""
        self.open()


class CudaIpc(WeightTransport):
    """Each sampler maps the weights buffer of the learner rank on its own GPU (`SamplerHost.load_ipc`)."""

    name = "cuda_ipc"

    def open(self) -> None:
        super().open()
        fleet = self.fleet
        self.source = ipc_sources(ray.get([s.gpu_key.remote() for s in fleet.samplers]),
                                  ray.get([a.gpu_key.remote() for a in fleet.learners]))

    def push(self, version: int) -> tuple[list, list]:
        fleet = self.fleet
        ranks = range(len(fleet.learners)) if fleet.all_ranks_read_weights else sorted(set(self.source))
        handles = {r: fleet.learners[r].cuda_ipc_weights.remote() for r in ranks}
        acks = [s.load_ipc.remote(version, handles[r], self.layout) for s, r in zip(fleet.samplers, self.source)]
        return acks, [h for r, h in handles.items() if r not in self.source]


TRANSPORTS = {t.name: t for t in (ObjectStore, Collective, CudaIpc)}
