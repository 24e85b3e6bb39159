"""How cost grows (`python -m bench.curves`): time per sample against batch size and hidden width.

The network is an MLP 784-H-10, ReLU, softmax cross-entropy, SGD (lr 0.05), float32: config L's
layers and loss with one hidden layer. ReLU and cross-entropy rather than S's sigmoid and
quadratic cost: they are how such networks are trained today, their element-wise work is small
(one comparison per hidden unit, a softmax over 10 outputs), so what is left beside the matrix
products is the per-call overhead these curves are about, and the hand-written peer is L's
(`peers.relu_numpy_step`), whose targets are stated against the GEMM-only floor.

Two sweeps, at one BLAS thread (threadpoolctl) and one PyTorch thread:
- batch size B = 1, 2, 4, ..., 4096 at hidden width 128;
- hidden width H = 32, 64, ..., 4096 at batch 128.
Width 128 for the first and batch 128 for the second put one point (B = H = 128) in both panels,
measured twice: the two values show the run's noise. At width 30 (Nielsen's) the first sweep
would stay in the overhead longer, but the second sweep's first point (32) is close to it.

The candidates: backprop's TrainStep eager and captured (a traced program, replayed from its
fourth call), the hand-vectorized NumPy step, PyTorch eager, and the GEMM-only step (the matrix
products alone: where BLAS is all the cost). Each point gets its own number of steps, from a
calibration of the hand NumPy step on a few calls, so that it runs about `seconds` (0.1 s) per
candidate and repeat; slower candidates take longer by their ratio to it. The steps cycle over a
pool of 4 x the largest batch of samples. Candidates run interleaved (suite._interleaved) and
the medians are reported as seconds per sample: median / (steps x B).

Results: <out>/<name>.{png,md,json}: two log-log panels (time per sample against B and H, one line
per candidate), both tables with each candidate's ratio to hand NumPy, and where the GEMMs take
half and 80% of each candidate's time.

At batch 1 the first layer's weight gradient, x.T @ delta, is a (784, 1) @ (1, H) product, which
np.matmul computes in its own loop rather than BLAS's GEMM (np.dot, which calls BLAS, is several
times faster on it): every NumPy candidate, the GEMM-only one included, pays it, PyTorch does not.
Each run times that product both ways (`outer_product` in the results).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np

import backprop as bp
from backprop.files import atomic_write

from . import peers, report, suite

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
INPUTS, CLASSES, LR, DTYPE = 784, 10, 0.05, "float32"
HIDDEN, BATCH = 128, 128  # the batch sweep's width, the width sweep's batch
BATCHES = tuple(2**k for k in range(13))  # 1 .. 4096
WIDTHS = tuple(2**k for k in range(5, 13))  # 32 .. 4096
QUICK_BATCHES, QUICK_WIDTHS = (1, 64, 1024), (32, 256, 2048)
SECONDS, QUICK_SECONDS = 0.1, 0.01  # per candidate and repeat
MIN_STEPS, MAX_STEPS = 2, 10_000
SHARES = (0.5, 0.8)  # GEMM-only time / a candidate's time: where BLAS takes half, and most, of it


def device() -> suite.Device:
    """backprop on NumPy only; the peers on NumPy, PyTorch (where installed) on the CPU."""
    return suite.Device("cpu", [("numpy", "numpy", None)], np, "cpu" if suite.HAVE_TORCH else None)


def candidates(dev: suite.Device, net: suite.Net, params, batches) -> dict:
    """backprop captured and eager, hand NumPy, PyTorch eager and GEMM-only over `batches`."""
    found = {
        dev.ours(captured=True): suite._backprop(net, params, batches, "numpy", None, True, None),
        dev.ours(): suite._backprop(net, params, batches, "numpy", None, False, None),
        dev.floor: suite._array_peer(peers.relu_numpy_step, params, batches, net.lr, np),
    }
    if dev.torch_device:
        found[dev.torch] = suite._torch_peer(net, params, batches, dev.torch_device, None)
    found[dev.gemm] = suite._array_peer(peers.gemm_only_step, params, batches, net.lr, np)
    return found


def calibrated_steps(params, x, labels, seconds: float) -> int:
    """Steps for which the hand NumPy step takes about `seconds` on this batch (timed over doubling
    numbers of calls until they take a tenth of it), within MIN_STEPS and MAX_STEPS."""
    params = [p.copy() for p in params]
    peers.relu_numpy_step(params, x, labels, LR)  # the first call pays for the caches
    calls = 1
    while True:
        began = time.perf_counter()
        for _ in range(calls):
            peers.relu_numpy_step(params, x, labels, LR)
        elapsed = time.perf_counter() - began
        if elapsed >= seconds / 10 or calls >= MAX_STEPS:
            break
        calls *= 2
    return min(MAX_STEPS, max(MIN_STEPS, round(seconds * calls / max(elapsed, 1e-9))))


def measure_point(dev: suite.Device, batch: int, hidden: int, pool, seconds: float, repeats: int) -> dict:
    """One point of a curve: each candidate's median seconds over `steps` steps, and per sample."""
    net = suite.Net((INPUTS, hidden, CLASSES), "relu", None, "cross_entropy", DTYPE, LR)
    params = peers.init_mlp(net.sizes, DTYPE)
    x, labels = pool
    steps = calibrated_steps(params, x[:batch], labels[:batch], seconds)
    distinct = len(x) // batch  # the steps cycle over the pool's first `distinct` batches
    starts = [(i % distinct) * batch for i in range(steps)]
    batches = [(x[s : s + batch], labels[s : s + batch]) for s in starts]
    found = candidates(dev, net, params, batches)
    times = suite._interleaved(found, repeats, warmup=math.ceil(4 / steps))  # a captured step replays from call 4
    return {"batch": batch, "hidden": hidden, "steps": steps, "seconds": times,
            "per_sample": {name: t / (steps * batch) for name, t in times.items()},
            "modes": {name: c.step.mode for name, c in found.items() if c.step is not None}}  # fmt: skip


def gemm_flops(hidden: int) -> int:
    """Floating-point operations per sample of the GEMM-only step: 2 x the multiply-adds of
    x @ W1, h @ W2 (forward), h.T @ d2, d2 @ W2.T and x.T @ d1 (backward)."""
    return 2 * (2 * INPUTS * hidden + 3 * hidden * CLASSES)


def outer_product(hidden: int = HIDDEN, calls: int = 200) -> dict:
    """Microseconds for batch 1's first weight gradient, x.T @ delta ((784, 1) @ (1, hidden)), with
    np.matmul and with np.dot (the best of three rounds of `calls` each)."""
    rng = np.random.default_rng(0)
    x, delta = rng.random((1, INPUTS), dtype=DTYPE), rng.random((1, hidden), dtype=DTYPE)
    best = {}
    for name, product in (("matmul", np.matmul), ("dot", np.dot)):
        rounds = []
        for _ in range(3):
            began = time.perf_counter()
            for _ in range(calls):
                product(x.T, delta)
            rounds.append((time.perf_counter() - began) / calls * 1e6)
        best[f"{name}_us"] = min(rounds)
    return {"hidden": hidden, **best}


def blas_from(points: list, key: str, name: str, gemm: str, share: float):
    """The first value of `key` from which GEMM-only takes at least `share` of `name`'s time at every
    point after it; None where it never does."""
    held = [p["seconds"][gemm] >= share * p["seconds"][name] for p in points]
    return next((p[key] for i, p in enumerate(points) if all(held[i:])), None)


def run(batches=BATCHES, widths=WIDTHS, seconds: float = SECONDS, repeats: int = 5, echo=print) -> dict:
    """Both sweeps at one BLAS and one PyTorch thread (PyTorch's setting restored after): the results."""
    from threadpoolctl import threadpool_limits

    dev = device()
    sweeps = [("batch", "batch size", f"hidden width {HIDDEN}", [(b, HIDDEN) for b in batches]),
              ("hidden", "hidden width", f"batch {BATCH}", [(BATCH, h) for h in widths])]  # fmt: skip
    largest = max(b for *_, points in sweeps for b, _ in points)
    x, labels, source = suite._mnist_or_synthetic(4 * largest, DTYPE)
    torch_threads = None
    if suite.HAVE_TORCH:
        import torch

        torch_threads = torch.get_num_threads()
        torch.set_num_threads(1)
    try:
        with threadpool_limits(limits=1, user_api="blas"):
            machine = report.machine(None)  # BLAS and PyTorch threads as they are while measuring
            outer = outer_product()
            results = {"machine": machine, "threads": {"blas": 1, "torch": 1 if torch_threads else None},
                       "description": f"{INPUTS}-H-{CLASSES} ReLU, softmax cross-entropy, SGD lr {LR}, {DTYPE} "
                       f"({source} data)",
                       "seconds_per_candidate": seconds, "repeats": repeats, "baseline": dev.floor,
                       "gemm": dev.gemm, "candidates": [], "sweeps": [], "outer_product": outer}  # fmt: skip
            for key, label, fixed, points in sweeps:
                measured = []
                for batch, hidden in points:
                    point = measure_point(dev, batch, hidden, (x, labels), seconds, repeats)
                    measured.append(point)
                    echo(_progress(key, point, dev.floor))
                results["sweeps"].append({"key": key, "label": label, "fixed": fixed, "points": measured})
    finally:
        if torch_threads:
            torch.set_num_threads(torch_threads)
    results["candidates"] = names = list(results["sweeps"][0]["points"][0]["seconds"])
    for sweep in results["sweeps"]:
        sweep["blas_from"] = {name: {str(s): blas_from(sweep["points"], sweep["key"], name, dev.gemm, s)
                                     for s in SHARES} for name in names if name != dev.gemm}  # fmt: skip
    return results


def _progress(key: str, point: dict, base: str) -> str:
    per = point["per_sample"]
    cells = ", ".join(f"{name} {per[name] * 1e6:.3g} us ({per[name] / per[base]:.2f}x)" for name in per)
    return f"{key} {point[key]:>4} ({point['steps']} steps): {cells}"


# --- the report ---


def _title(results: dict) -> str:
    m = results["machine"]
    torch = ", 1 PyTorch thread" if results["threads"]["torch"] else ""
    return (f"{results['description']}; {m['cpu']}, {m['cores']} cores; 1 BLAS thread "
            f"({m['blas']['vendor']} {m['blas']['version']}){torch}")  # fmt: skip


def format_markdown(results: dict, name: str) -> str:
    """Both tables (microseconds per sample and each candidate's ratio to hand NumPy, and the
    GEMM-only step's rate), and where the GEMMs take half and 80% of each candidate's time."""
    m, base, gemm, names = results["machine"], results["baseline"], results["gemm"], results["candidates"]
    outer = results["outer_product"]
    lines = [f"# How cost grows: {name}", "", f"{_title(results)}; versions {m['versions']}.", "",
             f"Microseconds per sample (median of {results['repeats']} interleaved repeats of `steps` training "
             f"steps, about {results['seconds_per_candidate']} s of {base} each, divided by steps x batch), "
             f"and in brackets the ratio to {base}; GFLOP/s: the GEMM-only step's rate. The point batch {BATCH}, "
             f"width {HIDDEN} is in both tables, measured twice: the difference is the run's noise. A captured "
             "candidate that could not be captured is marked (ran eager).", "",
             f"At batch 1, the first layer's weight gradient x.T @ delta, a (784, 1) @ (1, {outer['hidden']}) "
             f"product, took {outer['matmul_us']:.0f} us with np.matmul (its own loop, not BLAS) and "
             f"{outer['dot_us']:.0f} us with np.dot (BLAS): every NumPy candidate pays the former, PyTorch "
             "does not."]  # fmt: skip
    for sweep in results["sweeps"]:
        key = sweep["key"]
        lines += ["", f"## Against {sweep['label']} ({sweep['fixed']})", "",
                  f"| {sweep['label']} | steps | " + " | ".join(names) + " | GFLOP/s |",
                  "|---:|---:|" + "---:|" * (len(names) + 1)]  # fmt: skip
        for point in sweep["points"]:
            per = point["per_sample"]
            cells = []
            for n in names:
                fell_back = " (ran eager)" if "captured" in n and point["modes"].get(n) == "eager" else ""
                cells.append(f"{per[n] * 1e6:.3g} ({per[n] / per[base]:.2f}x){fell_back}")
            rate = gemm_flops(point["hidden"]) / per[gemm] / 1e9
            lines.append(f"| {point[key]} | {point['steps']} | " + " | ".join(cells) + f" | {rate:.0f} |")
        shares = list(next(iter(sweep["blas_from"].values())))
        lines += ["", f"Where {gemm} takes {' and '.join(f'{float(s):.0%}' for s in shares)} of each candidate's "
                  f"time, from that {sweep['label']} on (- : not within the sweep):", "",
                  "| candidate | " + " | ".join(f"{float(s):.0%} from" for s in shares) + " |",
                  "|---|" + "---:|" * len(shares)]  # fmt: skip
        for n, found in sweep["blas_from"].items():
            lines.append(f"| {n} | " + " | ".join("-" if v is None else str(v) for v in found.values()) + " |")
    return "\n".join(lines) + "\n"


STYLES = {  # by how the candidate's name starts: colour, line style, marker
    "backprop (numpy, captured)": ("tab:orange", "-", "o"),
    "backprop": ("tab:orange", "--", "s"),
    "numpy": ("black", "-", "^"),
    "torch": ("tab:blue", "-", "D"),
    "gemm": ("tab:gray", ":", "v"),
}


def _chart(results: dict, path: Path) -> None:
    """Two log-log panels: seconds per sample against batch size and against hidden width."""
    from matplotlib.ticker import FormatStrFormatter, NullFormatter, NullLocator

    fig = bp.plots._figure(figsize=(11, 4.6))
    axes = fig.subplots(1, len(results["sweeps"]), squeeze=False)[0]
    for ax, sweep in zip(axes, results["sweeps"], strict=True):
        values = [p[sweep["key"]] for p in sweep["points"]]
        for name in results["candidates"]:
            color, line, marker = next(s for start, s in STYLES.items() if name.startswith(start))
            per = [p["per_sample"][name] * 1e6 for p in sweep["points"]]
            ax.plot(values, per, color=color, linestyle=line, marker=marker, markersize=4, label=name)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xticks(values, [str(v) for v in values], fontsize=7)
        ax.xaxis.set_minor_locator(NullLocator())
        ax.yaxis.set_major_formatter(FormatStrFormatter("%g"))
        ax.yaxis.set_minor_formatter(NullFormatter())
        ax.set_xlabel(f"{sweep['label']} ({sweep['fixed']})")
        ax.set_ylabel("microseconds per sample (log)")
        ax.grid(True, which="major", alpha=0.3)
        ax.set_title(f"time per sample against {sweep['label']}", fontsize=10)
    axes[0].legend(fontsize=8)
    fig.suptitle(_title(results), fontsize=9)
    bp.plots._save(fig, path)


def write_results(results: dict, out: Path, name: str) -> None:
    """<out>/<name>.md, .json and .png, each written atomically (no chart without matplotlib)."""
    out.mkdir(parents=True, exist_ok=True)
    text = format_markdown(results, name)
    atomic_write(out / f"{name}.md", lambda f: f.write(text.encode()))
    atomic_write(out / f"{name}.json", lambda f: f.write(json.dumps(results, indent=2).encode()))
    try:
        _chart(results, out / f"{name}.png")
    except ImportError:
        print("matplotlib is not installed: no chart", file=sys.stderr)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.curves", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help=f"batches {QUICK_BATCHES}, widths {QUICK_WIDTHS}, {QUICK_SECONDS} s a candidate "
                        "(a smoke run: needs --out outside bench/results)")  # fmt: skip
    parser.add_argument("--out", default=str(RESULTS))
    parser.add_argument("--name", default="curves", help="results file name, without suffix (default: curves)")
    parser.add_argument("--repeats", type=int, default=None, help="interleaved repeats per point (default 5; 3 quick)")
    parser.add_argument("--seconds", type=float, default=None,
                        help=f"about how long each candidate runs per repeat (default {SECONDS}; {QUICK_SECONDS} "
                        "quick)")  # fmt: skip
    args = parser.parse_args(argv)
    repeats = args.repeats if args.repeats is not None else (3 if args.quick else 5)
    seconds = args.seconds if args.seconds is not None else (QUICK_SECONDS if args.quick else SECONDS)
    if repeats < 1:
        parser.error(f"--repeats must be at least 1, not {repeats}")
    if not (math.isfinite(seconds) and 0 < seconds <= 60):
        parser.error(f"--seconds must be more than 0 and at most 60, not {seconds}")
    if not args.name or Path(args.name).name != args.name or args.name in (".", ".."):
        parser.error(f"--name is a file name without a folder, not {args.name!r}")
    out = Path(args.out)
    if args.quick and out.resolve() == RESULTS.resolve():
        parser.error("--quick makes smoke figures, not results: give --out a folder outside bench/results")
    batches, widths = (QUICK_BATCHES, QUICK_WIDTHS) if args.quick else (BATCHES, WIDTHS)
    results = run(batches, widths, seconds, repeats)
    write_results(results, out, args.name)
    print(f"\nresults written to {out}/{args.name}.{{md,json,png}}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
