"""bench/curves.py: the quick sweep writes its chart, tables and JSON with every point and
candidate, and the command line refuses what it cannot run. Timings are never asserted."""

import importlib
import json
import math

import pytest
from conftest import selected_backends

pytestmark = pytest.mark.skipif("numpy" not in selected_backends(), reason="the curves run once, with NumPy")


@pytest.fixture(scope="module")
def curves():
    from backprop.bench import checkout_bench, load_suite

    load_suite(checkout_bench())  # imports the checkout's bench package (no sys.path change)
    return importlib.import_module("bench.curves")


def test_the_quick_sweep_writes_chart_tables_and_json(curves, tmp_path):
    torch_threads = None
    if curves.suite.HAVE_TORCH:
        import torch

        torch_threads = torch.get_num_threads()
    assert curves.main(["--quick", "--repeats", "1", "--seconds", "0.005", "--out", str(tmp_path), "--name", "q"]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["q.json", "q.md", "q.png"]  # no temporary files left
    assert (tmp_path / "q.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    if torch_threads is not None:
        assert torch.get_num_threads() == torch_threads  # set to 1 for the sweep only

    results = json.loads((tmp_path / "q.json").read_text())
    dev = curves.device()
    expected = [dev.ours(captured=True), dev.ours(), dev.floor] + ([dev.torch] if dev.torch_device else [])
    assert results["candidates"] == [*expected, dev.gemm] and results["baseline"] == dev.floor
    assert results["threads"]["blas"] == 1 and results["machine"]["blas"]["num_threads"] == 1
    batch, width = results["sweeps"]
    assert [(p["batch"], p["hidden"]) for p in batch["points"]] == [(b, curves.HIDDEN) for b in curves.QUICK_BATCHES]
    assert [(p["batch"], p["hidden"]) for p in width["points"]] == [(curves.BATCH, h) for h in curves.QUICK_WIDTHS]
    for point in batch["points"] + width["points"]:
        assert curves.MIN_STEPS <= point["steps"] <= curves.MAX_STEPS
        assert list(point["seconds"]) == results["candidates"]
        for name, seconds in point["seconds"].items():
            assert math.isfinite(seconds) and seconds > 0
            assert point["per_sample"][name] == pytest.approx(seconds / (point["steps"] * point["batch"]))
        assert point["modes"] == {dev.ours(captured=True): "traced", dev.ours(): "eager"}
    for sweep in (batch, width):
        assert set(sweep["blas_from"]) == set(results["candidates"]) - {dev.gemm}
        values = {p[sweep["key"]] for p in sweep["points"]} | {None}
        assert all(v in values for found in sweep["blas_from"].values() for v in found.values())
    outer = results["outer_product"]
    assert outer["matmul_us"] > 0 and outer["dot_us"] > 0

    table = (tmp_path / "q.md").read_text()
    assert "## Against batch size (hidden width 128)" in table and "## Against hidden width (batch 128)" in table
    assert f"| batch size | steps | {' | '.join(results['candidates'])} | GFLOP/s |" in table
    for point in batch["points"]:
        assert f"\n| {point['batch']} | {point['steps']} | " in table
    for point in width["points"]:
        assert f"\n| {point['hidden']} | {point['steps']} | " in table
    assert "(1.00x)" in table and "x) (ran eager)" not in table  # every captured candidate replayed


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--quick"], "--out"),  # a smoke run would overwrite bench/results/curves.*
        (["--quick", "--out", "{results}"], "--out"),
        (["--repeats", "0", "--out", "{tmp}"], "--repeats"),
        (["--quick", "--seconds", "0", "--out", "{tmp}"], "--seconds"),
        (["--seconds", "nan", "--out", "{tmp}"], "--seconds"),
        (["--quick", "--name", "a/b", "--out", "{tmp}"], "--name"),
        (["--quick", "--name", "", "--out", "{tmp}"], "--name"),
        (["--repeats", "many"], "invalid int value"),
        (["--quick", "--batches", "1,2"], "unrecognized arguments"),
    ],
)
def test_the_command_line_refuses_what_it_cannot_run(curves, tmp_path, monkeypatch, capsys, args, message):
    monkeypatch.setattr(curves, "run", lambda *a, **k: pytest.fail("the sweep ran"))
    args = [a.format(results=curves.RESULTS, tmp=tmp_path) for a in args]
    with pytest.raises(SystemExit) as exit_:
        curves.main(args)
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("usage: python -m bench.curves") and message in err
    assert list(tmp_path.iterdir()) == []


def test_blas_takes_over_from_the_first_point_after_which_it_always_holds(curves):
    shares = [0.6, 0.3, 0.55, 0.7, 0.95]  # GEMM-only / candidate: noise above 0.5 at the first point
    points = [{"batch": 2**i, "seconds": {"gemm": s, "c": 1.0}} for i, s in enumerate(shares)]
    assert curves.blas_from(points, "batch", "c", "gemm", 0.5) == 4
    assert curves.blas_from(points, "batch", "c", "gemm", 0.9) == 16
    assert curves.blas_from(points, "batch", "c", "gemm", 0.99) is None
    assert curves.gemm_flops(1) == 2 * (2 * 784 + 3 * 10)
