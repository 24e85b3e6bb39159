"""What a benchmark run reports: the machine it ran on, and a Markdown table, JSON and a chart.

Ratios are the headline: each run's table is relative to backprop's eager step on its first
backend, and each target is a ratio of two candidates measured in the same run.
"""

from __future__ import annotations

import importlib.util
import json
import os
import platform
import sys
from pathlib import Path

import numpy as np

import backprop as bp
from backprop.files import atomic_write


def machine(gpu: str | None) -> dict:
    """CPU, cores, BLAS and library versions, and `gpu`: the GPU's description on a GPU run."""
    info = {"python": platform.python_version(), "platform": platform.platform(), "cores": os.cpu_count()}
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
        info["cpu"] = next(line.split(":", 1)[1].strip() for line in lines if "model name" in line)
    except (OSError, StopIteration):
        info["cpu"] = platform.processor()
    info["blas"] = bp.blas.numpy_blas()
    info["versions"] = {"backprop": bp.__version__, "numpy": np.__version__}
    if importlib.util.find_spec("torch") is not None:
        import torch

        info["versions"]["torch"] = torch.__version__
        info["torch_threads"] = torch.get_num_threads()
    info["gpu"] = gpu
    return info


def format_run(run: dict) -> str:
    base_name = run["baseline"]
    base = run["seconds"].get(base_name)
    lines = [f"\n### {run['config']}, {run['threads']} thread(s): {run['description']}", "",
             f"| candidate | median seconds | time / {base_name} |", "|---|---:|---:|"]  # fmt: skip
    for name, seconds in sorted(run["seconds"].items(), key=lambda item: item[1]):
        fell_back = "captured" in name and run["modes"].get(name) == "eager"
        ratio = f"{seconds / base:.2f}x" if base else ""
        lines.append(f"| {name}{' (ran eager)' if fell_back else ''} | {seconds:.4f} | {ratio} |")
    for name, reason in run.get("left_out", {}).items():
        lines.append(f"| {name}: left out ({reason.replace('|', '/')}) | | |")
    if run["targets"]:
        lines += ["", "| target | ratio | bound | met |", "|---|---:|---:|---|"]
        for t in run["targets"]:
            lines.append(f"| {t['target']} | {t['ratio']:.2f} | {t['bound']} | {'yes' if t['met'] else 'no'} |")
    return "\n".join(lines)


def write_results(results: dict, out: Path, name: str) -> None:
    out.mkdir(parents=True, exist_ok=True)
    m = results["machine"]
    header = [f"# backprop benchmarks: {name}", "",
              f"Machine: {m['cpu']}, {m['cores']} cores; BLAS {m['blas']['vendor']} {m['blas']['version']}; "
              f"GPU: {m['gpu'] or 'none'}; versions {m['versions']}.", "",
              "Medians of interleaved runs after a warm-up; ratios are the headline (machines are noisy). "
              "GPU candidates are timed with a device synchronization around each run. A captured candidate "
              "that could not be captured is marked (ran eager)."]  # fmt: skip
    if results.get("memory"):
        header.append(
            f"Peak memory of one L step (NumPy, tracemalloc): eager {results['memory']['eager']:.2f}x, captured "
            f"{results['memory']['captured']:.2f}x (parameters + gradients + optimizer state + one batch's "
            "activations)."
        )
    sections = [format_run(run) for run in results["runs"]]
    if "scaling" in results:
        from .scaling import format_scaling

        skipped = results["scaling"].get("skipped")
        sections.append(f"\n### scaling: not run: {skipped}" if skipped else format_scaling(results["scaling"]))
    text = "\n".join(header + sections) + "\n"
    atomic_write(out / f"{name}.md", lambda f: f.write(text.encode()))
    atomic_write(out / f"{name}.json", lambda f: f.write(json.dumps(results, indent=2).encode()))
    try:
        if results["runs"]:
            _chart(results, out / f"{name}.png")
    except ImportError:
        print("matplotlib is not installed: no chart", file=sys.stderr)


def _chart(results: dict, path: Path) -> None:
    """One panel per configuration (columns) and thread setting (rows): time / the run's baseline."""
    plt = bp.plots._pyplot()
    from matplotlib.ticker import NullFormatter, ScalarFormatter

    runs = results["runs"]
    configs = list(dict.fromkeys(run["config"] for run in runs))
    threads = list(dict.fromkeys(run["threads"] for run in runs))
    fig, axes = plt.subplots(len(threads), len(configs), figsize=(3.8 * len(configs), 3.0 * len(threads)),
                             squeeze=False, constrained_layout=True)  # fmt: skip
    for run in runs:
        ax = axes[threads.index(run["threads"])][configs.index(run["config"])]
        base = run["seconds"].get(run["baseline"]) or 1.0
        names = sorted(run["seconds"], key=run["seconds"].get)
        colors = ["tab:orange" if name.startswith("backprop") else "tab:gray" for name in names]
        ax.barh(names, [run["seconds"][n] / base for n in names], color=colors)
        ax.set_xscale("log")
        ax.xaxis.set_major_formatter(ScalarFormatter())
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.axvline(1.0, color="k", lw=0.8)
        ax.set_title(f"{run['config']}, {run['threads']} thread(s)", fontsize=9)
        ax.tick_params(labelsize=7)
    fig.suptitle("time relative to backprop's eager step, log scale; shorter is faster")
    bp.plots._save(fig, path)
    plt.close(fig)
