"""Array backends: one entry per array library, answering everything the rest of backprop asks.

An entry names its library (the module to import, the pip extra that installs it) and says, for
arrays of that library: whether they can be written in place, how to write at an index and how to
scatter-add, how to copy one to the host, whether values can be read without waiting for a device,
how a training step is captured (a traced replay, a jit-compiled one, a CUDA graph), how devices
are named, and whether the library can run here. No other module tests which library an array
comes from: the code asks `backend_of(xp)`, and the tests, the benchmarks and the nox sessions read
`BACKENDS`. Adding a backend is adding one entry (`register_backend`) and its nox session.

This module imports only the standard library and backprop.errors at the top (the noxfile reads
it without NumPy); each entry imports its library when first used.

>>> from backprop.backends import BACKENDS
>>> list(BACKENDS)
['numpy', 'torch', 'jax', 'array_api_strict', 'cupy']
>>> BACKENDS["jax"].mutable, BACKENDS["jax"].capture, BACKENDS["jax"].extra
(False, 'jit', 'jax')
"""

from __future__ import annotations

import contextlib
import functools
import gc
import importlib
import importlib.util

from backprop.errors import UserError

CAPTURE_KINDS = ("traced", "jit", "cuda-graph")


class BackendError(UserError, ValueError):
    """A backend that is unknown, not installed, or cannot run here (or a device it lacks)."""


class BackendEntry:
    """What backprop needs to know about one array library. Subclasses override what differs.

    The defaults describe a library that implements the array API standard and nothing more, with
    writable arrays on the host: array_api_strict is exactly this entry.
    """

    name: str = ""
    module: str = ""  # the module to import; its arrays give the namespace
    extra: str | None = None  # pip install "backprop[<extra>]" installs the library
    distributions: tuple[str, ...] = ()  # PyPI distributions that provide it (versions, `backprop info`)
    mutable: bool = True  # arrays can be written in place (else set_at returns a new array)
    capture: str = "traced"  # how TrainStep captures a step: one of CAPTURE_KINDS
    on_gpu: bool = False  # its arrays live on a GPU (tests and the GPU benchmarks need one)
    default_tests: bool = True  # in `nox -s tests` (otherwise in a session of its own)
    test_threads: tuple = (None,)  # BLAS thread counts its test sessions run at (None: all cores)
    threads_fixed: bool = False  # sizes its thread pool once, at start: thread limits do not apply
    compiles_steps: bool = False  # compile_steps makes K steps one call (TrainStep.run_many)
    donates: bool = False  # a compiled step consumes the state arrays it is given (see `compile`)
    helpers = ("set_at", "scatter_add", "sign", "one_hot")  # methods that compute arrays (a trace records their calls)

    def __init__(self):
        self._namespace = None
        self._failure: str | None = None  # why loading failed (kept: a failed probe is not retried)

    def __repr__(self) -> str:
        return f"<backend {self.name}>"

    # --- the library ---

    def installed(self) -> bool:
        return importlib.util.find_spec(self.module.split(".")[0]) is not None

    def install_hint(self) -> str:
        what = f'"backprop[{self.extra}]"' if self.extra else " or ".join(self.distributions) or self.module
        return f"pip install {what}"

    def load(self):
        """Import the library (and configure it): its array namespace."""
        from array_api_compat import array_namespace

        return array_namespace(importlib.import_module(self.module).asarray([0.0]))

    def namespace(self):
        """The array namespace (imported once); BackendError when it cannot be used here."""
        if self._namespace is None:
            if not self.installed():
                raise BackendError(f"backend {self.name!r} is not installed: {self.install_hint()}")
            if self._failure is not None:
                raise BackendError(self._failure)
            try:
                self._namespace = self.load()
            except Exception as error:  # e.g. cupy installed on a machine without a usable GPU
                self._failure = f"backend {self.name!r} is installed but cannot create an array here: {error}"
                raise BackendError(self._failure) from error
            _by_namespace[self._namespace] = self
        return self._namespace

    def owns(self, xp) -> bool:
        """Whether `xp` is this library's namespace (its own or array-api-compat's wrapper)."""
        name = getattr(xp, "__name__", "")
        return name in (self.module, f"array_api_compat.{self.module}")

    def unavailable(self) -> str | None:
        """Why this backend cannot run here (not installed, no device), or None when it can."""
        try:
            self.namespace()
        except BackendError as error:
            return str(error)
        return None

    # --- devices ---

    def devices(self) -> list:
        """The devices new arrays can be created on here, by name (the first is the default)."""
        return [str(d) for d in self.namespace().__array_namespace_info__().devices()]

    def device(self, name):
        """The library's device object for `name` (None: the default device); BackendError names
        the devices there are when `name` is not one of them."""
        if name is None:
            return None
        for device in self.namespace().__array_namespace_info__().devices():
            if str(device) == str(name):
                return device
        raise _no_device(self, name)

    def accelerator(self) -> str | None:
        """The name of a GPU device this library can use here, or None (for the GPU benchmarks)."""
        return self.devices()[0] if self.on_gpu and self.unavailable() is None else None

    def on(self, device):
        """A context in which kernels run on `device` (libraries that select a current device)."""
        return contextlib.nullcontext()

    def select(self, device) -> None:
        """Make `device` the one kernels run on from now on (libraries with a current device)."""

    # --- arrays ---

    def set_at(self, array, key, values):
        """`array` with `values` written at `key`: the same array, written in place, where arrays
        are mutable; a new array where they are not."""
        array[key] = values
        return array

    def exact_numbers(self, dtype) -> bool:
        """Whether a step number (lr, a bias correction) passed to a replay as a 0-d array of
        `dtype` computes with arrays of `dtype` as the Python float does in an eager step (NumPy
        rounds a Python float to the array's dtype first, as the 0-d array is)."""
        return True

    def untracked(self, array):
        """`array` without the history another autodiff system keeps of it (PyTorch's autograd):
        backprop differentiates its own graph, and a history kept beside it would grow with each
        step that updates parameters from it. Taken where arrays come in: tensors, steps, losses."""
        return array

    def sign(self, array):
        """-1, 0 or 1 by the sign of each element (a real array)."""
        from array_api_compat import array_namespace

        return array_namespace(array).sign(array)

    def scatter_add(self, grad, indices, axis: int, size: int):
        """zeros with `size` along `axis`, plus `grad`'s slices added at `indices` (repeats add up).

        The standard has no scatter-add: this multiplies by a one-hot matrix (memory:
        len(indices) x size); libraries with a native one override it.
        """
        xp = grad.__array_namespace__()
        moved = xp.moveaxis(grad, axis, -1) @ self.one_hot(indices, size, grad.dtype)
        return xp.moveaxis(moved, -1, axis)

    def one_hot(self, labels, size: int, dtype):
        """(len(labels), size) rows of `dtype`: 1 at each row's label, 0 elsewhere."""
        from array_api_compat import array_namespace

        xp = array_namespace(labels)
        return xp.astype(labels[:, None] == xp.arange(size, device=labels.device)[None, :], dtype)

    def to_host(self, array):
        """A NumPy copy of `array` (a device-to-host copy where it lives on a device)."""
        import numpy as np

        return np.from_dlpack(array)

    def readable(self, array) -> bool:
        """Whether `array`'s values can be read now at no cost (on the host, no device sync)."""
        return True

    def writable_memory(self, array):
        """A key of the memory `array` views, where in-place writes to it are safe (two arrays that
        may share elements have equal keys); None where they are not: read-only, or a broadcast view
        (elements that share memory). Gradients handed to users are copied where None or where two
        share a key. Libraries whose arrays cannot be written in place: the array, by identity."""
        return id(array)

    def host_callback(self, function, array):
        """`function` (a host NumPy array -> one of the same shape and dtype) applied to `array`, the
        result on `array`'s backend and device. Where a compiled step cannot call host code as it
        is (JAX), the entry wraps it in the library's callback."""
        import numpy as np

        result = function(self.to_host(array))
        return result if isinstance(array, np.ndarray) else self.namespace().asarray(result, device=array.device)

    def synchronize(self, arrays=()) -> None:
        """Wait until queued work on `arrays` (or the device) is done: for timing."""

    # --- capture (backprop.step.TrainStep) ---

    def compile(self, program, donated=()):
        """A traced step program, compiled for replays (identity: replay it as Python). Where the
        entry `donates`, the compiled program may consume (delete) the inputs at the positions
        `donated`, and reuse their memory for its results."""
        return program

    def capture_graph(self, function, inputs):
        """Record `function(*inputs)` as a device graph without running it: (launch, outputs, keep)."""
        raise NotImplementedError(f"backend {self.name!r} has no device graphs (its capture is {self.capture!r})")

    def compile_steps(self, step, donate_state: bool = False):
        """Several steps as one compiled call, where `compiles_steps` (else they run one by one).
        `step(state, numbers, x, y) -> (state, grads, loss, out)` is one step; the result is
        called as `(state, grads, numbers, xs, ys) -> (state, grads, losses, outs)`, with a leading
        axis of K on numbers, xs, ys, losses and outs, and grads carried from step to step.
        `donate_state`: the call may consume the state arrays it is given (as `compile`'s `donated`)."""
        raise NotImplementedError(f"backend {self.name!r} does not compile several steps as one")

    def stack_batches(self, batches: list):
        """The K arrays of `batches` with a leading axis of K (the input of a `compile_steps` call)."""
        return self.namespace().stack(batches)

    def fast_path(self):
        """What a traced replay may use beyond the standard here (a `backprop.optimize.FastPath`:
        `out=`, the library's own reductions), or None: the generic passes only."""
        return None


class NumPyBackend(BackendEntry):
    name, module, distributions = "numpy", "numpy", ("numpy",)
    test_threads = (None, 1)  # NumPy's BLAS is under test: at all threads and at one

    def fast_path(self):
        import operator

        import numpy as np

        from backprop.optimize import FastPath

        operators = {operator.add: np.add, operator.sub: np.subtract, operator.mul: np.multiply,
                     operator.truediv: np.divide}  # fmt: skip
        namespace = self.namespace()  # its sum and max are thin wrappers of these
        reductions = {namespace.sum: np.add.reduce, namespace.max: np.maximum.reduce}

        def with_out(function):  # element-wise ufuncs (not matmul, and not power: `v ** 2` squares)
            if isinstance(function, np.ufunc):
                simple = function.nout == 1 and function.signature is None and function is not np.power
                return function if simple else None
            return operators.get(function)

        in_place = {getattr(operator, "i" + f.__name__.strip("_")): u for f, u in operators.items()}

        def same_type(function, dtype) -> bool:  # a loop from operands of `dtype` alone to it
            function = operators.get(function) or in_place.get(function) or function
            if not isinstance(function, np.ufunc) or function.nout != 1:
                return False
            char = np.dtype(dtype).char
            return f"{char * function.nin}->{char}" in function.types

        floating = lambda dtype: np.dtype(dtype).kind == "f"
        scalar = lambda value, dtype: np.asarray(value, dtype=dtype)
        scalar_slow = {np.maximum, np.minimum, np.fmax, np.fmin}.__contains__  # no vectorized loop for a scalar

        def full(value, shape):
            array = np.full(shape, value, dtype=value.dtype)
            array.flags.writeable = False  # a constant: nothing writes into it
            return array

        return FastPath(np.ndarray, floating, with_out, same_type, reductions.get, scalar, scalar_slow, full)

    def load(self):
        """NumPy as an array namespace, with `sum` and `max` calling its C reductions directly.

        NumPy 2 implements the standard itself, so its own functions serve (array-api-compat's
        wrappers would add a call per op). Only the reductions' Python wrappers cost as much as a
        small reduction (a 10 x 30 sum: 1.7 us against 0.85 us), and the engine reduces in every layer.
        """
        import types

        import numpy as np

        namespace = types.ModuleType("numpy", np.__doc__)
        namespace.__dict__.update(vars(np))  # __name__ stays "numpy": array-api-compat knows it as NumPy

        def sum(x, /, *, axis=None, dtype=None, keepdims=False):
            return np.add.reduce(x, axis=axis, dtype=dtype, keepdims=keepdims)

        def max(x, /, *, axis=None, keepdims=False):
            return np.maximum.reduce(x, axis=axis, keepdims=keepdims)

        namespace.sum, namespace.max = sum, max
        return namespace

    def devices(self) -> list:
        return ["cpu"]

    def device(self, name):
        if name is None or str(name) == "cpu":
            return None
        raise BackendError(f"backend 'numpy' runs on the CPU only, not on device {name!r}")

    def scatter_add(self, grad, indices, axis, size):
        import numpy as np

        shape = list(grad.shape)
        shape[axis] = size
        out = np.zeros(shape, dtype=grad.dtype)
        np.add.at(out, (slice(None),) * axis + (indices,), grad)
        return out

    def to_host(self, array):
        import numpy as np

        return np.asarray(array)

    def writable_memory(self, array):
        if not array.flags.writeable:
            return None
        base = array.base  # NumPy's `base` is the owner of the memory
        if base is None:
            return id(array)
        return id(base) if _no_shared_elements(array.strides, array.shape) else None


class ArrayApiStrictBackend(BackendEntry):
    """The standard and nothing else: proves the core uses no library's extras."""

    name, module, extra, distributions = "array_api_strict", "array_api_strict", "strict", ("array-api-strict",)

    def devices(self) -> list:  # its devices print as "array_api_strict.Device('CPU_DEVICE')"
        return [getattr(d, "_device", str(d)) for d in self.namespace().__array_namespace_info__().devices()]

    def device(self, name):
        if name is None:
            return None
        if str(name) not in self.devices():
            raise _no_device(self, name)
        return importlib.import_module(self.module).Device(str(name))

    def writable_memory(self, array):
        host = self.to_host(array)  # a view of the same memory, its flags; its base is a new capsule
        return None if NumPyBackend.writable_memory(self, host) is None else host.__array_interface__["data"][0]


class TorchBackend(BackendEntry):
    name, module, extra, distributions = "torch", "torch", "torch", ("torch",)

    def devices(self) -> list:
        import torch

        mps = ["mps"] if torch.backends.mps.is_available() else []
        return ["cpu", *(f"cuda:{i}" for i in range(torch.cuda.device_count())), *mps]

    def device(self, name):
        if name is None:
            return None
        import torch

        try:
            device = torch.device(name)
        except (RuntimeError, TypeError) as error:
            raise BackendError(f"backend 'torch': {name!r} is not a device name ({error})") from None
        if device.type == "cpu":
            return device
        counts = {"cuda": torch.cuda.device_count(), "mps": int(torch.backends.mps.is_available())}
        if (device.index or 0) >= counts.get(device.type, 0):  # other device types: not supported here
            raise _no_device(self, name)
        return device

    def accelerator(self) -> str | None:
        return "cuda" if self.installed() and len(self.devices()) > 1 else None

    def scatter_add(self, grad, indices, axis, size):
        shape = list(grad.shape)
        shape[axis] = size
        return grad.new_zeros(shape).index_add_(axis, indices, grad)

    def exact_numbers(self, dtype) -> bool:
        # a Python float meets a half tensor in float32, or not, by the kernel: no 0-d tensor stands
        # for it (a float32 one agreed at 1000 elements, not at 48; a float16 one rounds it first)
        import torch

        return dtype not in (torch.float16, torch.bfloat16)

    def untracked(self, array):
        return array.detach() if getattr(array, "requires_grad", False) else array  # a trace's stand-in has none

    def to_host(self, array):
        return array.detach().cpu().numpy()

    def readable(self, array) -> bool:
        return array.device.type == "cpu"

    def writable_memory(self, array):
        return array.untyped_storage().data_ptr() if _no_shared_elements(array.stride(), array.shape) else None

    def synchronize(self, arrays=()) -> None:
        import torch

        if torch.cuda.is_available():
            torch.cuda.synchronize()


class JaxBackend(BackendEntry):
    """Immutable arrays (writes are functional `.at[]` updates); a step is compiled by `jax.jit`."""

    name, module, extra, distributions = "jax", "jax.numpy", "jax", ("jax",)
    mutable, capture, default_tests, threads_fixed, compiles_steps, donates = False, "jit", False, True, True, True

    def load(self):
        importlib.import_module("jax").config.update("jax_enable_x64", True)  # else float64 data silently -> float32
        return super().load()

    def owns(self, xp) -> bool:
        return getattr(xp, "__name__", "").startswith("jax")

    def devices(self) -> list:
        import jax

        return [f"{d.platform}:{d.id}" for d in jax.devices()]

    def device(self, name):
        if name is None:
            return None
        import jax

        platform, _, index = str(name).partition(":")
        try:
            return jax.devices(platform)[int(index or 0)]
        except (RuntimeError, ValueError, IndexError):
            raise _no_device(self, name) from None

    def accelerator(self) -> str | None:
        gpus = [d for d in self.devices() if not d.startswith("cpu")] if self.installed() else []
        return gpus[0] if gpus else None

    def set_at(self, array, key, values):
        return array.at[key].set(values)

    def scatter_add(self, grad, indices, axis, size):
        import jax.numpy as jnp

        shape = list(grad.shape)
        shape[axis] = size
        return jnp.zeros(shape, dtype=grad.dtype).at[(slice(None),) * axis + (indices,)].add(grad)

    def one_hot(self, labels, size, dtype):
        """Compiled (in a `jax.jit`), a scatter of ones, not the default's comparison with a range:
        around that comparison's fusion, XLA's CPU runtime ran the step's large matmuls side by
        side, each on every core (784-512-512-10 at batch 128 on 2 cores: 1.45 ms a step, against
        1.22 ms with this). Eager, the comparison: fewer dispatches (0.2 ms, against 0.37 ms)."""
        import jax
        import jax.numpy as jnp

        if not isinstance(labels, jax.core.Tracer):
            return super().one_hot(labels, size, dtype)

        zeros = jnp.zeros_like(labels, dtype=dtype, shape=(labels.shape[0], size))  # on labels' device
        ones = jnp.astype(labels >= 0, dtype)  # JAX counts a negative index from the end: write 0 there
        columns = jnp.astype(labels, jnp.promote_types(labels.dtype, jnp.int32))  # int8 labels, 200 classes
        return zeros.at[jnp.arange(labels.shape[0]), columns].set(ones, mode="drop")  # drop: too large

    def to_host(self, array):
        import numpy as np

        return np.asarray(array)

    def readable(self, array) -> bool:
        return all(device.platform == "cpu" for device in array.devices())

    def host_callback(self, function, array):
        """An ordered io_callback: runs once per call, inside a jax.jit too (an MPI all-reduce)."""
        import jax
        import numpy as np
        from jax.experimental import io_callback

        shape = jax.ShapeDtypeStruct(array.shape, array.dtype)
        return io_callback(lambda host: function(np.asarray(host)), shape, array, ordered=True)

    def synchronize(self, arrays=()) -> None:
        import jax

        jax.block_until_ready(list(arrays))

    def compile(self, program, donated=()):
        return _jit_donating(program, tuple(donated))

    def compile_steps(self, step, donate_state: bool = False):
        import jax

        def steps(state, grads, numbers, xs, ys):
            def body(carry, inputs):
                state, grads, loss, out = step(carry[0], *inputs)
                return (state, grads), (loss, out)

            (state, grads), (losses, outs) = jax.lax.scan(body, (state, grads), (numbers, xs, ys))
            return state, grads, losses, outs

        return _jit_donating(steps, (0,) if donate_state else ())

    def stack_batches(self, batches: list):
        # compiled: jnp.stack outside a jit converts each batch in a call of its own (100 batches:
        # 0.5 ms, against 0.14 ms); a program of its own, so that a new mix of batches committed to
        # a device and not recompiles this stack alone, not the K steps
        return self._stack(list(batches))

    @functools.cached_property
    def _stack(self):
        import jax

        return jax.jit(jax.numpy.stack)


def _jit_donating(function, donate_argnums: tuple):
    """`jax.jit(function)` that consumes the arguments at `donate_argnums`, except in a call made
    while jax_debug_nans or jax_debug_infs is on (read at each call: they may be turned on at any
    time), which runs a call that made a NaN again, on its inputs: those must still exist."""
    import jax

    if not donate_argnums:
        return jax.jit(function)
    donating, keeping = jax.jit(function, donate_argnums=donate_argnums), jax.jit(function)
    config = jax.config

    def call(*args):
        if config.jax_debug_nans or config.jax_debug_infs:
            return keeping(*args)
        return donating(*args)

    return call


class CuPyBackend(BackendEntry):
    """NVIDIA GPUs. A step is captured as a CUDA graph; values are read only with a device sync."""

    name, module, extra = "cupy", "cupy", "cuda12"
    distributions = ("cupy-cuda12x", "cupy-cuda13x", "cupy")
    capture, on_gpu = "cuda-graph", True

    def install_hint(self) -> str:
        return 'pip install "backprop[cuda12]" (CUDA 12; "backprop[cuda13]" for CUDA 13)'

    def load(self):
        """CuPy, after one kernel and one matrix product have run: its wheels load NVRTC and cuBLAS
        separately, and a device count alone passes where the first kernel fails."""
        import cupy
        from array_api_compat import array_namespace

        probe = cupy.arange(4.0)
        float((probe @ probe).get())
        return array_namespace(probe)

    def devices(self) -> list:
        import cupy

        return [f"cuda:{i}" for i in range(cupy.cuda.runtime.getDeviceCount())]

    def device(self, name):
        if name is None:
            return None
        import cupy

        text = "0" if str(name) == "cuda" else str(name).removeprefix("cuda:")
        if not text.isdigit() or int(text) >= cupy.cuda.runtime.getDeviceCount():
            raise _no_device(self, name)
        return cupy.cuda.Device(int(text))

    def on(self, device):
        return device if device is not None else contextlib.nullcontext()  # cupy.cuda.Device is a context

    def select(self, device) -> None:
        if device is not None:  # compat's zeros/arange ignore `device` for CuPy: the current one is used
            device.use()

    def scatter_add(self, grad, indices, axis, size):
        import cupy

        shape = list(grad.shape)
        shape[axis] = size
        out = cupy.zeros(shape, dtype=grad.dtype)
        cupy.add.at(out, (slice(None),) * axis + (indices,), grad)  # cupyx.scatter_add's successor (atomic adds)
        return out

    def sign(self, array):
        import cupy  # array-api-compat's sign mends NaNs with a boolean mask, a device sync

        return cupy.sign(array)  # NaN gives 0: a gradient of abs at NaN (whose loss is NaN anyway)

    def to_host(self, array):
        return array.get()

    def writable_memory(self, array):  # the allocation's start, whatever offset this view has
        return array.data.mem.ptr if _no_shared_elements(array.strides, array.shape) else None

    def readable(self, array) -> bool:
        return False

    def synchronize(self, arrays=()) -> None:
        import cupy

        cupy.cuda.get_current_stream().synchronize()

    def capture_graph(self, function, inputs):
        """Record function(*inputs) as a CUDA graph: (launch, outputs, what must outlive the graph).

        The arrays the function allocates come from a memory pool of the graph's own (their
        addresses are baked into it), and host-to-device copies are refused (_refuse_host_copies).
        """
        import cupy

        pool = cupy.cuda.MemoryPool()
        stream = cupy.cuda.Stream(non_blocking=True)
        cupy.cuda.set_pinned_memory_allocator(_refuse_host_copies)
        collecting = gc.isenabled()
        gc.collect()  # an old graph freed by a collection mid-capture would free memory the capture uses
        gc.disable()
        try:
            with cupy.cuda.using_allocator(pool.malloc), stream:
                stream.begin_capture()
                try:
                    outputs = function(*inputs)
                except BaseException:
                    _end_capture_quietly(stream)
                    raise
                graph = stream.end_capture()
        finally:
            if collecting:
                gc.enable()
            cupy.cuda.set_pinned_memory_allocator(cupy.get_default_pinned_memory_pool().malloc)
        return graph.launch, outputs, (pool, stream)


def _no_shared_elements(strides, shape) -> bool:
    """No stride of 0 along an axis longer than 1 (a broadcast view writes one element for many)."""
    return all(stride != 0 or n <= 1 for stride, n in zip(strides, shape, strict=True))


def _no_device(entry: BackendEntry, name) -> BackendError:
    return BackendError(f"backend {entry.name!r} has no device {name!r}; devices here: {', '.join(entry.devices())}")


def _refuse_host_copies(nbytes: int):
    """The pinned-memory allocator while a graph is captured. CuPy copies host data (other than a
    scalar, which it fills on the device) through a pinned staging buffer; a graph would replay the
    copy from a buffer that CuPy later reuses (cupy#4582), so such a copy ends the capture instead."""
    raise RuntimeError(
        f"the step copies {nbytes} bytes of host data to the GPU (an array made from a list or a NumPy "
        "array); a CUDA graph cannot replay that copy"
    )


def _end_capture_quietly(stream) -> None:
    try:
        stream.end_capture()
    except Exception:  # the capture was already invalid; the first error is the one to report
        pass


BACKENDS: dict[str, BackendEntry] = {}
_by_namespace: dict = {}  # namespace -> entry, filled as namespaces are loaded or first met


def register_backend(entry: BackendEntry) -> BackendEntry:
    """Add a backend: `bp.set_backend(entry.name)` selects it, and its arrays are recognised.

    >>> class MyLib(BackendEntry):
    ...     name, module, extra = "mylib", "mylib", "mylib"
    >>> print(register_backend(MyLib()).unavailable())
    backend 'mylib' is not installed: pip install "backprop[mylib]"
    >>> unregister_backend("mylib")
    """
    if not entry.name or not entry.module:
        raise ValueError(f"{type(entry).__name__}: a backend entry needs a name and a module")
    if entry.name in BACKENDS:
        raise ValueError(f"a backend named {entry.name!r} is already registered")
    same = [other.name for other in BACKENDS.values() if other.module == entry.module]
    if same:  # arrays of one library would belong to two entries
        raise ValueError(f"backend {entry.name!r}: module {entry.module!r} is already the backend {same[0]!r}")
    if entry.capture not in CAPTURE_KINDS:
        raise ValueError(f"backend {entry.name!r}: capture must be one of {CAPTURE_KINDS}, not {entry.capture!r}")
    BACKENDS[entry.name] = entry
    return entry


def unregister_backend(name: str) -> None:
    """Remove a backend added by `register_backend` (tests and plugins that add one for a while)."""
    entry = BACKENDS.pop(name)
    for xp in [xp for xp, owner in _by_namespace.items() if owner is entry]:
        del _by_namespace[xp]


def get_entry(name: str) -> BackendEntry:
    """The entry named `name`; BackendError lists the installed ones when there is none."""
    try:
        return BACKENDS[name]
    except KeyError:
        installed = ", ".join(n for n, e in BACKENDS.items() if e.installed())
        raise BackendError(f"unknown backend {name!r}; installed backends: {installed}") from None


def backend_of(xp) -> BackendEntry:
    """The entry of the array namespace `xp` (a stand-in namespace, such as a trace's, names the
    entry it stands in for as `xp.backend_entry`)."""
    entry = _by_namespace.get(xp)
    if entry is not None:
        return entry
    entry = getattr(xp, "backend_entry", None)
    if entry is not None:
        return entry
    for entry in BACKENDS.values():
        if entry.owns(xp):
            _by_namespace[xp] = entry
            return entry
    raise BackendError(f"no backend entry for the array namespace {getattr(xp, '__name__', xp)!r}")


for _entry in (NumPyBackend(), TorchBackend(), JaxBackend(), ArrayApiStrictBackend(), CuPyBackend()):
    register_backend(_entry)
