"""The benchmark suite runs (in small sizes) and reports ratios, targets and how captured steps ran.

Timings are never asserted: machines are noisy. The GPU configurations are built here on a
stand-in device (PyTorch tensors on the CPU), so their code runs wherever the tests run.
"""

import json
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
    assert s["modes"]["backprop (numpy, captured)"] == "traced" and s["modes"]["backprop (numpy)"] == "eager"
    assert {t["target"] for t in s["targets"]} >= {"backprop, captured, within 1.15x of the NumPy floor"}
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
