"""The benchmark suite runs (in small sizes) and reports ratios, targets and how captured steps ran.

Timings are never asserted: machines are noisy. The GPU configurations are built here on a
stand-in device (PyTorch tensors on the CPU), so their code runs wherever the tests run.
"""

import json
import shutil
import sys
from pathlib import Path

import pytest
from conftest import selected_backends

pytestmark = pytest.mark.skipif("numpy" not in selected_backends(), reason="the suite runs once, with NumPy")


@pytest.fixture(scope="module")
def suite():
    from backprop.bench import checkout_bench, load_suite

    return load_suite(checkout_bench())


def test_cpu_suite_writes_tables_and_json_with_targets(suite, tmp_path):
    args = ["--quick", "--repeats", "1", "--threads", "1", "--configs", "S,L,AE,layer", "--out", str(tmp_path)]
    assert suite.main([*args, "--name", "smoke"]) == 0
    results = json.loads((tmp_path / "smoke.json").read_text())
    runs = {run["config"]: run for run in results["runs"]}
    assert set(runs) == {"S float64", "S float32", "L b128", "AE", "layer"}
    s = runs["S float64"]
    expected = {"numpy (hand-vectorized)", "gemm only (numpy)", "loop (per-sample)", "backprop (numpy)"}
    expected |= {"torch eager", "backprop (torch, captured)"} if suite.HAVE_TORCH else set()
    assert expected <= set(s["seconds"])
    if suite.HAVE_TORCH:  # timed, or left out with the reason torch.compile gave
        assert "torch.compile" in s["seconds"] or s["left_out"]["torch.compile"]
    assert "jax.jit (hand-written)" not in s["seconds"]  # JAX joins only the all-threads runs
    assert s["modes"]["backprop (numpy, captured)"] == "traced" and s["modes"]["backprop (numpy)"] == "eager"
    assert {t["target"] for t in s["targets"]} >= {
        "backprop, captured, not slower than the NumPy floor",  # the performance issue's targets 1 and 2
        "backprop within 1.30x of the NumPy floor",
        "backprop, captured, within 1.15x of the NumPy floor",
    }
    assert all(isinstance(t["met"], bool) and t["ratio"] > 0 for run in runs.values() for t in run["targets"])
    assert 0 < results["memory"]["eager"] < 3 and 0 < results["memory"]["captured"] < 3
    table = (tmp_path / "smoke.md").read_text()
    assert "| backprop (numpy, captured) |" in table and "GPU: none" in table


def test_gpu_configurations_build_and_run_on_a_stand_in_device(suite, tmp_path):
    pytest.importorskip("torch")
    stand_in = suite.Device("gpu", [("torch", "torch", "cpu")], suite.np, "cpu", sync=lambda: None, gpu="stand-in")
    configs = suite.configs_for(["S", "L"], quick=True, dev=stand_in)
    assert len(configs) == 4  # S float64, S float32, L b128, L b1024
    results = suite.run_suite(stand_in, configs[2:], ["1"], repeats=1)
    runs = {run["config"]: run for run in results["runs"]}
    assert set(runs) == {"L b128", "L b1024"} and results["machine"]["gpu"] == "stand-in"
    assert "loop (per-sample)" not in runs["L b1024"]["seconds"]
    assert runs["L b1024"]["modes"]["backprop (torch, captured)"] == "traced"
    assert [t["target"] for t in runs["L b1024"]["targets"]][0] == "backprop not slower than torch eager"


def test_the_suite_is_imported_from_the_checkout_without_touching_sys_path(suite):
    from backprop.bench import checkout_bench, load_suite

    before = list(sys.path)
    assert load_suite(checkout_bench()) is suite and sys.path == before
    assert Path(suite.__file__).parent == checkout_bench()


def test_backprop_bench_outside_a_checkout_says_why_in_one_line(tmp_path, monkeypatch, capsys):
    import backprop.bench
    from backprop.cli import main

    monkeypatch.setattr(backprop.bench, "__file__", str(tmp_path / "site-packages" / "backprop" / "bench.py"))
    assert main(["bench", "--quick"]) == 1
    message = capsys.readouterr().err.strip()
    assert message.startswith("backprop: error: backprop bench runs from a source checkout") and "\n" not in message


def test_the_sparse_autoencoder_peers_agree(suite):
    import numpy as np

    params = suite.peers.init_mlp([64, 25, 64], "float64")
    x = suite.bp.data.patches(200)
    for loop, vectorized in zip(
        suite.peers.sparse_ae_loop_gradient(*params, x), suite.peers.sparse_ae_numpy_gradient(*params, x), strict=True
    ):
        np.testing.assert_allclose(loop, vectorized, rtol=1e-10, atol=1e-13, strict=True)


def test_the_ring_all_reduce_model_is_the_textbook_formula(suite):
    ring = suite.scaling.ring_all_reduce_seconds
    assert ring(4e6, 1, 1e9, 1e-5) == 0.0
    assert ring(4e6, 2, 1e9, 0.0) == pytest.approx(2 * 1 * 2e6 / 1e9)  # 2(W-1) messages of S/W
    assert ring(4e6, 512, 1e9, 0.0) == pytest.approx(2 * 511 / 512 * 4e6 / 1e9)  # -> 2S/B
    assert ring(0.0, 8, 1e9, 3e-6) == pytest.approx(14 * 3e-6)  # the latency term alone
    rows = suite.scaling.model_table(0.004, 2_678_824, 128)
    assert len(rows) == len(suite.scaling.NETWORKS) * len(suite.scaling.MODEL_RANKS)
    for row in rows:
        assert row["efficiency"] == pytest.approx(4.0 / row["step_ms"]) and row["share"] + row[
            "efficiency"
        ] == pytest.approx(1)
    slow = [r["efficiency"] for r in rows if r["network"].startswith("10 Gb/s")]
    assert slow == sorted(slow, reverse=True)  # more ranks, lower efficiency


def test_the_scaling_configuration_runs_one_and_two_ranks_under_mpiexec(suite, tmp_path):
    if suite.scaling.mpiexec() is None:
        pytest.skip('needs mpi4py and an MPI library: pip install "backprop[mpi]"')
    args = ["--quick", "--repeats", "1", "--configs", "scaling", "--out", str(tmp_path), "--name", "scale"]
    assert suite.main(args) == 0
    result = json.loads((tmp_path / "scale.json").read_text())["scaling"]
    assert set(result["ranks"]) == {"1", "2"} and result["ranks"]["1"]["all_reduce_ms"] == 0
    assert result["ranks"]["2"]["all_reduce_ms"] > 0 and result["ranks"]["2"]["mode"] == "traced"
    assert result["speedup"] > 0 and isinstance(result["target"]["met"], bool)
    assert result["gradient_bytes"] == 4 * (784 * 512 + 512 + 512 * 512 + 512 + 512 * 10 + 10)
    table = (tmp_path / "scale.md").read_text()
    assert "| 2 |" in table and "Ring all-reduce model" in table and not (tmp_path / "scale.png").exists()


# --- the compiled peers (jax.jit, torch.compile) against the hand-written NumPy steps ---

SMALL_NETS = {  # small S and L: sizes, activation, loss, the NumPy step, lr
    "S": ((12, 7, 4), "sigmoid", "quadratic", "sigmoid_numpy_step", 3.0),
    "L": ((12, 9, 8, 4), "relu", "cross_entropy", "relu_numpy_step", 0.5),
}


def _small_run(suite, kind: str, dtype: str, steps: int = 3, batch: int = 5):
    """Initial params, the batches, and the params the NumPy step reaches from them (in float64)."""
    import numpy as np

    sizes, _, _, numpy_step, lr = SMALL_NETS[kind]
    rng = np.random.default_rng(7)
    xs = rng.random((steps, batch, sizes[0])).astype(dtype)
    labels = rng.integers(0, sizes[-1], (steps, batch))
    ys = np.eye(sizes[-1], dtype=dtype)[labels] if kind == "S" else labels
    params = suite.peers.init_mlp(sizes, dtype, seed=3)
    expected = [p.astype(np.float64) for p in params]
    for x, y in zip(xs, ys, strict=True):
        getattr(suite.peers, numpy_step)(expected, x.astype(np.float64), y.astype(ys.dtype), lr)
    return params, list(zip(xs, ys, strict=True)), expected


def _assert_params_close(got, expected, dtype: str):
    import numpy as np

    tolerance = {"float32": (1e-4, 1e-5), "float64": (1e-10, 1e-12)}[dtype]
    assert len(got) == len(expected)
    for g, e in zip(got, expected, strict=True):
        assert g.dtype == np.dtype(dtype) and g.shape == e.shape
        assert np.allclose(g, e, *tolerance), np.abs(g - e).max()


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("kind", ["S", "L"])
@pytest.mark.parametrize("factory", ["jax_step_factory", "jax_scan_factory"])
def test_the_jax_peers_reach_the_numpy_steps_parameters(suite, factory, kind, dtype):
    # the scan takes every batch in one call: it runs the steps in order, each from the last one's params
    import numpy as np

    pytest.importorskip("jax", reason="the JAX peers need JAX: pip install jax")
    params, batches, expected = _small_run(suite, kind, dtype)
    sizes, activation, loss, _, lr = SMALL_NETS[kind]
    step = getattr(suite.peers, factory)(sizes, activation, loss, dtype, lr, params)
    if factory == "jax_scan_factory":
        step(np.stack([x for x, _ in batches]), np.stack([y for _, y in batches]))
    else:
        for x, y in batches:
            step(x, y)
    _assert_params_close([np.asarray(p) for p in step.params], expected, dtype)


@pytest.mark.parametrize("factory", ["torch_step_factory", "torch_compile_step_factory"])
@pytest.mark.parametrize("kind", ["S", "L"])
def test_the_torch_peers_reach_the_numpy_steps_parameters(suite, kind, factory):
    torch = pytest.importorskip("torch", reason="the PyTorch peers need PyTorch")
    if factory == "torch_compile_step_factory" and not any(shutil.which(c) for c in ("g++", "c++", "clang++")):
        pytest.skip("torch.compile (Inductor) needs a C++ compiler on the CPU")
    params, batches, expected = _small_run(suite, kind, "float32")
    sizes, activation, loss, _, lr = SMALL_NETS[kind]
    step = getattr(suite.peers, factory)(sizes, activation, loss, "float32", lr, params)
    for x, y in batches:
        step(torch.from_numpy(x), torch.from_numpy(y))
    got = [p.detach().numpy() for p in step.model.parameters()]
    _assert_params_close([p.T if p.ndim == 2 else p for p in got], expected, "float32")  # weights: (out, in)


def test_a_torch_compile_that_fails_is_left_out_with_its_reason(suite, monkeypatch, capsys):
    pytest.importorskip("torch", reason="the PyTorch peers need PyTorch")

    def no_compiler(*args, **kwargs):
        raise RuntimeError("Compiler: g++ not found\nthe rest of a long message")

    monkeypatch.setattr(suite.peers, "torch_compile_step_factory", no_compiler)
    params, batches, _ = _small_run(suite, "S", "float32")
    net = suite.Net(SMALL_NETS["S"][0], "sigmoid", "sigmoid", "quadratic", "float32", 3.0)
    candidate = suite._torch_compile_peer(net, params, batches, "cpu", None)
    reason = "RuntimeError: Compiler: g++ not found"
    assert candidate.left_out == reason and capsys.readouterr().out == f"torch.compile left out: {reason}\n"
    config = suite.Config("S", "", {"torch.compile": candidate, "other": suite.Candidate(lambda: None)})
    assert set(suite.measure(config, repeats=1)) == {"other"}
    run = {"config": "S", "description": "", "threads": 1, "baseline": "other", "seconds": {"other": 1.0},
           "modes": {}, "left_out": {"torch.compile": reason}, "targets": []}  # fmt: skip
    assert f"| torch.compile: left out ({reason}) | | |" in suite.report.format_run(run)


def test_batches_of_several_shapes_are_refused_before_compiled_peers_see_them(suite):
    import numpy as np

    batches = [(np.zeros((10, 4)), np.zeros(10)), (np.zeros((3, 4)), np.zeros(3))]
    with pytest.raises(ValueError, match="several shapes"):
        suite._uniform(batches)
