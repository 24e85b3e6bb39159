"""TrainStep: one training step as a callable, captured once and replayed.

The step protocol, which every path below follows (eager, traced, jit, CUDA graph):

1. the optimizer counts the step and gives its numbers (`start_step()`: lr, bias corrections);
   an eager step counts once backward and the hooks have succeeded, and a replay that fails is
   undone, so a step that raises is never counted;
2. gradients are cleared; forward, loss, backward;
3. the gradient hooks run, in order, on the list of gradients (`hook(grads) -> grads`): this is
   where a data-parallel all-reduce or gradient clipping (`bp.optim.ClipGradNorm`) plugs in;
   `.grad` then holds what they returned (see below for the numbers a hook reads);
4. the optimizer updates the parameters from those gradients (`update(numbers_of)`).

The arrays a step reads are its state (the parameters, then the optimizer's state arrays), the
step's numbers, and the batch; it returns the state after the step, the gradients, the loss and
the outputs. `StepFunction` holds that protocol, and `Layout` says where each part sits in the
flat lists a replay takes and returns.

`TrainStep(..., capture=False)` runs the protocol eagerly on every call. With `capture=True` (the
default), calls for one input shape go: the first runs eagerly (a warm-up: optimizer state
appears, labels are checked, and once the optimizer has state a second warm-up follows); the next
records the step as the backend entry says: a CUDA graph on CuPy, a traced program
(backprop.trace) elsewhere, compiled by XLA on JAX; the one after replays the record and checks it
once against an eager step: bit for bit where replays run the library's own calls on the host
(NumPy, PyTorch on the CPU, array_api_strict), to rounding elsewhere (JAX, a GPU).
From then on calls replay: no graph nodes, no module calls, and on a GPU no Python between
kernels.

What a capture assumes, as torch.compile and CUDA graphs do: for inputs of one shape the step
makes the same array calls every time. The learning rate and Adam's bias corrections are passed
in on each call, so schedules work. Everything else that can change the step is guarded, for
well under a microsecond a call: the batch's shapes and dtypes; the model's structure (modules,
each one's train/eval mode and settings such as `negative_slope`, the layers of a Sequential,
which parameters require a gradient); the optimizer's hyper-parameters, its state names, and the
shapes and dtypes of the parameters and state (checked when backprop.changes moves, a
`requires_grad` flag flips, or a state array is replaced). A change captures again (and a frozen
parameter stops moving, as in an eager step).

What no guard can see, as jax.jit cannot: a Python value that the loss, a hook or a module reads
from outside the model (a global, a closure), and in-place changes to your own lists or dicts
of modules or settings (assign the attribute again, or use a Sequential). A loss that is a
`bp.nn.Module` is guarded as the model is. A loss or gradient hook that reads
a number that changes names it in a `hyperparameters` tuple, as optimizers do: its value then
joins the guard, and a change captures again. Replays do not check label ranges (that would read
values every step): `fit` checks every label of a dataset once, before training. A step that
reads array values in Python or draws random numbers on the host (Dropout in training mode)
cannot be captured: TrainStep warns, says why, and runs eagerly. A batch given as Python lists
runs eagerly (give arrays to capture it).

On CuPy the arrays a replay returns (loss, outputs, gradients) are the graph's own buffers, which
the next call overwrites, as with torch.cuda.graph: copy them to keep them. A replay updates the
parameters, and on NumPy the optimizer's state, in place (as PyTorch's optimizers do): a replay
that raises part-way (an interrupt, a floating-point error under `np.errstate(all="raise")`) is
not counted as a step, but may leave them part-updated. On JAX a replay donates the state to XLA
(as a `jax.jit` step with `donate_argnums` does): the parameter and optimizer-state arrays the
last replay returned are consumed by the next one, so an array taken from a parameter between
two replays is deleted by the second (copy it to keep it: `bp.to_numpy`); arrays that the last
replay did not return (a load, an eager step, an array of yours), or that are the batch too, are
copied first, never consumed, and a step that calls out of the array library (a host callback:
an MPI all-reduce) donates nothing, since such a call can fail after XLA consumed its inputs.
A call of K steps (`run_many`, `run_stacked`) donates in the same way, and a replay of either
kind takes what the other returned. An interrupt that arrives once the compiled step has run
leaves its results as the state, counted.

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

import operator
import warnings

import numpy as np
from array_api_compat import device

from backprop import changes
from backprop.backend import copy_array, get_rng_state, namespace_of, put_back, set_rng_state, to_numpy
from backprop.backends import backend_of
from backprop.nn import Module, structure, structure_difference
from backprop.replay import CaptureWarning, GraphReplay, NumberTable, Returned, ScanReplay, TracedReplay
from backprop.tensor import Tensor, is_grad_enabled, leaf_gradients, unscaled_nodes

MAX_CAPTURES = 8  # input shapes (and settings) captured per TrainStep; further ones run eagerly
MAX_REPLANS = 4  # plans made anew without a replay in between, before a step stops capturing


class Layout:
    """Where each part of a step sits in the flat lists a replay takes and returns:

    inputs   [*state, *numbers, x, y]            state = [*parameters, *optimizer state]
    outputs  [*state, *gradients, loss, out]     one gradient (or None) per parameter

    Without `grads` the outputs hold no gradients (a step that does not keep them): `outputs`
    leaves them out and `split_outputs` gives None for each.
    """

    def __init__(self, params: int, optimizer_state: int, numbers: int, grads: bool = True):
        self.params, self.optimizer_state, self.numbers = params, optimizer_state, numbers
        self.state = params + optimizer_state
        self.grads = params if grads else 0  # gradients among the outputs

    def inputs(self, state: list, numbers: list, x, y) -> list:
        if len(state) != self.state or len(numbers) != self.numbers:
            _check_count("state arrays", state, self.state)
            _check_count("step numbers", numbers, self.numbers)
        return [*state, *numbers, x, y]

    def split_inputs(self, arrays) -> tuple:
        """(state, numbers, x, y) of a list made by `inputs`."""
        _check_count("step inputs", arrays, self.state + self.numbers + 2)
        return arrays[: self.state], arrays[self.state : self.state + self.numbers], arrays[-2], arrays[-1]

    def outputs(self, state: list, grads: list, loss, out) -> list:
        _check_count("state arrays", state, self.state)
        _check_count("gradients", grads, self.params)
        return [*state, *grads, loss, out] if self.grads else [*state, loss, out]

    def split_outputs(self, arrays) -> tuple:
        """(state, gradients, loss, out) of a list made by `outputs`."""
        state, grads = self.state, self.grads
        if len(arrays) != state + grads + 2:
            _check_count("step outputs", arrays, state + grads + 2)
        gradients = arrays[state : state + grads] if grads else [None] * self.params
        return arrays[:state], gradients, arrays[-2], arrays[-1]


def _check_count(what: str, arrays, expected: int) -> None:
    if len(arrays) != expected:
        raise ValueError(f"a step layout expects {expected} {what}, got {len(arrays)}")


class StepFunction:
    """The step protocol for one model, loss, optimizer and list of gradient hooks, on arrays.

    `params` are the model's parameters and any other parameters the optimizer holds, each once:
    a step gives gradients to them only (as Keras's `train_step` to its trainable variables; a
    tensor outside both gets none, in an eager step as in a replay). Without `keep_grads` a step
    leaves no gradients behind (`.grad` is None after it).
    """

    def __init__(self, model, loss, optimizer, gradient_hooks=(), keep_grads: bool = True):
        self.model, self.loss, self.optimizer = model, loss, optimizer
        self.gradient_hooks, self.keep_grads = list(gradient_hooks), keep_grads
        # a loss or hook that names the Python numbers it reads in `hyperparameters`
        self._with_numbers = [f for f in (loss, *self.gradient_hooks) if getattr(f, "hyperparameters", ())]
        self.params = list({id(p): p for p in [*model.parameters(), *optimizer.params]}.values())
        if not self.params:
            raise ValueError(f"{type(model).__name__} has no parameters to train")
        self.xp = namespace_of(self.params[0].data)
        self._wide_dtypes = (self.xp.float32, self.xp.float64)  # see _lr_upstream
        self._lr_made = None  # (lr, the 0-d array of it an eager step started backward from last)
        self.installed: list | None = None  # the state arrays a replay or `load_state` put in last

    # --- the state a step reads and writes back ---

    def state(self) -> list:
        """The parameters' arrays, then the optimizer's state arrays."""
        arrays = [p.data for p in self.params]
        arrays += self.optimizer.state_arrays()
        return arrays

    def load_state(self, state: list, xp=None) -> None:
        """Make `state` (laid out as `state()`) the current one; `xp`, when given, is the namespace
        of its arrays (a trace's stand-ins, or the real one again after a trace)."""
        params = self.params
        if len(state) < len(params):
            raise ValueError(f"{len(state)} state arrays for a step with {len(params)} parameters")
        for i, p in enumerate(params):
            p.data = state[i]
            if xp is not None:
                p.xp = xp
        self.optimizer.load_state_arrays(state[len(params) :])
        self.installed = state

    def grads(self) -> list:
        return [p.grad for p in self.params]

    def set_grads(self, grads) -> None:
        params = self.params
        if len(grads) != len(params):
            raise ValueError(f"{len(grads)} gradients for a step with {len(params)} parameters")
        for i, p in enumerate(params):
            p.grad = grads[i]

    def take_outputs(self, layout: Layout, outputs) -> tuple:
        """Make a replay's outputs (laid out by `layout`) the current state and gradients; its
        (loss, outputs)."""
        state, grads, loss, out = layout.split_outputs(outputs)
        if layout.grads:
            for p, array, grad in zip(self.params, state, grads, strict=False):  # state: then the optimizer's
                p.data, p.grad = array, grad
        else:
            for p, array in zip(self.params, state, strict=False):
                p.data = array
                p.grad = None
        if layout.optimizer_state:
            self.optimizer.load_state_arrays(state[layout.params :])
        self.installed = state
        return loss, out

    def layout(self, numbers: int) -> Layout:
        return Layout(len(self.params), len(self.optimizer.state_arrays()), numbers, self.keep_grads)

    def snapshot(self):
        """Copies of everything a step changes (and the host random state), for `restore`."""
        params = [(p.data, copy_array(p.data)) for p in self.params]
        return params, self.optimizer.snapshot(), get_rng_state()

    def restore(self, snapshot) -> None:
        """Undo the steps since `snapshot`: parameters (the same arrays again, where they can be
        written back in place), optimizer state and count, random state."""
        params, optimizer, rng = snapshot
        for p, (original, saved) in zip(self.params, params, strict=True):
            array = put_back(original, saved)
            p.data, p.xp, p.grad = array, namespace_of(array), None
        self.optimizer.restore(optimizer)
        set_rng_state(rng)

    # --- the step ---

    def run(self, x, y, numbers_of=None):
        """Steps 2 to 4 of the protocol on the current state: the loss and outputs (tensors).
        Without `numbers_of` (an eager step), step 1 happens just before the update."""
        for p in self.params:
            p.grad = None
        unscaled = unscaled_nodes()
        out = self.model(Tensor(x))
        loss = self.loss(out, y)
        lr = self._lr_upstream(loss, numbers_of, unscaled)
        if lr is None:
            self.set_grads(leaf_gradients(loss, self.params))
            if self.gradient_hooks:
                self._run_hooks()
        else:  # already times lr, in the optimizer's order, and seen by no one (not even as a .grad)
            grads = leaf_gradients(loss, self.optimizer.params, lr, hand_over=False)
        if numbers_of is None:
            numbers = self.optimizer.start_step()
            numbers_of = lambda p: numbers
        if lr is None:
            self.optimizer.update(numbers_of)
        else:
            self.optimizer.update(numbers_of, grads, scaled=True)
        return loss, out

    def _lr_upstream(self, loss: Tensor, numbers_of, unscaled: int):
        """The learning rate as the loss's upstream gradient where that computes the same step, or
        None (the usual 1).

        backprop's ops are linear in their upstream gradient, so starting backward from lr gives
        every gradient already scaled: where the update is `p -= lr * grad` (plain SGD) and
        nothing else sees the gradients (no hooks, none kept), the update is then one subtraction
        per parameter instead of a scaling pass and a subtraction (S: four array calls fewer; L: a
        pass over each weight matrix). The result differs from `p -= lr * grad` by rounding only.
        Only in float32 and float64 (float16 gradients scaled down by lr could underflow), with
        every parameter in the loss's dtype (lr is one number of that dtype), and where the graph
        has no node of a custom op or in float16 (`unscaled_nodes()` still reads `unscaled`, its
        value before the forward pass)."""
        if self.keep_grads or self.gradient_hooks or unscaled_nodes() != unscaled:
            return None
        plain = getattr(self.optimizer, "subtracts_lr_times_grad", None)
        if plain is None or not plain():
            return None
        data = loss.data
        dtype = data.dtype
        if data.ndim or dtype not in self._wide_dtypes:
            return None
        for p in self.params:
            if p.data.dtype != dtype:
                return None
        if numbers_of is not None:  # a recording: this step's numbers, as 0-d arrays
            if backend_of(self.xp).capture == "jit":  # XLA fuses lr * g into the update itself, and
                return None  # starting from lr measured slower there (S float64: 1.10x against 0.98x)
            return numbers_of(self.params[0])["lr"]
        lr, made = self.optimizer.lr, self._lr_made
        if made is None or made[0] != lr or made[1].dtype != dtype or made[1].device != data.device:
            made = self._lr_made = lr, self.xp.asarray(lr, dtype=dtype, device=device(data))
        return made[1]  # one array while lr, dtype and device stay: backward never writes into it

    def _run_hooks(self) -> None:
        """Each gradient hook in turn, from the parameters' gradients back to them."""
        grads = self.grads()
        for hook in self.gradient_hooks:
            grads = list(hook(grads))
            if len(grads) != len(self.params):
                raise ValueError(f"gradient hook {hook!r} returned {len(grads)} gradients for {len(self.params)}")
        self.set_grads(grads)

    def eager(self, x, y):
        """One whole step (protocol steps 1 to 4): the loss and outputs (arrays)."""
        loss, out = self.run(x, y)
        if not self.keep_grads:
            for p in self.params:
                p.grad = None
        return loss.data, out.data

    def body(self, layout: Layout, numbers: NumberTable):
        """The step as a function of arrays alone, laid out by `layout`: what a replay records.
        The optimizer's Python side (its step count, its numbers) stays outside, with the caller."""

        def step(*arrays):
            state, number_arrays, x, y = layout.split_inputs(list(arrays))
            self.load_state(state, xp=namespace_of(x))
            bound = numbers.bind(number_arrays)
            loss, out = self.run(x, y, lambda p: bound[p.dtype])
            return layout.outputs(self.state(), self.grads(), loss.data, out.data)

        return step

    def key(self, x, y, stacked: bool = False) -> tuple:
        """What a capture depends on that may differ from call to call: the batch's shapes and
        dtypes, and the Python numbers that the loss and the gradient hooks name in their
        `hyperparameters`. One capture is kept per key. Where arrays have strides (NumPy), their
        memory layout too: an optimized program writes results into temporaries whose layout
        follows the batch's. `stacked`: x and y are K batches (a leading axis of K), and the key
        is that of one of them."""
        if stacked:
            x_shape, y_shape, layout = x.shape[1:], y.shape[1:], (_strides_of_one(x), _strides_of_one(y))
        else:
            x_shape, y_shape, layout = x.shape, y.shape, (getattr(x, "strides", None), getattr(y, "strides", None))
        if self._with_numbers:
            numbers = tuple([tuple([getattr(f, name) for name in f.hyperparameters]) for f in self._with_numbers])
            return x_shape, x.dtype, y_shape, y.dtype, layout, numbers
        return x_shape, x.dtype, y_shape, y.dtype, layout

    def fingerprint(self, state: list) -> tuple:
        """What every capture depends on besides array values, checked when backprop.changes
        moved or the state arrays were replaced: the model's structure (modules, modes, settings,
        which parameters train), the optimizer's hyper-parameters and state names, and the shapes
        and dtypes of `state` (as `state()` gives it)."""
        opt = self.optimizer
        return (
            structure(self.model),
            tuple([(id(p), p.requires_grad) for p in self.params]),
            tuple([getattr(opt, name) for name in opt.hyperparameters]),
            opt.state_names(),
            tuple([(a.shape, a.dtype) for a in state]),
            structure(self.loss) if isinstance(self.loss, Module) else None,  # a loss with settings
        )


class TrainStep:
    """`step(inputs, targets) -> (loss, outputs)`: one training step, as backend arrays.

    `gradient_hooks` run between backward and the update (see the module's docstring). `mode` says
    how the last call ran: "eager", "traced", "jit" (JAX) or "cuda-graph" (CuPy). `optimize=False`
    replays the step as recorded, without backprop.optimize's passes; `program` is the program the
    last call replayed (print it to read the step), or None.

    `keep_grads=False` leaves no gradients behind (each parameter's `.grad` is None after a step,
    as in `fit`, which reads only the loss and outputs): a captured step then does not return
    them, so its program may update in the gradients' place, and a compiled one (JAX)
    materializes fewer arrays. With plain SGD (no momentum or weight decay) and no gradient hooks,
    a step that runs one array call at a time (eager, or a traced replay) then starts backward
    from the learning rate instead of 1, so the gradients come out scaled and the update only
    subtracts them: the same step up to rounding, a pass fewer per parameter (float32 and float64,
    backprop's own ops only). A program XLA compiles (JAX) scales in the update, which it fuses.
    """

    def __init__(
        self, model, loss, optimizer, capture: bool = True, gradient_hooks=(), optimize: bool = True,
        keep_grads: bool = True,
    ):  # fmt: skip
        self.function = StepFunction(model, loss, optimizer, gradient_hooks, keep_grads)
        self.capture, self.optimize = capture, optimize
        self.mode = "eager"
        self._last = None  # the capture the last call replayed
        self._warmed: set = set()
        self._captures: dict = {}
        self._returned = Returned()  # what the last replay of any shape returned (TracedReplay.owned)
        self._many: dict = {}  # (key, K) -> ScanReplay, or None where K steps run one by one
        self._changes = -1  # backprop.changes.count then
        self._state = None  # the state arrays the last call left behind
        self._trains = ()  # each parameter's requires_grad
        self._fingerprint = None  # the step's fingerprint when last looked at
        self._replans = 0  # plans made anew since the last replay

    params = property(lambda self: self.function.params)
    program = property(lambda self: getattr(self._last, "source", None) if self.mode != "eager" else None)
    model = property(lambda self: self.function.model, lambda self, value: self._replan(model=value))
    loss = property(lambda self: self.function.loss, lambda self, value: self._replan(loss=value))
    optimizer = property(lambda self: self.function.optimizer, lambda self, value: self._replan(optimizer=value))

    def _replan(self, **change) -> None:
        """A new model, loss or optimizer: a new step function, and nothing captured for the old one."""
        function = self.function
        parts = {"model": function.model, "loss": function.loss, "optimizer": function.optimizer, **change}
        self.function = StepFunction(**parts, gradient_hooks=function.gradient_hooks, keep_grads=function.keep_grads)
        self._captures.clear()
        self._returned = Returned()
        self._many.clear()
        self._warmed.clear()
        self._state = None
        self._fingerprint = None

    def __call__(self, inputs, targets):
        x, y = self._array(inputs), self._array(targets)
        # under no_grad the eager step says why it cannot; Python lists it converts as it takes them
        if not self.capture or not is_grad_enabled() or not (hasattr(x, "shape") and hasattr(y, "shape")):
            return self._eager(x, y)
        state = self._checked_state()
        function = self.function
        key = function.key(x, y)
        replay = self._captures.get(key)
        if replay is not None and replay.verified:
            loss, out = self._counted(replay, x, y, state)
            self.mode, self._state, self._replans, self._last = replay.mode, function.installed, 0, replay
            return loss, out
        if replay is not None:
            loss, out = self._verify(replay, x, y)
        elif key not in self._warmed or len(self._captures) >= MAX_CAPTURES:
            self._warmed.add(key)
            loss, out = self._eager(x, y)
        else:
            loss, out = self._record(key, x, y)
        self._state = function.state()
        if len(self._state) != len(state) and self.capture:  # the optimizer made its state: the
            self._fingerprint = function.fingerprint(self._state)  # step's own change, not the user's
            self._drop_captures_without(len(self._state))
        return loss, out

    def _drop_captures_without(self, state: int) -> None:
        """Forget the replays laid out for another number of state arrays (recorded for a batch
        shape before a step of another shape gave a parameter its first gradient, and with it the
        optimizer's state for that parameter): that shape records again."""
        self._captures = {key: r for key, r in self._captures.items() if r is None or r.layout.state == state}
        self._many = {key: r for key, r in self._many.items() if r is None or r.replay.layout.state == state}

    def run_many(self, batches):
        """One step per (inputs, targets) of `batches`, all of one shape: (losses, outputs) with a
        leading axis of K = len(batches), as K calls of the step would give them (Keras's
        `steps_per_execution`). Where the backend compiles several steps as one (JAX: a
        `lax.scan` over the captured step), the K steps are one call once the single step is
        captured and checked (the first such call is checked against K single steps); elsewhere
        they are a loop of single steps. Batches already stacked go to `run_stacked`. Where a step
        of that loop raises, the steps before it stay taken and counted, as K calls would leave
        them (the error says how many); a compiled call of K steps is all or nothing.
        """
        pairs = [tuple(map(self._array, _pair(i, batch))) for i, batch in enumerate(batches)]
        if not pairs:
            raise ValueError("run_many needs at least one (inputs, targets) batch")
        if not all(hasattr(a, "shape") for pair in pairs for a in pair):  # Python lists: as single calls take them
            return self._one_by_one(pairs)
        first = [(a.shape, a.dtype) for a in pairs[0]]
        for i, pair in enumerate(pairs):
            if [(a.shape, a.dtype) for a in pair] != first:
                shapes = " and ".join(f"{tuple(a.shape)} {a.dtype}" for a in pair)
                expected = " and ".join(f"{tuple(shape)} {dtype}" for shape, dtype in first)
                raise ValueError(f"run_many: batch {i} is {shapes}, batch 0 {expected}: the batches must be alike")
        many = self._scan(*pairs[0], len(pairs))
        if many is None:
            return self._one_by_one(pairs)
        stack = backend_of(self.function.xp).stack_batches
        return self._run_scan(many, stack([x for x, _ in pairs]), stack([y for _, y in pairs]))

    def run_stacked(self, inputs, targets):
        """K steps, the k-th on the batch (inputs[k], targets[k]): `run_many` of batches that are
        stacked already (a leading axis of K steps, then the batch axis), without the copy that
        stacking them takes each call. The same (losses, outputs), with a leading axis of K.

        >>> import numpy as np, backprop as bp
        >>> model = bp.nn.mlp([3, 4, 2], "tanh", dtype="float64")
        >>> step = bp.TrainStep(model, bp.losses.cross_entropy, bp.optim.SGD(model.parameters(), lr=0.1))
        >>> losses, outs = step.run_stacked(np.ones((5, 8, 3)), np.zeros((5, 8), dtype=np.int64))
        >>> tuple(losses.shape), tuple(outs.shape)
        ((5,), (5, 8, 2))
        """
        xs, ys = self._array(inputs), self._array(targets)
        for what, a in (("inputs", xs), ("targets", ys)):
            if len(getattr(a, "shape", ())) < 2:
                shape = tuple(a.shape) if hasattr(a, "shape") else type(a).__name__
                raise ValueError(f"run_stacked: {what} must have an axis of steps and then a batch axis, got {shape}")
        if xs.shape[0] != ys.shape[0] or xs.shape[0] < 1:
            raise ValueError(f"run_stacked: inputs {tuple(xs.shape)} and targets {tuple(ys.shape)} need one "
                             "leading length, the number of steps (at least 1)")  # fmt: skip
        many = self._scan(xs, ys, xs.shape[0], stacked=True)
        if many is None:
            return self._one_by_one(_unstacked(xs, ys))
        return self._run_scan(many, xs, ys)

    def _array(self, value):
        """A Tensor's array, or `value` without another autodiff system's history (`untracked`)."""
        return value.data if isinstance(value, Tensor) else backend_of(self.function.xp).untracked(value)

    def _run_scan(self, many, xs, ys):
        """The K steps of `many` on stacked batches; checked first if never yet."""
        if not many.verified:
            return self._verify_many(many, xs, ys)
        function = self.function
        losses, outs = self._counted(many, xs, ys, function.state())  # _scan has run the guard
        self.mode, self._state, self._last = many.mode, function.installed, many.replay
        return losses, outs

    def _counted(self, replay, *args):
        """`replay(*args)`; where it raises, its steps count only if their results became the state
        (an interrupt once the compiled call has run), not otherwise (what it wrote in place stays)."""
        function = self.function
        steps, installed = function.optimizer.steps, function.installed
        try:
            return replay(*args)
        except BaseException:
            if function.installed is installed:
                function.optimizer.steps = steps
            raise

    def _scan(self, x, y, k: int, stacked: bool = False):
        """The ScanReplay of `k` steps on batches like (x, y) (`stacked`: their stack), or None
        (they run one by one): the backend compiles several steps as one, and this shape's single
        step is captured and checked."""
        if not self.capture or not is_grad_enabled() or k < 2:
            return None
        entry = backend_of(self.function.xp)
        if not entry.compiles_steps:
            return None
        self._checked_state()
        key = self.function.key(x, y, stacked)
        replay = self._captures.get(key)
        if (key, k) not in self._many and isinstance(replay, TracedReplay) and replay.verified:
            self._many[key, k] = ScanReplay(replay, (key, k), k, entry.compile_steps)
        return self._many.get((key, k))

    def _verify_many(self, many, xs, ys):
        """Run the K steps as one call, undo them, and run them one by one: both must agree (once)."""
        function = self.function
        snapshot = function.snapshot()
        try:
            losses, outs = many(xs, ys)
            together = _copies([*function.state(), *function.grads(), losses, outs])
        except Exception as error:
            together = f"they failed as one call: {error}"
        except BaseException:  # an interrupt (while XLA compiles, say): no step happened
            function.restore(snapshot)
            raise
        function.restore(snapshot)
        self._state = None  # restored: the state is not what the guard saw last
        losses, outs = self._one_by_one(_unstacked(xs, ys))
        if isinstance(together, list):
            mismatch = _first_mismatch(together, [*function.state(), *function.grads(), losses, outs])
            together = None if mismatch is None else f"they differ from single steps ({mismatch})"
        if together is None:
            many.verified = True
        else:
            self._many[many.key] = None
            warnings.warn(
                f"TrainStep runs these {xs.shape[0]} steps one by one: {together}", CaptureWarning, stacklevel=4
            )  # the caller of run_many or run_stacked
        return losses, outs

    def _one_by_one(self, pairs):
        """A step per batch; their losses and outputs stacked (copied first where a replay hands
        out buffers that the next one overwrites: CUDA graphs)."""
        copies = backend_of(self.function.xp).capture == "cuda-graph"
        results = []
        for k, (x, y) in enumerate(pairs):
            try:
                loss, out = self(x, y)
            except Exception as error:
                if k and hasattr(error, "add_note"):  # as k calls would leave it: those steps done, counted
                    error.add_note(f"(step {k + 1} of {len(pairs)} of this call; the {k} before it were taken)")
                raise
            results.append((copy_array(loss), copy_array(out)) if copies else (loss, out))
        xp = namespace_of(results[0][1])
        return xp.stack([xp.asarray(loss) for loss, _ in results]), xp.stack([out for _, out in results])

    def _checked_state(self) -> list:
        """The state arrays, after the guard: if something that can change the step changed
        (backprop.changes moved, a `requires_grad` flag flipped, a state array was replaced), the
        fingerprint is checked."""
        state = self.function.state()
        trains = tuple(map(_requires_grad, self.function.params))  # a plain slot, so it is read here
        if changes.count != self._changes or trains != self._trains or not _same_arrays(state, self._state):
            state = self._check_fingerprint(state)
        return state

    def _check_fingerprint(self, state: list) -> list:
        """Something changed (backprop.changes moved, a `requires_grad` flag, a state array): if
        the step's fingerprint is not the one last seen, everything captured (or warmed up) is
        dropped and the step planned anew. Something that changes at every call (a counter a
        module keeps in `forward`) ends capturing, with a CaptureWarning naming it. The (possibly
        new) state."""
        fingerprint = self.function.fingerprint(state)
        if self._fingerprint is not None and fingerprint != self._fingerprint:
            self._replans += 1
            if self._replans > MAX_REPLANS:
                self._give_up(f"{_difference(self._fingerprint, fingerprint)} at every call")
            self._replan()
            state = self.function.state()
            fingerprint = self.function.fingerprint(state)
        self._fingerprint = fingerprint
        self._changes, self._trains = changes.count, tuple(map(_requires_grad, self.function.params))
        return state

    def _eager(self, x, y):
        self.mode = "eager"
        return self.function.eager(x, y)

    def _record(self, key, x, y):
        """Capture the step for `key` (this call's step happens on the way); eager if it cannot."""
        function = self.function
        snapshot = function.snapshot()
        entry = backend_of(function.xp)
        try:
            replay, results = self._record_graph(x, y, snapshot) if entry.capture == "cuda-graph" else (None, None)
            if replay is None:
                replay, results = TracedReplay.record(function, x, y, entry, self.optimize)
                replay.returned_by = self._returned
        except Exception as error:  # whatever stopped it, the step must still happen, once
            function.restore(snapshot)
            results = self._eager(x, y)  # if the step itself fails, that error is the one to see
            self._give_up(f"the step could not be captured: {error}")
            return results
        self._captures[key] = replay
        self.mode, self._last = replay.recording_mode, replay
        return results

    def _record_graph(self, x, y, snapshot):
        """A device graph of the step, or (None, None) with a CaptureWarning saying why there is
        none (then a traced replay is the next best: it still skips the engine's Python)."""
        function = self.function
        try:
            return GraphReplay.record(function, x, y, backend_of(function.xp).capture_graph)
        except Exception as error:
            function.restore(snapshot)
            warnings.warn(
                f"TrainStep replays a traced program, not a CUDA graph: {error}", CaptureWarning, stacklevel=4
            )
            return None, None

    def _verify(self, replay, x, y):
        """Replay once, then undo it and run the step eagerly: both must agree (once per capture)."""
        function = self.function
        snapshot = function.snapshot()
        try:
            loss, out = replay(x, y)  # JAX compiles here; a graph launches for the second time
        except Exception as error:
            function.restore(snapshot)
            results = self._eager(x, y)  # if the step itself fails, that error is the one to see
            self._give_up(f"its replay failed: {error}")
            return results
        replayed = _copies([*function.state(), *function.grads(), loss, out])  # restore writes back in place
        function.restore(snapshot)
        loss, out = self._eager(x, y)
        # the same calls on the host give the same bits; a GPU's atomic adds and library choices may not
        entry = backend_of(function.xp)
        exact = entry.capture == "traced" and entry.readable(loss)
        mismatch = _first_mismatch(replayed, [*function.state(), *function.grads(), loss, out], exact)
        if mismatch is not None:
            self._give_up(f"its replay differs from the eager step ({mismatch})")
        replay.verified = True
        return loss, out

    def _give_up(self, reason: str) -> None:
        self.capture = False
        self._captures.clear()
        self._many.clear()
        warnings.warn(
            f"TrainStep runs eagerly: {reason}. Steps that read array values in Python, draw host random "
            "numbers (Dropout) or use arrays that are not parameters, optimizer state or the batch cannot "
            "be captured; pass capture=False to silence this.",
            CaptureWarning,
            stacklevel=3,
        )


_requires_grad = operator.attrgetter("requires_grad")


def _strides_of_one(stacked):
    """The strides of one batch of K stacked ones (None where arrays have none)."""
    strides = getattr(stacked, "strides", None)
    return None if strides is None else strides[1:]


def _copies(arrays: list) -> list:
    return [None if a is None else copy_array(a) for a in arrays]


def _same_arrays(arrays: list, others: list | None) -> bool:
    """Whether two lists hold the same array objects (not merely equal ones)."""
    return others is not None and len(arrays) == len(others) and all(map(operator.is_, arrays, others))


def _difference(old: tuple, new: tuple) -> str:
    """What differs between two `StepFunction.fingerprint`s, in words."""
    model, trains, hyper, names, arrays, loss = (a != b for a, b in zip(old, new, strict=True))
    if model:
        return structure_difference(old[0], new[0])
    if loss:
        return f"the loss: {structure_difference(old[5], new[5])}" if old[5] and new[5] else "the loss changes"
    if trains:
        return "which parameters require a gradient changes"
    if hyper:
        return "an optimizer hyper-parameter changes"
    return "the optimizer's state changes" if names else "a parameter or state shape or dtype changes"


def _pair(i: int, batch) -> tuple:
    """Batch `i` of `run_many`, checked to be an (inputs, targets) pair."""
    if isinstance(batch, (tuple, list)) and len(batch) == 2:
        return tuple(batch)
    what = f"{len(batch)} items" if isinstance(batch, (tuple, list)) else f"a {type(batch).__name__}"
    raise ValueError(f"run_many: batch {i} is {what}, not an (inputs, targets) pair")


def _unstacked(xs, ys) -> list:
    """The K batches (xs[k], ys[k]) of stacked batches."""
    return [(xs[k, ...], ys[k, ...]) for k in range(xs.shape[0])]


def _first_mismatch(replayed: list, eager: list, exact: bool = False) -> str | None:
    """A description of the first pair of arrays that differ (`exact`: at all; else beyond
    rounding), or None."""
    if len(replayed) != len(eager):
        return f"{len(replayed)} arrays against {len(eager)}"
    for i, (a, b) in enumerate(zip(replayed, eager, strict=True)):
        if a is None or b is None:
            if (a is None) != (b is None):
                return f"array {i} is missing on one side"
            continue
        a, b = to_numpy(a), to_numpy(b)
        rtol = 0.0 if exact else 1e-9 if b.dtype == np.float64 else 1e-4
        a, b = a.astype(np.float64), b.astype(np.float64)
        if a.shape != b.shape:
            return f"array {i} of shape {a.shape} against {b.shape}"
        differ = ~((a == b) | (np.isnan(a) & np.isnan(b)))  # a NaN (or inf) both sides have agrees
        if differ.any():
            scale = max(float(np.max(np.abs(b[np.isfinite(b)]), initial=0.0)), 1e-30)
            if not float(np.max(np.abs(a[differ] - b[differ]))) <= rtol * scale:  # NaN or inf on one side: no
                return f"array {i} of shape {b.shape}"
    return None
