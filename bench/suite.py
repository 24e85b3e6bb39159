"""The benchmark suite: `backprop bench` / `nox -s bench` / `python -m bench.suite` (in the checkout).

Each configuration times backprop against its peers (bench/peers.py) in one run, interleaved
(A B ... then ... B A) after a warm-up, and reports medians and the ratios the targets are stated
in. backprop runs twice per backend: its eager step, and the same step captured and replayed
(backprop.TrainStep: a traced program; a CUDA graph on CuPy).

--device cpu   every installed backend against the per-sample loop, hand-vectorized NumPy, the
               GEMM-only step, PyTorch eager and torch.compile, at 1 and all BLAS threads, and a
               hand-written jax.jit step (all threads only); and (scaling) the L network's
               data-parallel throughput at 1 and 2 ranks under mpiexec (bench/scaling.py)
--device gpu   CuPy and PyTorch CUDA tensors against hand-vectorized CuPy, the GEMM-only step,
               PyTorch CUDA eager and torch.compile, each run timed between device
               synchronizations; L also at batch 1024

Results: bench/results/<name>.{json,md,png}.
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import sys
import time
import tracemalloc
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

import backprop as bp
from backprop.backends import BACKENDS

from . import peers, report, scaling

HERE = Path(__file__).resolve().parent

HAVE_TORCH = importlib.util.find_spec("torch") is not None
LOOP = "loop (per-sample)"
JAX_JIT = "jax.jit (hand-written)"
PER_CALL = 100  # S's steps per call of a backend that compiles several steps as one (JAX)
JAX_SCAN = f"jax.lax.scan (hand-written, {PER_CALL} steps a call)"


@dataclass
class Device:
    """Where a suite runs: backprop's backends there, the peers' names, how to wait for the device."""

    name: str  # "cpu" or "gpu"
    backends: list  # (label, backend, device) for each backend backprop runs on
    xp: object  # the module the array peers run on: numpy or cupy
    torch_device: str | None  # None: no PyTorch peer
    sync: object = None  # waits for queued device work (GPU); None on the CPU
    gpu: str | None = None  # the GPU's description, for the results

    def ours(self, label: str | None = None, captured: bool = False, per_call: int = 1) -> str:
        label = label or self.backends[0][0]
        how = (", captured" if captured else "") + (f", {per_call} steps a call" if per_call > 1 else "")
        return f"backprop ({label}{how})"

    @property
    def floor(self) -> str:
        return f"{self.xp.__name__} (hand-vectorized)"

    @property
    def gemm(self) -> str:
        return f"gemm only ({self.xp.__name__})"

    @property
    def torch(self) -> str:
        return "torch CUDA eager" if self.torch_device == "cuda" else "torch eager"

    @property
    def torch_compile(self) -> str:
        return "torch.compile CUDA" if self.torch_device == "cuda" else "torch.compile"


def cpu_device() -> Device:
    """Every backend that runs on the CPU here (backprop's list; NumPy first, the baseline)."""
    names = [name for name, entry in BACKENDS.items() if not entry.on_gpu and entry.unavailable() is None]
    return Device("cpu", [(name, name, None) for name in names], np, "cpu" if HAVE_TORCH else None)


def gpu_device() -> Device:
    """Every backend with a GPU here, CuPy first (the array peers run on CuPy); an error that says why
    there is none."""
    reason = BACKENDS["cupy"].unavailable()  # the hand-written peers run on CuPy
    if reason is not None:
        raise RuntimeError(f"--device gpu needs CuPy and an NVIDIA GPU: {reason}")
    import cupy

    backends = []
    for name, entry in BACKENDS.items():
        device = entry.accelerator()
        if device is not None:
            backends.append((name if entry.on_gpu else f"{name} {device}", name, None if entry.on_gpu else device))
    torch_device = BACKENDS["torch"].accelerator() if HAVE_TORCH else None  # where the PyTorch peer runs
    props = cupy.cuda.runtime.getDeviceProperties(0)
    name = props["name"].decode() if isinstance(props["name"], bytes) else props["name"]
    gpu = f"{name}, {props['totalGlobalMem'] / 2**30:.0f} GiB, CUDA runtime {cupy.cuda.runtime.runtimeGetVersion()}"
    gpu += f", CuPy {cupy.__version__}"
    return Device("gpu", backends, cupy, torch_device, cupy.cuda.runtime.deviceSynchronize, gpu)


@dataclass
class Candidate:
    run: object  # a zero-argument callable doing the work once
    scale: float = 1.0  # measured time x scale = the time reported (for work done on a subset)
    isolated: bool = False  # timed in a round of its own (the per-sample loops, see `measure`)
    sync: object = None  # called before and after each timed run (GPU candidates, JAX)
    step: object = None  # the TrainStep, whose mode the results report
    left_out: str | None = None  # why it cannot run here (then it is not timed; the results say why)


@dataclass
class Target:
    """time[numerator] / time[denominator] must be at most (or at least) `bound`."""

    text: str
    numerator: str
    denominator: str
    bound: float
    at_most: bool  # False: at least

    def check(self, times: dict) -> dict | None:
        if self.numerator not in times or self.denominator not in times:
            return None
        ratio = times[self.numerator] / times[self.denominator]
        met = ratio <= self.bound if self.at_most else ratio >= self.bound
        return {"target": self.text, "ratio": ratio, "bound": self.bound, "met": met}


def targets(config: str, dev: Device) -> list[Target]:
    """The issue's targets for a configuration, named after this device's candidates."""
    eager, captured = dev.ours(), dev.ours(captured=True)
    if dev.name == "gpu":
        return {
            "S": [Target("captured >= 3x faster than eager CuPy", eager, captured, 3.0, at_most=False)],
            "L b1024": [
                Target(f"backprop not slower than {dev.torch}", eager, dev.torch, 1.0, at_most=True),
                Target(f"backprop, captured, not slower than {dev.torch}", captured, dev.torch, 1.0, at_most=True),
            ],
        }.get(config, [])
    jax_captured = dev.ours("jax", captured=True)  # checked where both ran: JAX backend, all threads
    jax_text = f"{jax_captured} within 1.05x of the hand-written jax.jit step"
    jax_target = Target(jax_text, jax_captured, JAX_JIT, 1.05, at_most=True)
    jax_many = dev.ours("jax", captured=True, per_call=PER_CALL)
    jax_many_target = Target(f"{jax_many} within 0.85x of the NumPy floor", jax_many, dev.floor, 0.85, at_most=True)
    jax_scan_text = f"{jax_many} within 1.05x of the hand-written jax.lax.scan"
    jax_scan_target = Target(jax_scan_text, jax_many, JAX_SCAN, 1.05, at_most=True)
    return {
        "S": [
            jax_many_target,
            jax_scan_target,
            Target("backprop, captured, not slower than the NumPy floor", captured, dev.floor, 1.00, at_most=True),
            Target("backprop within 1.30x of the NumPy floor", eager, dev.floor, 1.30, at_most=True),
            Target("backprop within 1.15x of the NumPy floor", eager, dev.floor, 1.15, at_most=True),
            Target("backprop, captured, within 1.15x of the NumPy floor", captured, dev.floor, 1.15, at_most=True),
            Target("backprop, captured, >= 4x faster than PyTorch eager", dev.torch, captured, 4.0, at_most=False),
            Target("backprop, captured, >= 5x faster than the per-sample loop", LOOP, captured, 5.0, at_most=False),
            jax_target,
        ],
        "L": [
            Target("backprop within 1.10x of the GEMM-only time", eager, dev.gemm, 1.10, at_most=True),
            Target("backprop, captured, within 1.10x of the GEMM-only time", captured, dev.gemm, 1.10, True),
            Target("backprop not slower than PyTorch eager", dev.torch, eager, 1.0, at_most=False),
            jax_target,
        ],
        "AE": [
            Target("backprop within 1.2x of the vectorized formula", eager, dev.floor, 1.2, at_most=True),
            Target("backprop >= 6x faster than the per-sample loop", LOOP, eager, 6.0, at_most=False),
        ],
        "layer": [
            Target("backprop within 1.15x of matmul", eager, dev.floor, 1.15, at_most=True),
            Target("matmul >= 5x faster than outer products", "loop (outer products)", dev.floor, 5.0, False),
        ],
    }.get(config.split(" ")[0], [])


@dataclass
class Config:
    name: str
    description: str
    candidates: dict
    targets: list = field(default_factory=list)


@dataclass(frozen=True)
class Net:
    sizes: tuple
    activation: str
    output: str | None
    loss: str
    dtype: str
    lr: float


def _mnist_or_synthetic(n: int, dtype: str):
    """The first n MNIST training images (or random images of that shape, said in the results)."""
    try:
        x, y = bp.data.mnist("train", download=False)
        return x[:n].astype(dtype), y[:n], "MNIST"
    except bp.data.DataError:
        rng = np.random.default_rng(0)
        return rng.random((n, 784), dtype=np.float64).astype(dtype), rng.integers(0, 10, n), "synthetic"


def _backprop(net: Net, params, batches, backend, where, capture: bool, sync, scale=1.0, per_call=1) -> Candidate:
    """backprop's training step (TrainStep, eager or captured) over `batches` on one backend, as
    `fit` runs it (no gradients kept after a step: the hand-written peers keep none either);
    `per_call` batches to a call, stacked beforehand as for the hand-written scan
    (`TrainStep.run_stacked`, as fit's steps_per_execution)."""
    with bp.use_backend(backend, where):
        model = bp.nn.mlp(list(net.sizes), net.activation, net.output, dtype=net.dtype)
        model.load_state_dict({name: p for (name, _), p in zip(model.named_parameters(), params, strict=True)})
        be = bp.get_backend()
        data = [(be.asarray(x), be.asarray(y)) for x, y in _stacked(batches, per_call)]
    optimizer = bp.optim.SGD(model.parameters(), lr=net.lr)
    step = bp.TrainStep(model, bp.losses.LOSSES[net.loss], optimizer, capture, keep_grads=False)
    one = step.run_stacked if per_call > 1 else step

    def run():
        for x, y in data:
            one(x, y)

    entry = BACKENDS[backend]  # JAX runs asynchronously on the CPU too: a run ends when its results exist
    return Candidate(run, scale, sync=lambda: entry.synchronize([p.data for p in model.parameters()]), step=step)


def _array_peer(step_fn, params, batches, lr, xp, sync=None, scale=1.0, isolated=False) -> Candidate:
    """A hand-written step (bench/peers.py) over `batches`, on NumPy or CuPy."""
    params = [xp.array(p, copy=True) for p in params]
    data = [(xp.asarray(x), xp.asarray(y)) for x, y in batches]

    def run():
        for x, y in data:
            step_fn(params, x, y, lr, xp)

    return Candidate(run, scale, isolated, sync)


def _torch_peer(net: Net, params, batches, device: str, sync, scale=1.0) -> Candidate:
    import torch

    step = peers.torch_step_factory(list(net.sizes), net.activation, net.loss, net.dtype, net.lr, params, device)
    data = [(torch.from_numpy(x).to(device), torch.from_numpy(y).to(device)) for x, y in batches]

    def run():
        for x, y in data:
            step(x, y)

    return Candidate(run, scale, sync=sync)


def _torch_compile_peer(net: Net, params, batches, device: str, sync, scale=1.0) -> Candidate:
    """torch.compile's step, compiled here by one step on the first batch (the batches are all one
    shape, so timed runs do not compile); left out, with the reason printed, where it fails."""
    import torch

    try:
        torch._dynamo.reset()  # kernels compiled earlier are specialized to the thread count then in force
        step = peers.torch_compile_step_factory(
            list(net.sizes), net.activation, net.loss, net.dtype, net.lr, params, device
        )
        data = [(torch.from_numpy(x).to(device), torch.from_numpy(y).to(device)) for x, y in batches]
        step(*data[0])
    except Exception as error:  # no C++ compiler, no Triton, an Inductor error: a peer less, not a crash
        reason = _one_line(error)
        print(f"torch.compile left out: {reason}", flush=True)
        return Candidate(None, left_out=reason)

    def run():
        for x, y in data:
            step(x, y)

    return Candidate(run, scale, sync=sync)


def _one_line(error: Exception) -> str:
    """The error's type and the first line of its message."""
    lines = str(error).strip().splitlines()
    return f"{type(error).__name__}: {lines[0]}" if lines else type(error).__name__


def _jax_peer(net: Net, params, batches, scale=1.0) -> Candidate:
    """The hand-written jax.jit step (bench/peers.py); a run ends when its new params exist."""
    import jax.numpy as jnp

    step = peers.jax_step_factory(list(net.sizes), net.activation, net.loss, net.dtype, net.lr, params)
    data = [(jnp.asarray(x), jnp.asarray(y)) for x, y in batches]

    def run():
        for x, y in data:
            step(x, y)

    return Candidate(run, scale, sync=lambda: BACKENDS["jax"].synchronize(step.params))


def _jax_scan_peer(net: Net, params, batches, per_call: int, scale=1.0) -> Candidate:
    """The hand-written jax.lax.scan step, `per_call` batches a call (stacked beforehand)."""
    import jax.numpy as jnp

    step = peers.jax_scan_factory(list(net.sizes), net.activation, net.loss, net.dtype, net.lr, params)
    data = [(jnp.asarray(xs), jnp.asarray(ys)) for xs, ys in _stacked(batches, per_call)]

    def run():
        for xs, ys in data:
            step(xs, ys)

    return Candidate(run, scale, sync=lambda: BACKENDS["jax"].synchronize(step.params))


def _stacked(batches, per_call: int) -> list:
    """The batches `per_call` at a time, stacked on a first axis (as they are where `per_call` is 1)."""
    if per_call == 1:
        return batches
    groups = [batches[i : i + per_call] for i in range(0, len(batches), per_call)]
    return [(np.stack([x for x, _ in group]), np.stack([y for _, y in group])) for group in groups]


def _uniform(batches) -> list:
    """The batches, checked to be of one shape: a compiled peer compiles once, in the warm-up."""
    shapes = {(x.shape, y.shape) for x, y in batches}
    if len(shapes) != 1:
        raise ValueError(f"batches of several shapes {sorted(shapes)}: compiled peers would recompile in timed runs")
    return batches


def _training_candidates(dev: Device, net: Net, params, batches, floor_step, scale=1.0) -> dict:
    """The floor, the GEMM-only step, PyTorch (eager and torch.compile), the hand-written jax.jit
    step (on the CPU, where the JAX backend runs) and backprop (eager and captured) on each backend."""
    batches = _uniform(batches)
    candidates = {
        dev.floor: _array_peer(floor_step, params, batches, net.lr, dev.xp, dev.sync, scale),
        dev.gemm: _array_peer(peers.gemm_only_step, params, batches, net.lr, dev.xp, dev.sync, scale),
    }
    if dev.torch_device:
        candidates[dev.torch] = _torch_peer(net, params, batches, dev.torch_device, dev.sync, scale)
        compiled = _torch_compile_peer(net, params, batches, dev.torch_device, dev.sync, scale)
        candidates[dev.torch_compile] = compiled
    if dev.name == "cpu" and BACKENDS["jax"] in [BACKENDS[backend] for _, backend, _ in dev.backends]:
        candidates[JAX_JIT] = _jax_peer(net, params, batches, scale)
    for label, backend, where in dev.backends:
        for capture in (False, True):
            candidate = _backprop(net, params, batches, backend, where, capture, dev.sync, scale)
            candidates[dev.ours(label, capture)] = candidate
    return candidates


def config_s(dev: Device, dtype: str, steps: int) -> Config:
    """Nielsen: 784-30-10 sigmoid, quadratic cost, SGD lr 3.0, batch 10."""
    net, batch = Net((784, 30, 10), "sigmoid", "sigmoid", "quadratic", dtype, 3.0), 10
    x, labels, source = _mnist_or_synthetic(steps * batch, dtype)
    y = np.eye(10, dtype=dtype)[labels]
    batches = [(x[i : i + batch], y[i : i + batch]) for i in range(0, len(x), batch)]
    params = peers.init_mlp(net.sizes, dtype)
    epoch = 6000 / steps  # report seconds per epoch of full MNIST (60,000 samples)
    candidates = _training_candidates(dev, net, params, batches, peers.sigmoid_numpy_step, epoch)
    for label, backend, where in dev.backends:  # K steps a call where a backend compiles them as one
        if BACKENDS[backend].compiles_steps and steps % PER_CALL == 0:
            candidate = _backprop(net, params, batches, backend, where, True, dev.sync, epoch, PER_CALL)
            candidates[dev.ours(label, captured=True, per_call=PER_CALL)] = candidate
    if JAX_JIT in candidates and steps % PER_CALL == 0:  # its K-step peer beside the one-step one
        candidates[JAX_SCAN] = _jax_scan_peer(net, params, batches, PER_CALL, epoch)
    if dev.name == "cpu":  # the loop runs a tenth of the steps, scaled up
        loop = _array_peer(peers.sigmoid_loop_step, params, batches[: steps // 10], net.lr, np, None, epoch * 10, True)
        candidates[LOOP] = loop
    description = f"784-30-10 sigmoid, quadratic, SGD, batch 10, {dtype}, one epoch ({source})"
    return Config(f"S {dtype}", description, candidates, targets("S", dev))


def config_l(dev: Device, steps: int, batch: int = 128) -> Config:
    """784-512-512-10 ReLU, softmax cross-entropy, SGD, float32."""
    net = Net((784, 512, 512, 10), "relu", None, "cross_entropy", "float32", 0.05)
    x, labels, source = _mnist_or_synthetic(steps * batch, net.dtype)
    batches = [(x[i : i + batch], labels[i : i + batch]) for i in range(0, len(x), batch)]
    params = peers.init_mlp(net.sizes, net.dtype)
    candidates = _training_candidates(dev, net, params, batches, peers.relu_numpy_step)
    description = f"784-512-512-10 ReLU, cross-entropy, batch {batch}, float32, {steps} steps ({source})"
    return Config(f"L b{batch}", description, candidates, targets(f"L b{batch}" if dev.name == "gpu" else "L", dev))


def _sparse_ae_cost(model, x):
    """The UFLDL sparse-autoencoder cost, built from backprop's layers and losses."""
    hidden = bp.sigmoid(model.layers[0](x))
    reconstruction = bp.losses.quadratic_loss(bp.sigmoid(model.layers[2](hidden)), x)
    sparsity = peers.AE_BETA * bp.losses.kl_sparsity(hidden, peers.AE_RHO)
    return reconstruction + bp.losses.l2_penalty(model.parameters(), peers.AE_LAMBDA) + sparsity


def config_ae(dev: Device, m: int = 10_000) -> Config:
    """The sparse-autoencoder gradient (64-25-64, KL sparsity), one call."""
    data = bp.data.patches(m)
    label, backend, where = dev.backends[0]
    bp.manual_seed(0)
    with bp.use_backend(backend, where):
        model = bp.nn.Sequential(bp.nn.Linear(64, 25, dtype="float64"), bp.nn.Sigmoid(),
                                 bp.nn.Linear(25, 64, dtype="float64"), bp.nn.Sigmoid())  # fmt: skip
        x = bp.tensor(data)
    params = [p.numpy() for p in model.parameters()]
    device_params, device_data = [dev.xp.asarray(p) for p in params], dev.xp.asarray(data)
    candidates = {
        dev.floor: Candidate(
            lambda: peers.sparse_ae_numpy_gradient(*device_params, device_data, dev.xp), sync=dev.sync
        ),
        dev.ours(label): Candidate(lambda: bp.grad(_sparse_ae_cost(model, x), model.parameters()), sync=dev.sync),
    }
    if dev.name == "cpu":
        candidates[LOOP] = Candidate(lambda: peers.sparse_ae_loop_gradient(*params, data[: m // 10]), 10, isolated=True)
    description = f"sparse-autoencoder gradient, 64-25-64, m={m}, float64, one call"
    return Config("AE", description, candidates, targets("AE", dev))


def config_layer(dev: Device, n: int = 50_000) -> Config:
    """Linear(784, 128)-ReLU-Linear(128, 10) forward + backward on n x 784, C- and F-ordered."""
    rng, xp = np.random.default_rng(0), dev.xp
    host_x, host_upstream = rng.random((n, 784)), rng.standard_normal((n, 10))
    params = peers.init_mlp([784, 128, 10], "float64")
    label, backend, where = dev.backends[0]
    with bp.use_backend(backend, where):
        model = bp.nn.mlp([784, 128, 10], "relu", dtype="float64")
        model.load_state_dict({name: p for (name, _), p in zip(model.named_parameters(), params, strict=True)})
        be = bp.get_backend()
        x, upstream = be.asarray(host_x), be.asarray(host_upstream)
        x_fortran = xp.asfortranarray(x)
    peer_params = [xp.asarray(p) for p in params]

    def engine(inputs):
        return lambda: bp.grad(model(bp.Tensor(inputs)), model.parameters(), grad_output=upstream)

    def matmul(inputs):
        return lambda: peers.layer_numpy(*peer_params, inputs, upstream, xp)

    candidates = {
        dev.floor: Candidate(matmul(x), sync=dev.sync),
        f"{dev.floor}, F-ordered x": Candidate(matmul(x_fortran), sync=dev.sync),
        dev.ours(label): Candidate(engine(x), sync=dev.sync),
        f"{dev.ours(label)}, F-ordered x": Candidate(engine(x_fortran), sync=dev.sync),
    }
    if dev.name == "cpu":  # the loop runs on a fiftieth of the rows, scaled up
        subset = n // 50
        loop = lambda: peers.layer_outer_loop(*params, host_x[:subset], host_upstream[:subset])
        candidates["loop (outer products)"] = Candidate(loop, 50, isolated=True)
    description = f"Linear-ReLU-Linear forward+backward, {n} x 784 -> 128 -> 10, float64"
    return Config("layer", description, candidates, targets("layer", dev))


def measure(config: Config, repeats: int, warmup: int = 1) -> dict:
    """Median seconds per candidate, all but the isolated ones interleaved with each other.

    Per-sample loops are timed in rounds of their own: their many small allocations slowed
    whatever array code ran right after them (layer: backprop 0.52 s instead of 0.42 s), and
    their targets (>= 5x, >= 6x) need no finer comparison.
    """
    runnable = {k: c for k, c in config.candidates.items() if c.left_out is None}
    groups = [{k: c for k, c in runnable.items() if not c.isolated}]
    groups += [{k: c} for k, c in runnable.items() if c.isolated]
    times = {}
    for group in groups:
        times.update(_interleaved(group, repeats, warmup))
    return times


def _interleaved(candidates: dict, repeats: int, warmup: int) -> dict:
    """Runs A B C, then C B A, and so on, after a warm-up; the median of each, scaled.

    A captured step needs four calls (warm-up, capture, check, replay) before it replays: the
    warm-up runs each candidate's whole workload at least once, and twice where it is shorter than
    four steps would need. So every batch shape is seen before the timed runs: jax.jit and
    torch.compile compile there, not inside them. Each warm-up ends with its candidate's sync, so
    asynchronous work (JAX) does not spill into the next candidate's timed run.
    """
    names = list(candidates)
    for name in names:
        for _ in range(warmup if candidates[name].step is None else max(warmup, 2)):
            candidates[name].run()
        if candidates[name].sync:
            candidates[name].sync()
    times = {name: [] for name in names}
    for round_ in range(repeats):
        for name in names if round_ % 2 == 0 else reversed(names):
            candidate = candidates[name]
            if candidate.sync:
                candidate.sync()
            began = time.perf_counter()
            candidate.run()
            if candidate.sync:
                candidate.sync()
            times[name].append(time.perf_counter() - began)
    return {name: statistics.median(t) * candidates[name].scale for name, t in times.items()}


def peak_memory(capture: bool, batch: int = 128) -> float:
    """Peak bytes live during one L training step (NumPy, tracemalloc) over parameters + gradients
    + optimizer state (none for SGD) + one batch's activations."""
    sizes = [784, 512, 512, 10]
    x, labels, _ = _mnist_or_synthetic(batch, "float32")
    tracemalloc.start()
    try:
        with bp.use_backend("numpy"):
            model = bp.nn.mlp(sizes, "relu", dtype="float32")
            step = bp.TrainStep(model, bp.losses.cross_entropy, bp.optim.SGD(model.parameters(), lr=0.05), capture)
            for _ in range(4):  # a captured step replays from the fourth call on
                step(x, labels)
            tracemalloc.reset_peak()
            step(x, labels)
            _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    param_bytes = sum(p.numpy().nbytes for p in model.parameters())
    return peak / (2 * param_bytes + batch * sum(sizes) * 4)


def run_suite(dev: Device, configs, thread_settings, repeats: int) -> dict:
    from threadpoolctl import threadpool_limits

    results = {"machine": report.machine(dev.gpu), "device": dev.name, "runs": []}
    cores = results["machine"]["cores"]
    for threads in thread_settings:
        count = cores if threads == "all" else int(threads)
        # XLA sizes its thread pool once, to every core: such backends join only the all-threads runs
        limited = [b for b in dev.backends if not BACKENDS[b[1]].threads_fixed]
        here = dev if count == cores else replace(dev, backends=limited)
        if HAVE_TORCH:
            import torch

            torch.set_num_threads(count)
        with threadpool_limits(limits=count, user_api="blas"):
            for make in configs:
                config = make(here)
                times = measure(config, repeats)
                modes = {name: c.step.mode for name, c in config.candidates.items() if c.step is not None}
                left_out = {name: c.left_out for name, c in config.candidates.items() if c.left_out is not None}
                checked = [target.check(times) for target in config.targets]
                run = {"config": config.name, "description": config.description, "threads": count,
                       "baseline": dev.ours(), "seconds": times, "modes": modes, "left_out": left_out,
                       "targets": [c for c in checked if c is not None]}  # fmt: skip
                results["runs"].append(run)
                print(report.format_run(run), flush=True)
    if dev.name == "cpu" and configs:
        results["memory"] = {"eager": peak_memory(False), "captured": peak_memory(True)}
    return results


def run_scaling(quick: bool, repeats: int) -> dict:
    """The scaling configuration (bench/scaling.py), or why it did not run (no MPI here)."""
    try:
        result = scaling.run(steps=10 if quick else 40, rounds=max(1, repeats // 2 if quick else repeats))
    except RuntimeError as error:
        print(f"\nscaling: not run: {error}", flush=True)
        return {"skipped": str(error)}
    print(scaling.format_scaling(result), flush=True)
    return result


def configs_for(names, quick: bool, dev: Device) -> list:
    """Builders (dev -> Config) for the named configurations; `quick` takes fewer steps."""
    s_steps, l_steps = (300, 10) if quick else (1200, 40)
    builders = {
        "S": [lambda d: config_s(d, "float64", s_steps), lambda d: config_s(d, "float32", s_steps)],
        "L": [lambda d: config_l(d, l_steps)],
        "AE": [lambda d: config_ae(d, 2_000 if quick else 10_000)],
        "layer": [lambda d: config_layer(d, 10_000 if quick else 50_000)],
    }
    if dev.name == "gpu":
        builders["L"].append(lambda d: config_l(d, l_steps, batch=1024))
    return [make for name in names for make in builders[name]]


CONFIGS = ("S", "L", "AE", "layer", "scaling")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="backprop bench", description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=["cpu", "gpu"], default="cpu")
    parser.add_argument("--configs", default=",".join(CONFIGS), help=f"comma-separated: {', '.join(CONFIGS)}")
    parser.add_argument("--threads", default=None, help="BLAS/torch thread settings (default: 1,all; all on a GPU)")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--quick", action="store_true", help="fewer steps (for smoke runs)")
    parser.add_argument("--out", default=str(HERE / "results"))
    parser.add_argument("--name", default=None, help="results file name (default: the device)")
    args = parser.parse_args(argv)
    names = args.configs.split(",")
    unknown = set(names) - set(CONFIGS)
    if unknown:
        parser.error(f"unknown configuration(s) {sorted(unknown)}; choose from {', '.join(CONFIGS)}")
    try:
        dev = gpu_device() if args.device == "gpu" else cpu_device()
    except RuntimeError as error:
        parser.error(str(error))
    if "scaling" in names and dev.name == "gpu":
        parser.error(
            "the scaling configuration runs on the CPU (ranks of one BLAS thread): leave it out with --device gpu"
        )
    threads = (args.threads or ("all" if dev.name == "gpu" else "1,all")).split(",")
    in_process = [n for n in names if n != "scaling"]
    results = run_suite(dev, configs_for(in_process, args.quick, dev), threads if in_process else [], args.repeats)
    if "scaling" in names:
        results["scaling"] = run_scaling(args.quick, args.repeats)
    name = args.name or dev.name
    report.write_results(results, Path(args.out), name)
    print(f"\nresults written to {args.out}/{name}.{{md,json{',png' if results['runs'] else ''}}}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
