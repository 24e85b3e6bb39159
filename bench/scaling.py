"""The scaling configuration (`backprop bench --configs scaling`): data-parallel throughput of the
L network (784-512-512-10 ReLU, cross-entropy, SGD, float32) at per-rank batch 128, one BLAS
thread per rank, at 1 and 2 ranks under mpiexec, with the all-reduce's time per step and share.

Each world size runs as its own job (`mpiexec -n W python -m bench.scaling --worker ...`), twice,
in the order 1 2 2 1; a job warms up and then times rounds of steps between barriers. From the
measured compute time per step, the results add the ring all-reduce model of bench/README.md:
what a step would cost at 8, 64 and 512 ranks on a given network.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

SIZES, BATCH, LR = (784, 512, 512, 10), 128, 0.05
TARGET = 1.8  # throughput at 2 ranks over 1 rank, on 2 cores
NETWORKS = {  # name: (bytes per second one way, latency per message in seconds)
    "10 Gb/s Ethernet (TCP)": (1.25e9, 30e-6),
    "100 Gb/s InfiniBand": (12.5e9, 3e-6),
}
MODEL_RANKS = (8, 64, 512)


def mpiexec() -> str | None:
    """The MPI launcher beside this Python (the mpich wheel's) or on PATH, if mpi4py is installed."""
    import importlib.util

    if importlib.util.find_spec("mpi4py") is None:
        return None
    return shutil.which("mpiexec", path=str(Path(sys.executable).parent)) or shutil.which("mpiexec")


def ring_all_reduce_seconds(nbytes: float, ranks: int, bandwidth: float, latency: float) -> float:
    """A ring all-reduce of `nbytes` over `ranks`: 2(W-1) messages of nbytes/W each (reduce-scatter,
    then all-gather), one after the other (Patarasuk and Yuan's bandwidth-optimal algorithm)."""
    if ranks == 1:
        return 0.0
    return 2 * (ranks - 1) * (latency + nbytes / ranks / bandwidth)


def model_table(compute_seconds: float, nbytes: int, per_rank_batch: int) -> list[dict]:
    """Step time, all-reduce share and scaling efficiency at MODEL_RANKS on each of NETWORKS,
    for a step that computes for `compute_seconds` and then all-reduces `nbytes` (no overlap)."""
    rows = []
    for network, (bandwidth, latency) in NETWORKS.items():
        for ranks in MODEL_RANKS:
            reduce = ring_all_reduce_seconds(nbytes, ranks, bandwidth, latency)
            step = compute_seconds + reduce
            rows.append({"network": network, "ranks": ranks, "all_reduce_ms": reduce * 1e3, "step_ms": step * 1e3,
                         "share": reduce / step, "efficiency": compute_seconds / step,
                         "samples_per_second": ranks * per_rank_batch / step})  # fmt: skip
    return rows


# --- one job (a world of W ranks) ---


def worker(steps: int, rounds: int, capture: bool) -> None:
    """Time `rounds` rounds of `steps` steps of L on this world; rank 0 prints one JSON line."""
    from threadpoolctl import threadpool_limits

    import backprop as bp
    from backprop import distributed

    world = distributed.world()
    with threadpool_limits(limits=1, user_api="blas"):
        x, y = _data(BATCH * world.size * steps)
        bp.manual_seed(0)
        model = bp.nn.mlp(list(SIZES), "relu", dtype="float32")
        optimizer = bp.optim.SGD(model.parameters(), lr=LR)
        distributed.broadcast_state(model, optimizer)
        all_reduce = distributed.AllReduce(world)
        hooks = [all_reduce] if world.size > 1 else []
        step = bp.TrainStep(model, bp.losses.cross_entropy, optimizer, capture=capture, gradient_hooks=hooks)
        batches = list(bp.data.Batches(x, y, BATCH, shuffle=False, shard=(world.rank, world.size)))
        for inputs, targets in batches[:8]:  # warm-up: a captured step replays from its fourth call
            step(inputs, targets)
        seconds, reducing = [], []
        for _ in range(rounds):
            _barrier(world)
            began, before = time.perf_counter(), all_reduce.seconds
            for inputs, targets in batches:
                step(inputs, targets)
            _barrier(world)
            seconds.append(_max(world, time.perf_counter() - began))
            reducing.append(_mean(world, all_reduce.seconds - before))
    if world.is_main:
        from mpi4py import MPI

        nbytes = sum(p.numpy().nbytes for p in model.parameters())
        print(json.dumps({"ranks": world.size, "steps": len(batches), "seconds": seconds,
                          "all_reduce_seconds": reducing, "mode": step.mode, "gradient_bytes": nbytes,
                          "mpi": " ".join(MPI.Get_library_version().splitlines()[0].split())}))  # fmt: skip


def _data(n: int):
    import backprop as bp

    try:
        x, y = bp.data.mnist("train", download=False)
        return x[:n].astype("float32"), y[:n]
    except bp.data.DataError:
        rng = np.random.default_rng(0)
        return rng.random((n, 784), dtype=np.float32), rng.integers(0, 10, n)


def _barrier(world) -> None:
    if world.size > 1:
        world.comm.Barrier()


def _max(world, value: float) -> float:
    return value if world.size == 1 else world.comm.allreduce(value, op=_mpi_op("MAX"))


def _mean(world, value: float) -> float:
    return value if world.size == 1 else world.comm.allreduce(value) / world.size


def _mpi_op(name: str):
    from mpi4py import MPI

    return getattr(MPI, name)


# --- the driver ---


def run(steps: int = 40, rounds: int = 5, capture: bool = True, ranks=(1, 2)) -> dict:
    """The scaling results: each world size's jobs, medians, the speedup against the target and the
    ring model. A RuntimeError that says why where mpiexec or a job fails."""
    launcher = mpiexec()
    if launcher is None:
        raise RuntimeError('the scaling configuration needs mpi4py and an MPI library: pip install "backprop[mpi]"')
    order = [*ranks, *reversed(ranks)]
    jobs = {w: [] for w in ranks}
    for w in order:
        jobs[w].append(_launch(launcher, w, steps, rounds, capture))
    summary = {}
    for w, runs in jobs.items():
        step_seconds = statistics.median(s for run in runs for s in run["seconds"]) / runs[0]["steps"]
        reduce_seconds = statistics.median(s for run in runs for s in run["all_reduce_seconds"]) / runs[0]["steps"]
        summary[w] = {"step_ms": step_seconds * 1e3, "all_reduce_ms": reduce_seconds * 1e3,
                      "share": reduce_seconds / step_seconds, "samples_per_second": w * BATCH / step_seconds,
                      "mode": runs[0]["mode"]}  # fmt: skip
    first, last = min(ranks), max(ranks)
    speedup = summary[last]["samples_per_second"] / summary[first]["samples_per_second"]
    compute = summary[first]["step_ms"] / 1e3
    nbytes = jobs[first][0]["gradient_bytes"]
    return {
        "description": f"784-512-512-10 ReLU, cross-entropy, SGD, float32, batch {BATCH} per rank, 1 BLAS thread "
        f"per rank, {steps} steps per round, {'captured' if capture else 'eager'}",
        "ranks": {str(w): s for w, s in summary.items()},
        "speedup": speedup,
        "target": {
            "text": f"throughput at {last} ranks >= {TARGET}x 1 rank",
            "bound": TARGET,
            "met": speedup >= TARGET,
        },
        "gradient_bytes": nbytes,
        "mpi": jobs[first][0]["mpi"],
        "model": model_table(compute, nbytes, BATCH),
        "jobs": {str(w): runs for w, runs in jobs.items()},
    }


def _launch(launcher: str, ranks: int, steps: int, rounds: int, capture: bool) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PMI_", "OMPI_", "PMIX_", "MPI_"))}
    env.update(OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(Path(__file__).resolve().parent.parent),
                                                      env.get("PYTHONPATH")]))  # fmt: skip
    command = [launcher, "-n", str(ranks), sys.executable, "-m", "bench.scaling", "--worker",
               "--steps", str(steps), "--rounds", str(rounds), *([] if capture else ["--eager"])]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=1800)
    if result.returncode != 0:
        raise RuntimeError(f"the scaling job of {ranks} rank(s) failed ({result.returncode}): {result.stderr[-2000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def format_scaling(scaling: dict) -> str:
    """The Markdown section of a scaling run: measured, then the ring model."""
    lines = [f"\n### scaling: {scaling['description']}", "", f"MPI: {scaling['mpi']}.", "",
             "| ranks | ms per step | all-reduce ms per step | all-reduce share | samples/s | step ran |",
             "|---:|---:|---:|---:|---:|---|"]  # fmt: skip
    for w, s in scaling["ranks"].items():
        lines.append(f"| {w} | {s['step_ms']:.2f} | {s['all_reduce_ms']:.3f} | {s['share']:.1%} | "
                     f"{s['samples_per_second']:.0f} | {s['mode']} |")  # fmt: skip
    t = scaling["target"]
    lines += ["", "| target | ratio | bound | met |", "|---|---:|---:|---|",
              f"| {t['text']} | {scaling['speedup']:.2f} | {t['bound']} | {'yes' if t['met'] else 'no'} |", "",
              f"Ring all-reduce model (bench/README.md) from the 1-rank step and {scaling['gradient_bytes']:,} "
              "gradient bytes, all-reduced after backward (no overlap):", "",
              "| network | ranks | all-reduce ms | step ms | share | efficiency | samples/s |",
              "|---|---:|---:|---:|---:|---:|---:|"]  # fmt: skip
    for row in scaling["model"]:
        lines.append(f"| {row['network']} | {row['ranks']} | {row['all_reduce_ms']:.2f} | {row['step_ms']:.2f} | "
                     f"{row['share']:.0%} | {row['efficiency']:.0%} | {row['samples_per_second']:,.0f} |")  # fmt: skip
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.scaling", description=__doc__.splitlines()[0])
    parser.add_argument("--worker", action="store_true", help="run as one rank of a job (under mpiexec)")
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--eager", action="store_true", help="the eager step (default: captured)")
    args = parser.parse_args(argv)
    if args.worker:
        worker(args.steps, args.rounds, not args.eager)
    else:
        print(format_scaling(run(args.steps, args.rounds, not args.eager)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
