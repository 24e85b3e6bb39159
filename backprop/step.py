"""TrainStep: one training step as a callable, captured once and replayed.

A step clears the gradients, runs the model and the loss, backpropagates and updates the
parameters. `TrainStep(..., capture=False)` does exactly that each call. With `capture=True` (the
default), calls for one input shape go: the first runs eagerly (a warm-up: optimizer state
appears, labels are checked, and once the optimizer has state a second warm-up follows); the next
records the step: a CUDA graph on CuPy, a traced program (backprop.trace) elsewhere, compiled by
XLA on JAX; the one after replays the record and checks it once against an eager step. From then
on calls replay: no graph nodes, no module calls, and on a GPU no Python between kernels.

What a capture assumes, as torch.compile and CUDA graphs do: for inputs of one shape the step
makes the same array calls every time. The learning rate and Adam's bias corrections are passed
in on each call, so schedules work. The optimizer's other hyper-parameters, its state, the
parameters' shapes and dtypes and the model's train/eval mode are checked on each call: a change
captures again. A step that reads array values in Python or draws random numbers on the host
(Dropout in training mode) cannot be captured: TrainStep warns, says why, and runs eagerly.

On CuPy the arrays a replay returns (loss, outputs, gradients) are the graph's own buffers, which
the next call overwrites, as with torch.cuda.graph: copy them to keep them.

>>> import backprop as bp
>>> bp.manual_seed(0)
>>> x, y = bp.data.spirals(64)
>>> model = bp.nn.mlp([2, 16, 2], "tanh", dtype="float64")
>>> step = bp.TrainStep(model, bp.losses.cross_entropy, bp.optim.SGD(model.parameters(), lr=0.1))
>>> for _ in range(4):
...     loss, out = step(x, y)
>>> step.mode
'traced'
"""

from __future__ import annotations

import warnings

import numpy as np

from backprop.backend import get_rng_state, namespace_of, set_rng_state, to_numpy
from backprop.backends import backend_of
from backprop.tensor import Tensor
from backprop.trace import trace

MAX_CAPTURES = 8  # input shapes (and settings) captured per TrainStep; further ones run eagerly


class CaptureWarning(UserWarning):
    """A step could not be captured (or its replay did not match): it runs eagerly instead."""


class TrainStep:
    """`step(inputs, targets) -> (loss, outputs)`: one training step, as backend arrays.

    `mode` says how the last call ran: "eager", "traced", "jit" (JAX) or "cuda-graph" (CuPy).
    """

    def __init__(self, model, loss, optimizer, capture: bool = True):
        self.model, self.loss, self.optimizer, self.capture = model, loss, optimizer, capture
        params = {id(p): p for p in [*model.parameters(), *optimizer.params]}
        self.params = list(params.values())
        self.mode = "eager"
        self._warmed: set = set()
        self._captures: dict = {}

    def __call__(self, inputs, targets):
        inputs = inputs.data if isinstance(inputs, Tensor) else inputs
        targets = targets.data if isinstance(targets, Tensor) else targets
        if not self.capture:
            return self._eager(inputs, targets)
        state = self._state()
        key = self._key(inputs, targets, state)
        captured = self._captures.get(key)
        if captured is not None:
            return captured(inputs, targets, state) if captured.verified else self._verify(captured, inputs, targets)
        if key not in self._warmed or len(self._captures) >= MAX_CAPTURES:
            self._warmed.add(key)
            return self._eager(inputs, targets)
        return self._record(key, inputs, targets)

    # --- the step itself ---

    def _eager(self, x, y):
        self.mode = "eager"
        loss, out = self._backward(x, y)
        self.optimizer.step()
        return loss.data, out.data

    def _backward(self, x, y):
        """Gradients cleared, forward, loss, backward: the loss and the outputs (tensors)."""
        for p in self.params:
            p.grad = None
        out = self.model(Tensor(x))
        loss = self.loss(out, y)
        loss.backward()
        return loss, out

    def _body(self, *arrays):
        """The array work of a step, on given arrays: state, this step's numbers, inputs, targets.

        Returns the state after the step, the gradients, the loss and the outputs. The optimizer's
        Python-side bookkeeping (its step count, `numbers()`) happens outside, in the caller.
        """
        count = self._state_count()
        *numbers, x, y = arrays[count:]
        self._set_state(arrays[:count])
        table = _NumberTable(self.optimizer, self.params).bind(numbers)
        loss, out = self._backward(x, y)
        self.optimizer.update(lambda p: table[p.dtype])
        return [*self._state(), *(p.grad for p in self.params), loss.data, out.data]

    # --- state: the arrays a step reads and writes back (parameters, then optimizer state) ---

    def _state(self) -> list:
        arrays = [p.data for p in self.params]
        for state in self.optimizer.state:
            arrays.extend(state.values())
        return arrays

    def _state_count(self) -> int:
        return len(self.params) + sum(len(state) for state in self.optimizer.state)

    def _set_state(self, arrays, same_namespace: bool = False) -> None:
        it = iter(arrays)
        for p in self.params:
            p.data = next(it)
            if not same_namespace:  # stand-ins inside a trace, real arrays outside
                p.xp = namespace_of(p.data)
        for state in self.optimizer.state:
            for name in state:
                state[name] = next(it)

    def _write(self, outputs) -> None:
        """Put a step's outputs (state after the step, then gradients) back in place."""
        count = self._state_count()
        self._set_state(outputs[:count])
        for p, grad in zip(self.params, outputs[count : count + len(self.params)], strict=True):
            p.grad = grad

    def _snapshot(self):
        """Copies of everything a step changes (and the host random state), to undo a step."""
        params = [_copy(p.data) for p in self.params]
        state = [{name: _copy(a) for name, a in s.items()} for s in self.optimizer.state]
        return params, state, self.optimizer.steps, get_rng_state()

    def _restore(self, snapshot) -> None:
        params, state, steps, rng = snapshot
        self._set_state([*params, *(a for s in state for a in s.values())])
        for own, saved in zip(self.optimizer.state, state, strict=True):
            own.clear()
            own.update(saved)
        self.optimizer.steps = steps
        set_rng_state(rng)
        for p in self.params:
            p.grad = None

    def _key(self, x, y, state: list) -> tuple:
        """What a capture depends on besides array values; a new key is captured anew.

        `state` is self._state(): the shapes and dtypes of the parameters and optimizer state (and
        the state's names) are part of the key.
        """
        opt = self.optimizer
        return (
            x.shape, x.dtype, y.shape, y.dtype, self.model.training,
            tuple([getattr(opt, name) for name in opt.hyperparameters]),
            tuple([tuple(names) for names in opt.state]),
            tuple([(a.shape, a.dtype) for a in state]),
        )  # fmt: skip

    # --- capture, verify, give up ---

    def _record(self, key, x, y):
        """Capture the step for `key` (this call's step happens on the way); eager if it cannot."""
        snapshot = self._snapshot()
        entry = backend_of(namespace_of(self.params[0].data))
        try:
            if entry.capture == "cuda-graph":
                captured, results = _Graph.record(self, x, y, entry.capture_graph)
            else:
                captured, results = _TracedProgram.record(self, x, y)
        except Exception as error:  # whatever stopped it, the step must still happen, once
            self._restore(snapshot)
            self._give_up(f"the step could not be captured: {error}")
            return self._eager(x, y)
        self._captures[key] = captured
        return results

    def _verify(self, captured, x, y):
        """Replay once, then undo it and run the step eagerly: both must agree (once per capture)."""
        snapshot = self._snapshot()
        try:
            replayed = captured(x, y)  # JAX compiles here; a graph launches for the second time
        except Exception as error:
            self._restore(snapshot)
            self._give_up(f"its replay failed: {error}")
            return self._eager(x, y)
        replayed = [*self._state(), *(p.grad for p in self.params), *replayed]
        self._restore(snapshot)
        loss, out = self._eager(x, y)
        eager = [*self._state(), *(p.grad for p in self.params), loss, out]
        mismatch = _first_mismatch(replayed, eager)
        if mismatch is not None:
            self._give_up(f"its replay differs from the eager step ({mismatch})")
        captured.verified = True
        return loss, out

    def _give_up(self, reason: str) -> None:
        self.capture = False
        self._captures.clear()
        warnings.warn(
            f"TrainStep runs eagerly: {reason}. Steps that read array values in Python, draw host random "
            "numbers (Dropout) or use arrays that are not parameters, optimizer state or the batch cannot "
            "be captured; pass capture=False to silence this.",
            CaptureWarning,
            stacklevel=3,
        )


class _NumberTable:
    """The optimizer's per-step numbers as 0-d arrays, one set per parameter dtype."""

    def __init__(self, optimizer, params):
        self.optimizer = optimizer
        self.names = sorted(optimizer.numbers())
        self.dtypes = list({p.data.dtype: p for p in params})
        self.xp, self.device = namespace_of(params[0].data), params[0].device
        self._values, self._arrays = None, None

    def values(self, numbers: dict) -> list:
        """The numbers in the order of `arrays`: each name, for each dtype."""
        return [numbers[name] for _ in self.dtypes for name in self.names]

    def arrays(self, numbers: dict) -> list:
        """This step's numbers as arrays (the last ones again when nothing changed)."""
        values = self.values(numbers)
        if values != self._values:
            dtypes = [dt for dt in self.dtypes for _ in self.names]
            self._arrays = [
                self.xp.asarray(v, dtype=dt, device=self.device) for v, dt in zip(values, dtypes, strict=True)
            ]
            self._values = values
        return self._arrays

    def bind(self, arrays) -> dict:
        """{dtype: {name: array}} for the optimizer's update."""
        it = iter(arrays)
        return {dt: {name: next(it) for name in self.names} for dt in self.dtypes}


class _TracedProgram:
    """The step as a traced program (backprop.trace): replays skip the engine's Python. On JAX the
    program is a pure function, and XLA compiles it whole (mode "jit")."""

    def __init__(self, step: TrainStep, program, numbers: _NumberTable, mode: str):
        self.step, self.program, self.numbers, self.mode, self.verified = step, program, numbers, mode, False

    @classmethod
    def record(cls, step: TrainStep, x, y):
        """Trace this call's step (it happens, for real, on the way); the capture and (loss, outputs)."""
        numbers = _NumberTable(step.optimizer, step.params)
        step.optimizer.steps += 1
        inputs = [*step._state(), *numbers.arrays(step.optimizer.numbers()), x, y]
        program, results = trace(step._body, inputs)
        step._write(results)  # the traced call was a real step: keep it
        step.mode = "traced"
        entry = backend_of(numbers.xp)
        return cls(step, entry.compile(program), numbers, entry.capture), (results[-2], results[-1])

    def __call__(self, x, y, state: list | None = None):
        step, optimizer = self.step, self.step.optimizer
        optimizer.steps += 1
        for p in step.params:  # the old gradients go before the new ones are made, as in an eager step
            p.grad = None
        state = step._state() if state is None else state
        outputs = self.program(*state, *self.numbers.arrays(optimizer.numbers()), x, y)
        written = iter(outputs)  # the layout of _body's result, written back without slicing
        for p in step.params:
            p.data = next(written)
        for state in optimizer.state:
            for name in state:
                state[name] = next(written)
        for p in step.params:
            p.grad = next(written)
        step.mode = self.mode
        return outputs[-2], outputs[-1]


class _Graph:
    """The step as a device graph (a CUDA graph on CuPy): one launch replays every kernel of it.

    A graph reads and writes fixed addresses, so the batch is copied into buffers of its own, the
    optimizer state that a step rebinds is copied back into the arrays it read (inside the graph),
    and the gradients, loss and outputs are the graph's own arrays, overwritten by each launch.
    `capture(function, inputs)` records `function(*inputs)` without running it and returns
    (launch, outputs, keep): the backend entry's `capture_graph`.
    """

    mode = "cuda-graph"

    @classmethod
    def record(cls, step: TrainStep, x, y, capture):
        """Capture the step, then launch the graph for this call's step; the capture and (loss, outputs)."""
        graph = cls(step, x, y, capture)
        return graph, graph._launch(x, y, copy_batch=False)

    def __init__(self, step: TrainStep, x, y, capture):
        self.step, self.verified = step, False
        self.numbers = _NumberTable(step.optimizer, step.params)
        step.optimizer.steps += 1
        self.buffers = step._state()  # the graph's parameters and optimizer state
        self.x, self.y = _copy(x), _copy(y)
        self.number_buffers = [_copy(a) for a in self.numbers.arrays(step.optimizer.numbers())]

        def body(*arrays):
            outputs = step._body(*arrays)
            for before, after in zip(arrays[: len(self.buffers)], outputs, strict=False):
                if after is not before:  # rebound (optimizer state): write it where the next launch reads
                    before[...] = after
            return outputs

        self.launch, outputs, self.keep = capture(body, [*self.buffers, *self.number_buffers, self.x, self.y])
        count = len(self.buffers)
        self.grads, self.loss, self.out = outputs[count:-2], outputs[-2], outputs[-1]
        # nothing ran yet: the state the capture rebound holds no values until a launch copies them
        # into the buffers, so the buffers are the state from now on
        step._set_state(self.buffers)

    def __call__(self, x, y, state: list | None = None):
        self.step.optimizer.steps += 1
        return self._launch(x, y, state)

    def _launch(self, x, y, current: list | None = None, copy_batch: bool = True):
        step = self.step
        current = step._state() if current is None else current
        if any(
            a is not b for a, b in zip(current, self.buffers, strict=True)
        ):  # rebound since (load_state_dict, a check)
            for buffer, array in zip(self.buffers, current, strict=True):
                if array is not buffer:
                    buffer[...] = array
            step._set_state(self.buffers, same_namespace=True)
        if copy_batch:
            self.x[...] = x
            self.y[...] = y
        for buffer, value in zip(self.number_buffers, self.numbers.values(step.optimizer.numbers()), strict=True):
            buffer[...] = value
        self.launch()
        for p, grad in zip(step.params, self.grads, strict=True):
            p.grad = grad
        step.mode = self.mode
        return self.loss, self.out


def _copy(array):
    return namespace_of(array).asarray(array, copy=True)


def _first_mismatch(replayed: list, eager: list) -> str | None:
    """A description of the first pair of arrays that differ beyond rounding, or None."""
    for i, (a, b) in enumerate(zip(replayed, eager, strict=True)):
        if a is None or b is None:
            if (a is None) != (b is None):
                return f"array {i} is missing on one side"
            continue
        a, b = to_numpy(a), to_numpy(b)
        rtol = 1e-9 if b.dtype == np.float64 else 1e-4
        a, b = a.astype(np.float64), b.astype(np.float64)
        scale = max(float(np.max(np.abs(b), initial=0.0)), 1e-30)
        if a.shape != b.shape or not float(np.max(np.abs(a - b), initial=0.0)) <= rtol * scale:
            return f"array {i} of shape {b.shape}"
    return None
