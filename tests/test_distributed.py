"""Data-parallel training (backprop.distributed): W ranks at batch b train the network one process
trains at batch W*b, to round-off; a failing rank ends the job; the pieces hold without MPI too."""

import importlib.util
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import backprop as bp
from backprop.distributed import AllReduce, World
from backprop.errors import ConfigError

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))


def _mpiexec():
    found = shutil.which("mpiexec") or shutil.which("mpiexec", path=str(Path(sys.executable).parent))
    if importlib.util.find_spec("mpi4py") is None or found is None:
        pytest.skip('needs mpi4py and an MPI library: pip install "backprop[mpi]"')
    return found


def _launch(ranks: int, *args, timeout=120, **settings):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PMI_", "OMPI_", "PMIX_", "MPI_"))}
    env.update(OPENBLAS_NUM_THREADS="1", **{k: str(v) for k, v in settings.items()})
    command = [_mpiexec(), "-n", str(ranks), sys.executable, str(HERE / "distributed_run.py"), *map(str, args)]
    return subprocess.run(command, capture_output=True, text=True, env=env, timeout=timeout)


def _single_process(backend, optimizer, ranks):
    """What one process trains at the global batch (the script's data, model and seed of rank 0)."""
    import distributed_run as script  # noqa: F401 (its data() and constants, without MPI: a world of 1)

    with bp.use_backend(backend):
        bp.manual_seed(0)
        model = bp.nn.mlp([4, 8, 3], "tanh", dtype="float64")
        opt = (bp.optim.SGD(model.parameters(), lr=0.1, momentum=0.9) if optimizer == "sgd"
               else bp.optim.Adam(model.parameters(), lr=0.01))  # fmt: skip
        history = bp.fit(model, bp.losses.cross_entropy, opt, script.data(), script.EPOCHS,
                         script.PER_RANK_BATCH * ranks, verbose=0, validation=script.validation())  # fmt: skip
        return {name: bp.to_numpy(a) for name, a in model.state_dict().items()}, history


@pytest.mark.parametrize(  # fmt: skip
    "backend, optimizer, capture, ranks",
    [
        ("numpy", "sgd", False, 2),
        ("numpy", "adam", True, 2),
        ("numpy", "adam", False, 3),
        ("array_api_strict", "adam", True, 2),
        ("torch", "sgd", True, 2),
        ("jax", "adam", True, 2),  # the all-reduce inside jax.jit, an ordered io_callback
        ("cupy", "adam", True, 2),  # NCCL, one GPU per rank, the all-reduce in the CUDA graph
    ],
)
def test_ranks_at_batch_b_train_what_one_process_trains_at_batch_w_times_b(
    tmp_path, backend, optimizer, capture, ranks
):
    entry = bp.backends.get_entry(backend)
    if entry.unavailable():
        pytest.skip(f"{backend} is not available here: {entry.unavailable()}")
    if entry.on_gpu and len(entry.devices()) < ranks:
        pytest.skip(f"NCCL needs a GPU per rank: {ranks} ranks, {len(entry.devices())} GPU(s) here")
    out = tmp_path / "rank0.npz"
    result = _launch(ranks, out, backend, optimizer, int(capture))
    assert result.returncode == 0, result.stderr
    saved = np.load(out)
    weights, history = _single_process(backend, optimizer, ranks)
    for name, want in weights.items():  # 60 steps (5 epochs of 12) at 2 ranks, 40 at 3
        np.testing.assert_allclose(saved[name], want, rtol=1e-12, atol=1e-14, err_msg=name)
    for record in ("loss", "accuracy", "val_loss", "val_accuracy"):  # validation: shards of 37 rows, weighed
        np.testing.assert_allclose(saved[record], history[record], rtol=1e-12, err_msg=record)


def test_a_rank_that_fails_ends_the_whole_job_quickly(tmp_path):
    began = time.monotonic()
    result = _launch(2, tmp_path / "rank0.npz", "numpy", "sgd", 0, 5, timeout=60)
    assert time.monotonic() - began < 30
    assert result.returncode != 0
    assert "rank 1 fails at step 5" in result.stderr and "rank 1 of 2 failed, ending the job" in result.stderr


# --- without MPI ---


def test_without_mpiexec_the_world_is_one_process():
    world = bp.distributed.world()
    assert (world.rank, world.size, world.is_main) == (0, 1, True)


@pytest.mark.parametrize("ranks, batch, shuffle", [(2, 4, True), (3, 5, True), (2, 3, False)])
def test_shards_at_batch_b_are_one_process_at_batch_w_times_b(ranks, batch, shuffle):
    x, y = np.arange(31 * 2.0).reshape(31, 2), np.arange(31)
    used = 31 - 31 % ranks

    def epochs(shard, size):
        bp.manual_seed(3)
        batches = bp.data.Batches(x, y, size, shuffle=shuffle, shard=shard)
        return [[bp.to_numpy(t).tolist() for _, t in batches] for _ in range(2)]

    whole = epochs((0, 1), batch * ranks)
    shards = [epochs((r, ranks), batch) for r in range(ranks)]
    for epoch in range(2):
        seen = [sorted(sum((s[epoch][k] for s in shards), [])) for k in range(len(shards[0][epoch]))]
        assert len({len(s[epoch]) for s in shards}) == 1  # every rank takes the same number of steps
        single = [sorted(b) for b in whole[epoch]]
        flat = sorted(sum(single, []))
        assert seen == [sorted(b) for b in _regroup(flat, single, used)], (seen, single)
    assert shuffle or whole[0] == whole[1]


def _regroup(flat, single, used):
    """The single process's batches over the first `used` samples of its order."""
    out, taken = [], 0
    for b in single:
        keep = b[: max(0, used - taken)]
        taken += len(b)
        if keep:
            out.append(keep)
    return out


class _TwoRanks:
    """A communicator for two ranks where the other rank's arrays are this one's times three."""

    def Allreduce(self, send, receive):  # noqa: N802 (mpi4py's name)
        receive[...] = send * 4.0


def test_the_all_reduce_hook_averages_and_is_replayed_by_a_captured_step():
    hook = AllReduce(World(_TwoRanks(), 0, 2, 0))
    grads = [np.arange(6.0).reshape(2, 3), None, np.ones(3, dtype=np.float32), np.full(2, 0.5)]
    averaged = hook(grads)
    np.testing.assert_array_equal(averaged[0], 2.0 * grads[0], strict=True)
    assert averaged[1] is None and averaged[2].dtype == np.float32
    np.testing.assert_array_equal(averaged[3], [1.0, 1.0], strict=True)
    bp.manual_seed(0)
    model = bp.nn.mlp([3, 4, 2], "tanh", dtype="float64")
    step = bp.TrainStep(model, bp.losses.mse_loss, bp.optim.SGD(model.parameters(), 0.1), gradient_hooks=[hook])
    x, y = np.ones((5, 3)), np.zeros((5, 2))
    assert [step(x, y) and step.mode for _ in range(5)][-1] == "traced"
    assert any("_average" in line for line in step._captures[step.function.key(x, y)].program.source.splitlines())


def test_a_batches_of_another_shard_is_refused():
    batches = bp.data.Batches(np.zeros((8, 2)), np.zeros(8, dtype="int64"), 2, shard=(1, 2))
    model = bp.nn.mlp([2, 2], "tanh")
    with pytest.raises(ConfigError, match=r"shard 1 of 2, this is rank 0 of 1"):
        bp.fit(model, bp.losses.cross_entropy, bp.optim.SGD(model.parameters(), 0.1), batches, 1, 2, verbose=0)


def test_a_checkpoint_of_another_world_size_is_refused_before_it_loads(tmp_path):
    bp.manual_seed(0)
    model = bp.nn.mlp([2, 3], "tanh", dtype="float64")
    opt = bp.optim.SGD(model.parameters(), 0.1)
    bp.io.save_checkpoint(tmp_path / "run.npz", model, opt, 1, bp.History(), world_size=2)
    x, y = np.ones((8, 2)), np.zeros(8, dtype="int64")
    with pytest.raises(ConfigError, match=r"written by 2 processes, this run has 1"):
        bp.fit(model, bp.losses.cross_entropy, opt, (x, y), 3, 2, verbose=0, resume=tmp_path / "run.npz")


def test_the_command_line_trains_on_several_processes_and_speaks_once(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PMI_", "OMPI_", "PMIX_", "MPI_"))}
    command = [_mpiexec(), "-n", "2", sys.executable, "-m", "backprop", "train", "--epochs", "2", "--no-progress",
               "--save", str(tmp_path / "w.npz")]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=120, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("on 2 processes") == 1 and result.stdout.count("final:") == 1, result.stdout
    assert (tmp_path / "w.npz").is_file()


def test_a_distributed_run_resumed_from_its_checkpoint_is_the_uninterrupted_one(tmp_path):
    whole = _launch(2, tmp_path / "whole.npz", "numpy", "adam", 1)
    assert whole.returncode == 0, whole.stderr
    first = _launch(2, tmp_path / "first.npz", "numpy", "adam", 1, RUN_EPOCHS=2, RUN_CHECKPOINT=tmp_path / "run.npz")
    assert first.returncode == 0, first.stderr
    assert bp.io.checkpoint_metadata(tmp_path / "run.npz")["world_size"] == 2
    resumed = _launch(2, tmp_path / "resumed.npz", "numpy", "adam", 1, RUN_RESUME=tmp_path / "run.npz")
    assert resumed.returncode == 0, resumed.stderr
    want, got = np.load(tmp_path / "whole.npz"), np.load(tmp_path / "resumed.npz")
    for name in want.files:
        np.testing.assert_array_equal(got[name], want[name], strict=True, err_msg=name)


def test_a_rank_that_built_another_model_is_a_clear_error_at_the_start(tmp_path):
    result = _launch(2, tmp_path / "rank0.npz", "numpy", "sgd", 0, RUN_HIDDEN_RANK_1=9, timeout=60)
    assert result.returncode != 0
    assert "ConfigError: rank 1 built a different model than rank 0" in result.stderr, result.stderr
    assert not (tmp_path / "rank0.npz").exists()


class _OneRank:
    def bcast(self, value, root=0):
        return value


def test_cupy_gradients_are_summed_by_nccl_on_the_gpu():
    entry = bp.backends.get_entry("cupy")
    if entry.unavailable():
        pytest.skip(f"cupy is not available here: {entry.unavailable()}")
    import cupy

    from backprop import distributed

    if not distributed._nccl_for(cupy.zeros(1)):
        pytest.skip("this CuPy was built without NCCL")
    hook = AllReduce(World(_OneRank(), 0, 1, 0))  # a one-rank NCCL communicator: one GPU is enough
    flat = cupy.asarray(np.random.default_rng(0).normal(size=1000))
    total = hook._average(flat)
    assert hook._nccl is not None and hook.calls == 1 and isinstance(total, cupy.ndarray)
    np.testing.assert_array_equal(total.get(), flat.get(), strict=True)
    with pytest.raises(TypeError, match="NCCL cannot all-reduce int64"):
        hook._average(cupy.arange(3))


def test_a_gpu_backend_under_mpiexec_takes_the_local_ranks_gpu(monkeypatch):
    from backprop import distributed

    class Gpus:
        on_gpu = True

        def devices(self):
            return ["cuda:0", "cuda:1"]

    monkeypatch.setenv("PMI_RANK", "3")
    monkeypatch.setattr(distributed, "_world", World(None, 3, 4, 3))
    assert distributed.local_device(Gpus()) == "cuda:1"  # local rank 3 of a host with 2 GPUs
    monkeypatch.setattr(distributed, "_world", World(None, 0, 1, 0))
    assert distributed.local_device(Gpus()) is None  # one process: the default device


def test_a_jitted_jax_step_all_reduces_through_an_ordered_host_callback():
    if bp.backends.get_entry("jax").unavailable():
        pytest.skip("jax is not available here")
    x, y = np.random.default_rng(1).normal(size=(5, 3)), np.random.default_rng(2).normal(size=(5, 2))

    def train(backend, capture):
        hook = AllReduce(World(_TwoRanks(), 0, 2, 0))  # the other rank's gradients: this one's x3
        with bp.use_backend(backend):
            bp.manual_seed(0)
            model = bp.nn.mlp([3, 4, 2], "tanh", dtype="float64")
            opt = bp.optim.SGD(model.parameters(), 0.1, momentum=0.9)
            step = bp.TrainStep(model, bp.losses.mse_loss, opt, capture=capture, gradient_hooks=[hook])
            inputs, targets = bp.get_backend().asarray(x), bp.get_backend().asarray(y)
            for _ in range(7):
                step(inputs, targets)
            return {k: bp.to_numpy(v) for k, v in model.state_dict().items()}, step.mode, hook.calls

    want, _, _ = train("numpy", False)
    got, mode, calls = train("jax", True)
    # every call all-reduces once, the compiled replays too; the third, which checks the replay
    # against the eager step, twice (on every rank alike)
    assert mode == "jit" and calls == 8
    for name in want:
        np.testing.assert_allclose(got[name], want[name], rtol=1e-12, atol=1e-14, err_msg=name)
