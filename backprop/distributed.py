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
  dtype, in buckets), which a captured step records and replays with the step; CuPy arrays are
  summed by NCCL on the GPU (one GPU per rank: local rank i takes GPU i), on the step's stream,
  so a CUDA graph of the step holds the all-reduce; other backends' arrays go through host memory;
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

from backprop.backend import backend_of, get_rng_state, namespace_of, set_rng_state, to_numpy
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
    weights = {name: np.array(to_numpy(array), order="C") for name, array in model.state_dict().items()}  # writable
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
    CuPy arrays are summed by NCCL; other backends' arrays go through host memory (inside a
    jax.jit step, through an ordered io_callback). `calls` and `seconds` count what went through
    the host and NCCL calls launched from Python (not those inside a CUDA graph)."""

    hyperparameters = ()

    def __init__(self, world: World | None = None):
        self.world = world or globals()["world"]()
        self.calls, self.seconds = 0, 0.0  # host all-reduces so far and their time (copies included)
        self._buffers: dict = {}
        self._nccl = None  # cupy.cuda.nccl.NcclCommunicator, made on first use

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
        """The ranks' mean of `flat` (a new array on its backend): through NCCL for CuPy arrays
        where CuPy has it, else through host memory and MPI."""
        return self._nccl_average(flat) if _nccl_for(flat) else self._host_average(flat)

    def _count(self, began: float) -> None:
        self.calls, self.seconds = self.calls + 1, self.seconds + time.perf_counter() - began

    def _host_average(self, flat):
        if _capturing_on_gpu(flat):
            raise RuntimeError(
                "the gradients are all-reduced through host memory (this CuPy has no NCCL), "
                "which a CUDA graph cannot hold"
            )
        return backend_of(namespace_of(flat)).host_callback(self._mpi_mean, flat)

    def _mpi_mean(self, host: np.ndarray) -> np.ndarray:
        began = time.perf_counter()
        host = np.ascontiguousarray(host)
        total = self._receiver(host)
        step = max(1, BUCKET_BYTES // max(1, host.itemsize))
        for start in range(0, host.size, step):
            self.world.comm.Allreduce(host[start : start + step], total[start : start + step])
        mean = total / self.world.size
        self._count(began)
        return mean

    def _nccl_average(self, flat):
        """NCCL's sum on the GPU, on the current stream (so a CUDA graph of the step captures it),
        divided by the number of ranks; the communicator is made on the first (eager) call."""
        import cupy
        from cupy.cuda import nccl

        if self._nccl is None:
            unique = nccl.get_unique_id() if self.world.is_main else None
            self._nccl = nccl.NcclCommunicator(self.world.size, self.world.comm.bcast(unique, root=0), self.world.rank)
        kind = _NCCL_TYPES.get(str(flat.dtype))
        if kind is None:
            raise TypeError(f"NCCL cannot all-reduce {flat.dtype} gradients (it takes {', '.join(_NCCL_TYPES)})")
        began = time.perf_counter()
        total = cupy.empty_like(flat)
        stream = cupy.cuda.get_current_stream().ptr
        self._nccl.allReduce(flat.data.ptr, total.data.ptr, flat.size, getattr(nccl, kind), nccl.NCCL_SUM, stream)
        total /= self.world.size
        self._count(began)  # the launch only (NCCL runs asynchronously); replays of a CUDA graph are not seen
        return total

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


_NCCL_TYPES = {"float16": "NCCL_FLOAT16", "float32": "NCCL_FLOAT32", "float64": "NCCL_FLOAT64"}


def _is_cupy(array) -> bool:
    return type(array).__module__.split(".")[0] == "cupy"


def _nccl_for(array) -> bool:
    """Whether `array` is a CuPy array and CuPy was built with NCCL."""
    if not _is_cupy(array):
        return False
    try:
        from cupy.cuda import nccl
    except ImportError:  # a CuPy built without it
        return False
    return bool(getattr(nccl, "available", False))


def _capturing_on_gpu(array) -> bool:
    if not _is_cupy(array):
        return False
    import cupy

    return cupy.cuda.get_current_stream().is_capturing()


def local_device(entry):
    """The GPU this rank uses when none is named (BACKPROP_DEVICE, set_backend's device): under
    mpiexec, local rank i of a host takes its GPU i mod the GPUs there, one GPU per rank as NCCL
    needs. None for a single process or a backend off the GPU."""
    if not entry.on_gpu or not launched() or world().size == 1:
        return None
    devices = entry.devices()
    return devices[world().local_rank % len(devices)] if devices else None


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
