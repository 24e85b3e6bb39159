"""Replaying a recorded training step: as a traced program (compiled by `jax.jit` on JAX) or as
a device graph (a CUDA graph on CuPy). Both replay `backprop.step.StepFunction.body`, laid out by
its `Layout`, and use only the step function's public methods; `TrainStep` decides when to record,
verify and replay.
"""

from __future__ import annotations

import operator
import warnings
from itertools import starmap

from backprop.backend import copy_array, dtype_name, namespace_of
from backprop.optimize import optimize
from backprop.trace import Program, _vars_in, trace


class CaptureWarning(UserWarning):
    """A step could not be captured (or its replay did not match): it runs eagerly instead."""


class NumberTable:
    """A step's numbers (lr, bias corrections) as 0-d arrays, one set per parameter dtype."""

    def __init__(self, numbers: dict, params, xp):
        self.names = sorted(numbers)
        self.dtypes = list({p.data.dtype: p for p in params})
        self.xp, self.device = xp, params[0].device
        self._numbers, self._arrays = None, None  # the last numbers given, and their arrays
        self._steps, self._stacked = None, None  # the same for `stacked`

    def __len__(self) -> int:
        return len(self.names) * len(self.dtypes)

    def values(self, numbers: dict) -> list:
        """The numbers in the order of `arrays`: each name, for each dtype."""
        return [numbers[name] for _ in self.dtypes for name in self.names]

    def arrays(self, numbers: dict) -> list:
        """This step's numbers as arrays (the last ones again when nothing changed)."""
        if numbers != self._numbers:
            self._arrays = self._as_arrays(self.values(numbers))
            self._numbers = dict(numbers) if _plain([numbers]) else None
        return self._arrays

    def stacked(self, steps: list) -> list:
        """The numbers of several steps (a dict each), as `arrays` gives them with a leading axis:
        one entry per step (the last ones again when nothing changed: a constant lr)."""
        if steps != self._steps:
            self._stacked = self._as_arrays([list(column) for column in zip(*map(self.values, steps), strict=True)])
            self._steps = [dict(numbers) for numbers in steps] if _plain(steps) else None
        return self._stacked

    def _as_arrays(self, values: list) -> list:
        dtypes = [dtype for dtype in self.dtypes for _ in self.names]
        xp, device = self.xp, self.device
        return [xp.asarray(v, dtype=dtype, device=device) for v, dtype in zip(values, dtypes, strict=True)]

    def bind(self, arrays) -> dict:
        """{dtype: {name: array}} for the optimizer's update."""
        if len(arrays) != len(self):
            raise ValueError(f"{len(arrays)} step numbers for a table of {len(self)}")
        it = iter(arrays)
        return {dtype: {name: next(it) for name in self.names} for dtype in self.dtypes}


def _plain(steps: list) -> bool:
    """Whether every number in `steps` (dicts) is a Python number: arrays made from them are
    taken again while the numbers compare equal (not from arrays: one may change in place)."""
    return all(isinstance(value, (float, int)) for numbers in steps for value in numbers.values())


class Returned:
    """The donated state the last replay returned (the library's own arrays) and where it lies in
    the state (`donated`), shared by the replays of one TrainStep: a replay of one batch shape that
    takes over from another's copies nothing."""

    __slots__ = ("donated", "arrays")

    def __init__(self):
        self.donated, self.arrays = range(0), []


class TracedReplay:
    """The step as a traced program (backprop.trace), optimized (backprop.optimize): replays skip
    the engine's Python. On JAX the program is a pure function, and XLA compiles it whole (mode
    "jit"). `source` is the Program (print it to read the step); `program` what a replay calls.

    The state inputs at `donated` are the replay's own: the optimizer's state, which the NumPy
    fast path updates in place, and where the entry `donates` (JAX) the whole state, which the
    compiled step consumes, reusing its memory for the new state. A replay gives the program only
    arrays that the previous replay returned there (of any batch shape: the step shares one
    `returned_by` among its replays): any other (after a load, an eager step, an array of yours)
    is copied first.
    """

    recording_mode = "traced"  # the call that records runs the step through the tracer

    def __init__(self, function, source: Program, layout, numbers: NumberTable, mode: str, compile, donated: range):
        self.function, self.source, self.layout, self.numbers = function, source, layout, numbers
        self.donated = donated
        self.program = compile(source, donated)
        self.mode, self.verified = mode, False
        self.returned_by = Returned()

    @classmethod
    def record(cls, function, x, y, entry, optimized: bool = True):
        """Trace this call's step (it happens, for real, on the way); the replay and (loss, outputs).
        `optimized`: run backprop.optimize's passes on the record (the optimizer's state arrays,
        which the step replaces, may then be updated in place)."""
        numbers_now = function.optimizer.start_step()
        numbers = NumberTable(numbers_now, function.params, function.xp)
        inexact = [dtype for dtype in numbers.dtypes if not entry.exact_numbers(dtype)]
        if inexact:  # the caller takes the step eagerly and says why
            raise TypeError(
                f"its parameters are {dtype_name(inexact[0])}, where {entry.name} applies the learning rate as a "
                "replay's 0-d array otherwise than as the eager step's Python float"
            )
        layout = function.layout(len(numbers))
        inputs = layout.inputs(function.state(), numbers.arrays(numbers_now), x, y)
        program, results = trace(function.body(layout, numbers), inputs)
        mixed = _numbers_meeting_other_dtypes(program.trace, range(layout.state, layout.state + len(numbers)))
        if mixed is not None:  # the caller undoes the step, takes it eagerly and says why
            raise TypeError(mixed)
        loss, out = function.take_outputs(layout, results)  # the traced call was a real step: keep it
        for p in function.params:  # real arrays again, not stand-ins
            p.xp = namespace_of(p.data)
        donated = _donated(program.trace, layout, entry.donates)
        if optimized:
            try:
                program = Program(optimize(program.trace, entry.fast_path(), donated=donated))
            except Exception as error:  # a pass that cannot handle this step: replay it as recorded
                message = f"TrainStep replays the step as recorded, not optimized ({type(error).__name__}: {error})"
                warnings.warn(message, CaptureWarning, stacklevel=4)
        mode = "jit" if entry.capture == "jit" else "traced"
        return cls(function, program, layout, numbers, mode, entry.compile, donated), (loss, out)

    def __call__(self, x, y, state: list | None = None):
        function, layout = self.function, self.layout
        numbers = function.optimizer.start_step()
        if layout.grads:  # the old gradients go before the new ones are made, as in an eager step
            for p in function.params:
                p.grad = None
        state = function.state() if state is None else state
        if self.donated:
            state = self.owned(state, x, y)
        return _run_and_take(self.program, layout.inputs(state, self.numbers.arrays(numbers), x, y), self._take)

    def owned(self, state: list, x, y) -> list:
        """`state`, with a copy of each donated array that the last replay (of this step, its
        K-step `ScanReplay`s, or another sharing `returned_by`) did not return there, or that is
        the batch `x` or `y` too (a layer fed its own weight: donated, the batch would be gone)."""
        start, stop = self.donated.start, self.donated.stop
        last = self.returned_by
        given, returned = state[start:stop], last.arrays if last.donated == self.donated else []
        batch = start == 0 and any(a is x or a is y for a in given)  # only parameters can be a batch
        if not batch and len(given) == len(returned) and all(map(operator.is_, given, returned)):
            return state
        returned = returned if len(returned) == len(given) else [None] * len(given)
        copies = [
            a if a is r and a is not x and a is not y else copy_array(a) for a, r in zip(given, returned, strict=True)
        ]
        return [*state[:start], *copies, *state[stop:]]

    def returned(self, state: list) -> None:
        """Record `state` (laid out as the step's) as what the last replay returned."""
        last = self.returned_by
        last.donated, last.arrays = self.donated, state[self.donated.start : self.donated.stop]

    def _take(self, outputs) -> tuple:
        self.returned(outputs)  # the outputs begin with the state
        return self.function.take_outputs(self.layout, outputs)


def _numbers_meeting_other_dtypes(record, numbers: range) -> str | None:
    """Where the record computes a step number (a 0-d array input: lr, a bias correction), or a
    value made of numbers alone, with an array of another dtype: the eager step's Python float
    computes there in that array's dtype (NumPy: float64 for a float64 gradient of float32
    parameters), a replay with the number rounded to its own. None where nothing does."""
    derived = {record.inputs[i] for i in numbers}
    for call in record.calls:
        operands = list(_vars_in((call.args, call.kwargs)))
        ours = [v for v in operands if v in derived]
        others = [record.specs[v] for v in operands if v not in derived and v in record.specs]
        if ours and not others:
            derived.update(call.outputs)
            continue
        dtype = record.specs[ours[0]].dtype if ours else None
        wider = next((spec.dtype for spec in others if spec.dtype != dtype), None) if ours else None
        if wider is not None:
            return (f"a step number (the learning rate, ...) of dtype {dtype_name(dtype)} meets arrays of "
                    f"{dtype_name(wider)}, where the eager step's Python float computes in {dtype_name(wider)}: "
                    "give the batch the parameters' dtype")  # fmt: skip
    return None


def _donated(trace, layout, donates: bool) -> range:
    """The state inputs a replay owns: the optimizer's state (each step returns new arrays, which
    the NumPy fast path may update in place); where the entry `donates`, the whole state, unless
    the step calls out of the array library (an external call, a host callback such as an MPI
    all-reduce): that can fail after the compiled step consumed its inputs, so nothing is donated."""
    if not donates:
        return range(layout.params, layout.state)
    return range(0) if any(call.external for call in trace.calls) else range(0, layout.state)


def _run_and_take(program, inputs, take):
    """`take(program(*inputs))`, so that an interrupt which arrives during the call, and is raised
    once it returns, still finds its results taken: the step ran, and may have consumed donated
    inputs. The call is made from C (starmap), so `extend` keeps its results before the interpreter
    can raise."""
    results: list = []
    try:
        results.extend(starmap(program, (inputs,)))
        return take(results[0])
    except BaseException:
        if results:
            take(results[0])
        raise


class ScanReplay:
    """K steps of a verified traced replay as one compiled call: the backend entry's
    `compile_steps` (JAX: `jax.jit` of a `lax.scan` over the step's program). The batches come
    stacked (a leading axis of K), so do the losses and outputs; the gradients are the last step's.

    Where the single replay owns the whole state (JAX donates it), so does this call: it consumes
    the state it is given, and both hand a compiled call only arrays that one of them returned
    (any other is copied first), so that K-step and single calls can follow each other freely.
    """

    mode = "jit-scan"

    def __init__(self, replay: TracedReplay, key, k: int, compile_steps):
        self.replay, self.key, self.k, self.verified = replay, key, k, False
        layout, program = replay.layout, replay.source
        gradients = layout.split_outputs(program.trace.outputs)[1]
        self._has_grad = [g is not None for g in gradients]  # a frozen parameter's is None
        self._zeros = None
        self.donates = replay.donated == range(layout.state)

        def step(state, numbers, x, y):
            state, grads, loss, out = layout.split_outputs(program(*state, *numbers, x, y))
            return list(state), list(grads), loss, out

        self.program = compile_steps(step, donate_state=self.donates)

    def __call__(self, xs, ys, state: list | None = None):
        replay = self.replay
        function = replay.function
        numbers = [function.optimizer.start_step() for _ in range(self.k)]
        for p in function.params:
            p.grad = None
        state = function.state() if state is None else state
        if self.donates:
            state = replay.owned(state, xs, ys)
        if self._zeros is None:  # the gradients the scan carries in (each step makes its own)
            xp = function.xp
            self._zeros = [
                xp.zeros_like(p.data) if has else None for p, has in zip(function.params, self._has_grad, strict=True)
            ]
        inputs = (state, self._zeros, replay.numbers.stacked(numbers), xs, ys)
        return _run_and_take(self.program, inputs, self._take)

    def _take(self, results) -> tuple:
        if self.donates:
            self.replay.returned(results[0])
        layout = self.replay.layout
        return self.replay.function.take_outputs(layout, layout.outputs(*results))


class GraphReplay:
    """The step as a device graph (a CUDA graph on CuPy): one launch replays every kernel of it.

    A graph reads and writes fixed addresses, so the batch is copied into buffers of its own, the
    optimizer state that a step rebinds is copied back into the arrays it read (inside the graph),
    and the gradients, loss and outputs are the graph's own arrays, overwritten by each launch.
    `capture(function, inputs)` records `function(*inputs)` without running it and returns
    (launch, outputs, keep): the backend entry's `capture_graph`.
    """

    mode = recording_mode = "cuda-graph"  # the call that records launches the graph it captured

    @classmethod
    def record(cls, function, x, y, capture):
        """Capture the step, then launch the graph for this call's step; the replay and (loss, outputs)."""
        numbers = function.optimizer.start_step()
        graph = cls(function, numbers, x, y, capture)
        return graph, graph._launch(x, y, numbers, copy_batch=False)

    def __init__(self, function, numbers_now: dict, x, y, capture):
        self.function, self.verified = function, False
        self.numbers = NumberTable(numbers_now, function.params, function.xp)
        self.layout = layout = function.layout(len(self.numbers))
        self.buffers = function.state()  # the graph's parameters and optimizer state
        self.x, self.y = copy_array(x), copy_array(y)
        self.number_buffers = [copy_array(a) for a in self.numbers.arrays(numbers_now)]
        body = function.body(layout, self.numbers)

        def copied_back(*arrays):
            state_in = layout.split_inputs(arrays)[0]  # what the graph reads (not self.buffers: the
            outputs = body(*arrays)  # capture may hand the body stand-ins for them)
            state_out = layout.split_outputs(outputs)[0]
            for before, after in zip(state_in, state_out, strict=True):
                if after is not before:  # rebound (optimizer state): write it where the next launch reads
                    before[...] = after
            return outputs

        inputs = layout.inputs(self.buffers, self.number_buffers, self.x, self.y)
        self.launch, outputs, self.keep = capture(copied_back, inputs)
        _, self.grads, self.loss, self.out = layout.split_outputs(outputs)
        # nothing ran yet: the state the capture rebound holds no values until a launch copies them
        # into the buffers, so the buffers are the state from now on
        function.load_state(self.buffers, xp=function.xp)

    def __call__(self, x, y, state: list | None = None):
        return self._launch(x, y, self.function.optimizer.start_step(), state)

    def _launch(self, x, y, numbers: dict, current: list | None = None, copy_batch: bool = True):
        function = self.function
        current = function.state() if current is None else current
        if any(a is not b for a, b in zip(current, self.buffers, strict=True)):  # rebound since (a load, a check)
            for buffer, array in zip(self.buffers, current, strict=True):
                if array is not buffer:
                    buffer[...] = array
            function.load_state(self.buffers)
        if copy_batch:
            self.x[...] = x
            self.y[...] = y
        for buffer, value in zip(self.number_buffers, self.numbers.values(numbers), strict=True):
            buffer[...] = value
        self.launch()
        function.set_grads(self.grads)
        return self.loss, self.out
