"""Mini-batches of arrays of the current backend.

The dataset is moved to the backend once; each epoch shuffles indices (not data) with the
seeded host generator, and a batch is `take` of those indices, or a plain slice without shuffling.
"""

from __future__ import annotations

import numpy as np

from backprop.backend import get_backend, host_rng
from backprop.errors import ConfigError, positive_int


class Batches:
    """Iterate over (inputs, targets) mini-batches; each `iter()` is one epoch.

    >>> import numpy as np, backprop as bp
    >>> batches = bp.data.Batches(np.zeros((10, 3)), np.arange(10), batch_size=4, shuffle=False)
    >>> [tuple(y.shape) for _, y in batches], len(batches)
    ([(4,), (4,), (2,)], 3)
    """

    def __init__(self, inputs, targets, batch_size: int, shuffle: bool = True, drop_last: bool = False, dtype=None,
                 shard: tuple[int, int] = (0, 1)):  # fmt: skip
        """Empty data, a batch size that is not a positive integer, or one that leaves no batch with
        `drop_last`, are ConfigErrors here rather than an epoch without batches.

        `shard=(r, W)`: rank r of W takes `order[r::W]` of each epoch's order, after the last
        N mod W samples of that order are left out (backprop.distributed)."""
        inputs, targets = np.asarray(inputs), np.asarray(targets)
        if inputs.ndim == 0 or targets.ndim == 0:
            raise ConfigError("inputs and targets must be arrays with a row per sample, not scalars")
        if len(inputs) != len(targets):
            raise ConfigError(f"{len(inputs)} inputs but {len(targets)} targets")
        if len(inputs) == 0:
            raise ConfigError("no samples: inputs and targets are empty")
        batch_size = positive_int("batch_size", batch_size)  # a plain int: NumPy's small ones wrap around
        rank, ranks = shard
        if not 0 <= rank < ranks or len(inputs) < ranks:
            raise ConfigError(f"shard {rank} of {ranks} of {len(inputs)} samples: each rank needs one at least")
        per_rank = len(inputs) // ranks
        if drop_last and batch_size > per_rank:
            raise ConfigError(f"drop_last with batch_size {batch_size} > {per_rank} samples leaves no batch")
        if dtype is not None:
            inputs = inputs.astype(dtype)
        backend = get_backend()
        self.xp = backend.xp
        self.inputs = backend.asarray(np.ascontiguousarray(inputs))
        self.targets = backend.asarray(np.ascontiguousarray(targets))
        self.total, self.rank, self.ranks = len(inputs), rank, ranks
        self.n = len(inputs) // ranks  # this rank's samples in each epoch
        self.batch_size, self.shuffle, self.drop_last = batch_size, shuffle, drop_last

    def __len__(self) -> int:
        whole = self.n // self.batch_size
        return whole if self.drop_last or self.n % self.batch_size == 0 else whole + 1

    def __iter__(self):
        order = self._order()
        for start in range(0, len(self) * self.batch_size, self.batch_size):
            yield self._rows(order, start, min(start + self.batch_size, self.n))

    def groups(self, k: int):
        """One epoch as groups of `k` batches stacked (a leading axis of k: what
        `TrainStep.run_stacked` takes), each yielded as (inputs, targets, True); the batches that
        make no whole group of full batches (the last, smaller one) come one by one, as
        (inputs, targets, False). The same batches, in the same order and from the same random
        numbers, as iterating: a group is taken in one piece, or, where a subclass defines its
        own `__iter__`, stacked from the batches that gives.

        >>> import numpy as np, backprop as bp
        >>> batches = bp.data.Batches(np.zeros((10, 3)), np.arange(10), batch_size=3, shuffle=False)
        >>> [(tuple(x.shape), stacked) for x, _, stacked in batches.groups(2)]
        [((2, 3, 3), True), ((3, 3), False), ((1, 3), False)]
        """
        k = positive_int("k", k)
        if type(self).__iter__ is not Batches.__iter__:
            yield from self._stacked_groups(k)
            return
        order, size = self._order(), self.batch_size
        span = k * size
        whole = self.n // size // k * span  # the samples of whole groups
        for start in range(0, whole, span):
            inputs, targets = self._rows(order, start, start + span)
            yield self._split(inputs, k), self._split(targets, k), True
        for start in range(whole, len(self) * size, size):
            yield *self._rows(order, start, min(start + size, self.n)), False

    def _stacked_groups(self, k: int):
        """`groups` of what `iter(self)` gives: runs of k alike batches, stacked."""
        xp, run = self.xp, []
        for inputs, targets in self:
            if run and (inputs.shape, targets.shape) != (run[0][0].shape, run[0][1].shape):
                yield from ((*batch, False) for batch in run)
                run = []
            run.append((inputs, targets))
            if len(run) == k:
                yield xp.stack([x for x, _ in run]), xp.stack([y for _, y in run]), True
                run = []
        yield from ((*batch, False) for batch in run)

    def _order(self):
        """This epoch's sample indices on the device, or None for the samples in order (no
        shuffle, one rank). Draws the epoch's permutation from the host generator."""
        if not self.shuffle and self.ranks == 1:
            return None
        perm = host_rng().permutation(self.total) if self.shuffle else np.arange(self.total)
        mine = perm[: self.n * self.ranks][self.rank :: self.ranks]
        return self.xp.asarray(mine, device=self.inputs.device)

    def _rows(self, order, start: int, stop: int) -> tuple:
        """(inputs, targets) of the epoch's samples start..stop."""
        if order is None:
            return self.inputs[start:stop, ...], self.targets[start:stop, ...]
        idx = order[start:stop]
        return self.xp.take(self.inputs, idx, axis=0), self.xp.take(self.targets, idx, axis=0)

    def _split(self, rows, k: int):
        """`rows` as k batches: a leading axis of k."""
        return self.xp.reshape(rows, (k, rows.shape[0] // k, *rows.shape[1:]))
