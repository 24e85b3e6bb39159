"""Synchronous data-parallel training on MPI (mpi4py): the same script runs as `python train.py`
or as `mpiexec -n 4 python train.py`.

Under mpiexec every process (a rank) holds the whole model. `fit` then:
- checks that every rank built the same model and optimizer (names, shapes, dtypes, settings),
  and copies rank 0's parameters, optimizer state and random state to the others, so every rank
  starts identical whatever its seed;
- gives each rank a disjoint shard of every epoch's shuffled order: rank r takes `perm[r::W]` of
  the first N - N mod W samples (the last N mod W of each epoch's order are left out, as with
  PyTorch's DistributedSampler(drop_last=True)). So W ranks at batch b visit, step by step, exactly
  the samples one process visits at batch W*b, and train the same network to round-off;
- averages the gradients over the ranks in a gradient hook (`AllReduce`: one flat buffer per
  dtype, in buckets), which a captured step records and replays with the step;
- sums the epoch's loss and accuracy over the ranks, so every rank sees the same record and
  callbacks (EarlyStopping) decide alike; only rank 0 shows progress and writes checkpoints;
- evaluates the validation set in shards (rank r takes rows r::W, every sample once) and sums the
  ranks' losses and counts, so the record is the whole set's mean, weighted by sample.

Without mpiexec (or with one process) the world is a single rank and nothing of this runs. A rank
that fails ends the whole job (MPI_Abort) instead of leaving the others waiting.

>>> import backprop as bp
>>> bp.distributed.world().size   # 1 without mpiexec
1
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from backprop.backend import get_rng_state, namespace_of, set_rng_state, to_numpy
from backprop.errors import ConfigError, MissingDependency

# set by the MPI launchers of MPICH (Hydra), Open MPI, Intel MPI and PMIx-based ones
_LAUNCHER_VARIABLES = ("PMI_SIZE", "PMI_RANK", "OMPI_COMM_WORLD_SIZE", "PMIX_RANK", "MPI_LOCALNRANKS")
BUCKET_BYTES = 25 << 20  # gradients are summed in pieces of at most this size (as PyTorch DDP's buckets)


@dataclass(frozen=True)
class World:
    """The processes of this job: `rank` of `size`; `comm` is mpi4py's communicator (None alone)."""

    comm: Any
    rank: int
    size: int
    local_rank: int

    @property
    def is_main(self) -> bool:
        return self.rank == 0


_world: World | None = None


def world() -> World:
    """This job's world, set up on first use: from MPI under mpiexec, else a single rank."""
    global _world
    if _world is None:
        _world = _connect()
    return _world


def launched() -> bool:
    """Whether an MPI launcher (mpiexec, mpirun, srun) started this process."""
    return any(name in os.environ for name in _LAUNCHER_VARIABLES)


def _connect() -> World:
    if not launched():
        return World(None, 0, 1, 0)
    try:
        from mpi4py import MPI
    except ImportError:
        raise MissingDependency(
            'this process was started by mpiexec, but mpi4py is not installed: pip install "backprop[mpi]"'
        ) from None
    comm = MPI.COMM_WORLD
    local_rank = comm.Split_type(MPI.COMM_TYPE_SHARED).Get_rank()
    result = World(comm, comm.Get_rank(), comm.Get_size(), local_rank)
    if result.size > 1:
        _abort_on_uncaught_errors(result)
    return result


def _abort_on_uncaught_errors(world: World) -> None:
    """An error no one catches on one rank ends every rank (the others would wait for it forever)."""
    previous = sys.excepthook

    def hook(kind, error, trace):
        sys.stderr.write(f"rank {world.rank} of {world.size} failed, ending the job: {kind.__name__}: {error}\n")
        sys.stderr.flush()  # the line first: the launcher may cut the rest when the job ends
        previous(kind, error, trace)
        sys.stderr.flush()
        time.sleep(0.2)  # time for the launcher to pass the traceback on
        world.comm.Abort(1)

    sys.excepthook = hook


def abort_if_running(code: int = 1) -> None:
    """End every rank of a job of several now (after an error this rank reported itself); nothing
    where MPI was never started."""
    if _world is not None and _world.size > 1:
        sys.stderr.flush()
        _world.comm.Abort(code)


# --- starting alike ---


def check_same_setup(model, optimizer) -> None:
    """Every rank built the same model (parameter names, shapes, dtypes) and optimizer (type and
    settings): a ConfigError on every rank naming the first rank that differs from rank 0."""
    current = world()
    if current.size == 1:
        return
    settings = {k: v for k, v in optimizer.state_dict()["hyper"].items() if k != "steps"}
    mine = (
        [(name, tuple(p.shape), str(p.dtype)) for name, p in model.named_parameters()],
        type(optimizer).__name__,
        sorted(settings.items()),
    )
    everyone = current.comm.allgather(mine)
    for rank, theirs in enumerate(everyone):
        for what, ours, other in zip(("model", "optimizer", "optimizer settings"), everyone[0], theirs, strict=True):
            if ours != other:
                raise ConfigError(f"rank {rank} built a different {what} than rank 0: {other} instead of {ours}")


def broadcast_state(model, optimizer=None) -> None:
    """Make every rank's parameters, optimizer state and random state rank 0's."""
    current = world()
    if current.size == 1:
        return
    weights = {name: np.ascontiguousarray(to_numpy(array)) for name, array in model.state_dict().items()}
    for array in weights.values():
        current.comm.Bcast(array, root=0)
    model.load_state_dict(weights)
    if optimizer is not None:
        optimizer.load_state_dict(current.comm.bcast(optimizer.state_dict(), root=0))
    set_rng_state(current.comm.bcast(get_rng_state(), root=0))


# --- averaging gradients ---


class AllReduce:
    """A gradient hook (`fit(..., gradient_hooks=[...])`, `TrainStep`): each gradient averaged over
    the ranks, as one flat buffer per dtype summed in buckets of at most BUCKET_BYTES. Inside a
    captured step the sum is one recorded call, replayed with the step (`backprop.trace.external`).
    Arrays of other backends go through host memory."""

    hyperparameters = ()

    def __init__(self, world: World | None = None):
        self.world = world or globals()["world"]()
        self.calls, self.seconds = 0, 0.0  # all-reduces so far and their time (copies included)
        self._buffers: dict = {}

    def __call__(self, grads: list) -> list:
        if self.world.size == 1:
            return grads
        from backprop.trace import external

        out = list(grads)
        for positions in _by_dtype(grads).values():
            parts = [grads[i] for i in positions]
            xp = namespace_of(parts[0])
            flat = xp.concat([xp.reshape(g, (-1,)) for g in parts])
            total = external(self._average, flat)
            start = 0
            for i, g in zip(positions, parts, strict=True):
                size = _size(g.shape)
                out[i] = xp.reshape(total[start : start + size], g.shape)
                start += size
        return out

    def _average(self, flat):
        """The ranks' mean of `flat` (a new array on its backend)."""
        began = time.perf_counter()
        result = self._host_average(flat)
        self.calls, self.seconds = self.calls + 1, self.seconds + time.perf_counter() - began
        return result

    def _host_average(self, flat):
        host = np.ascontiguousarray(to_numpy(flat))
        total = self._receiver(host)
        step = max(1, BUCKET_BYTES // max(1, host.itemsize))
        for start in range(0, host.size, step):
            self.world.comm.Allreduce(host[start : start + step], total[start : start + step])
        mean = total / self.world.size
        xp = namespace_of(flat)
        return mean if isinstance(flat, np.ndarray) else xp.asarray(mean, device=getattr(flat, "device", None))

    def _receiver(self, host):
        """The host buffer the sums arrive in, kept from step to step: a new one each step was
        fresh pages that MPI faulted in (1,900 page faults and +60% time per L step, measured)."""
        key = (host.dtype.str, host.size)
        if key not in self._buffers:
            self._buffers[key] = np.empty_like(host)
        return self._buffers[key]

    def reduce_sums(self, values: list[float]) -> list[float]:
        """Python numbers summed over the ranks (an epoch's loss, counts)."""
        if self.world.size == 1:
            return values
        host = np.asarray(values, dtype=np.float64)
        total = np.empty_like(host)
        self.world.comm.Allreduce(host, total)
        return total.tolist()


def _by_dtype(grads: list) -> dict:
    groups: dict = {}
    for i, g in enumerate(grads):
        if g is not None:
            groups.setdefault(str(g.dtype), []).append(i)
    return groups


def _size(shape) -> int:
    count = 1
    for extent in shape:
        count *= extent
    return count
