"""Faults at the command line and in the API (issue 9): each is one clear line naming the bad
value and what is expected, raised before any work, never a traceback, a silently wrong result
or lost work."""

import math
import os
import re
import subprocess
import sys

import numpy as np
import pytest

import backprop as bp
from backprop.cli import main
from backprop.errors import ConfigError, UserError
from backprop.train import DivergedError


def _cli(args, tmp_path, **env):
    """Run `python -m backprop.cli` in `tmp_path`, offline, with `env` added (caches go to tmp_path/home)."""
    home = str(tmp_path / "home")
    isolated = {"PATH": "", "XDG_CACHE_HOME": home, "HOME": home, "MPLCONFIGDIR": home, "no_proxy": "*",
                "https_proxy": "http://127.0.0.1:9", "http_proxy": "http://127.0.0.1:9"}  # fmt: skip
    command = [sys.executable, "-m", "backprop.cli", *args]
    return subprocess.run(command, capture_output=True, text=True, env={**isolated, **env}, cwd=tmp_path)


def _assert_one_line(result, message, code=1):
    lines = result.stderr.strip().splitlines()
    assert result.returncode == code, (result.returncode, result.stderr)
    assert len(lines) == 1 and message in lines[0] and "Traceback" not in result.stderr, result.stderr


# --- the command line ---

needs_proc = pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="needs Linux's /proc")


@pytest.mark.parametrize(
    "args, env, message",
    [
        (["--layers", "64,100000000,10"], {}, "7,500,000,010 parameters, more than the 100,000,000 this command"),
        (["--optimizer", "adam", "--momentum", "0.9"], {}, "--momentum applies to --optimizer sgd only, not adam"),
        (["--data-dir", "files"], {}, "--data-dir applies to mnist and fashion-mnist; digits needs no files"),
        (["--save", "taken.npz"], {}, "taken.npz: is a folder; give a file name"),
        (["--save", "a-file/w.npz"], {}, "a-file/w.npz: "),
        (["--checkpoint", "a-file/sub/run.npz"], {}, "is not a folder"),
        pytest.param(["--save", "/proc/w.npz"], {}, "/proc/w.npz: cannot write into /proc", marks=needs_proc),
        pytest.param(["--checkpoint", "/proc/c.npz"], {}, "/proc/c.npz: cannot write into /proc", marks=needs_proc),
        pytest.param(["--plot", "/proc/p.png"], {}, "/proc/p.png: cannot write into /proc", marks=needs_proc),
        ([], {"BACKPROP_DEVICE": "cuda:3"}, "BACKPROP_DEVICE='cuda:3': backend 'numpy' runs on the CPU only"),
        (["--device", "bogus"], {}, "backend 'numpy' runs on the CPU only, not on device 'bogus'"),
    ],
)
def test_train_refuses_bad_options_in_one_line_before_any_training(args, env, message, tmp_path):
    (tmp_path / "taken.npz").mkdir()
    (tmp_path / "a-file").write_text("not a folder")
    result = _cli(["train", "--epochs", "1", "--no-progress", *args], tmp_path, **env)
    _assert_one_line(result, message)
    assert "training" not in result.stdout, "the options must be checked before training"
    written = sorted(p.name for p in tmp_path.iterdir() if p.name != "home")
    assert written == ["a-file", "taken.npz"], "nothing may be written"


def test_a_cuda_device_without_cuda_is_one_line(tmp_path):
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    result = _cli(["train", "--backend", "torch", "--device", "cuda", "--no-progress"], tmp_path)
    _assert_one_line(result, "backend 'torch' has no device 'cuda'; devices here: cpu")
    assert "training" not in result.stdout


@pytest.mark.parametrize(
    "option, value, expected",
    [("--lr", "inf", "a positive number"), ("--momentum", "inf", "a number >= 0"), ("--lr", "nan", "a positive")],
)
def test_non_finite_numbers_are_refused_by_the_parser(option, value, expected, tmp_path):
    result = _cli(["train", option, value], tmp_path)
    _assert_one_line(result, f"argument {option}: expected {expected}", code=2)


def test_a_plot_without_matplotlib_is_refused_before_training(tmp_path):
    code = (
        "import sys; sys.modules['matplotlib'] = None\n"  # as if it were not installed
        "from backprop.cli import main\n"
        "sys.exit(main(['train', '--epochs', '1', '--no-progress', '--plot', 'curves.png']))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path)
    _assert_one_line(result, "plots need matplotlib: pip install 'backprop[plot]'")
    assert "training" not in result.stdout


def test_a_diverging_run_ends_with_an_error_not_at_chance_with_exit_0(tmp_path):
    result = _cli(["train", "--optimizer", "sgd", "--lr", "1e6", "--epochs", "3", "--no-progress"], tmp_path)
    _assert_one_line(result, "in epoch 1: training diverged; try a lower --lr")
    assert "final:" not in result.stdout


def test_the_divergence_guard_stops_a_loss_that_rose_tenfold():
    from backprop.cli import _DivergenceGuard

    guard = _DivergenceGuard(initial_loss=2.3)
    assert guard.on_epoch_end(None, {"epoch": 2, "loss": 22.9, "val_loss": math.nan}) is False  # nan: fit's
    with pytest.raises(DivergedError, match=r"rose from 2.3 \(untrained\) to 23.1 in epoch 3: training diverged"):
        guard.on_epoch_end(None, {"epoch": 3, "loss": 23.1})


def test_resuming_a_run_that_has_all_its_epochs_says_there_is_nothing_to_do(tmp_path, capsys):
    path = str(tmp_path / "run.npz")
    assert main(["train", "--epochs", "2", "--no-progress", "--checkpoint", path]) == 0
    for epochs in ("1", "2"):
        assert main(["train", "--epochs", epochs, "--no-progress", "--resume", path]) == 1
        err = capsys.readouterr().err.strip()
        assert err == (
            f"backprop: error: --resume {path}: the checkpoint is at epoch 2, so --epochs {epochs} leaves "
            "nothing to do; give --epochs above 2"
        )
    assert main(["train", "--epochs", "3", "--no-progress", "--resume", path]) == 0
    assert "after 3 epochs" in capsys.readouterr().out


def test_info_shows_the_backend_chosen_by_the_environment(tmp_path):
    if bp.backends.get_entry("array_api_strict").unavailable():
        pytest.skip("array_api_strict is not installed")
    result = _cli(["info"], tmp_path, BACKPROP_BACKEND="array_api_strict")
    assert result.returncode == 0, result.stderr
    assert "selected: backend array_api_strict, device default (from BACKPROP_BACKEND='array_api_strict')" in (
        result.stdout
    )
    _assert_one_line(_cli(["info"], tmp_path, BACKPROP_DEVICE="cuda:3"), "BACKPROP_DEVICE='cuda:3': backend 'numpy'")


@pytest.mark.parametrize("command", [["info"], ["train", "--epochs", "1", "--no-progress"]])
def test_an_unknown_backend_in_the_environment_is_one_line_when_used(command, tmp_path):
    _assert_one_line(_cli(command, tmp_path, BACKPROP_BACKEND="bogus"), "BACKPROP_BACKEND='bogus': unknown backend")


def test_importing_backprop_never_fails_on_the_environment(tmp_path):
    env = {"BACKPROP_BACKEND": "bogus", "BACKPROP_DEVICE": "nowhere"}
    result = subprocess.run([sys.executable, "-c", "import backprop"], capture_output=True, text=True, env=env)
    assert result.returncode == 0, result.stderr


# --- fit, evaluate, predict ---


def _spirals(n=40):
    x, y = bp.data.spirals(n, seed=3)
    return x.astype("float64"), y


def _model():
    bp.manual_seed(0)
    return bp.nn.mlp([2, 6, 2], "tanh", dtype="float64")


def _fit(train, validation=None, model=None, **kwargs):
    model = model or _model()
    optimizer = bp.optim.SGD(model.parameters(), lr=0.1)
    kwargs = {"epochs": 1, "batch_size": 8, "verbose": 0, **kwargs}
    return bp.fit(model, bp.losses.cross_entropy, optimizer, train, validation=validation, **kwargs)


def test_empty_datasets_are_clear_errors():
    x, y = _spirals()
    with pytest.raises(ConfigError, match=r"^the training set is empty \(0 samples\)$"):
        _fit((x[:0], y[:0]))
    with pytest.raises(ConfigError, match=r"^the validation set is empty \(0 samples\)$"):
        _fit((x, y), validation=(x[:0], y[:0]))
    with pytest.raises(ConfigError, match=r"^evaluate's data is empty \(0 samples\)$"):
        bp.evaluate(_model(), bp.losses.cross_entropy, (x[:0], y[:0]))
    with pytest.raises(ConfigError, match="no samples: inputs and targets are empty"):
        bp.data.Batches(x[:0], y[:0], batch_size=4)
    with pytest.raises(ConfigError, match="the training set has 80 inputs but 79 targets"):
        _fit((x, y[1:]))


def test_predict_on_no_rows_gives_an_empty_array_with_a_column_per_output(backend):
    x, _ = _spirals()
    model = _model()
    out = bp.predict(model, x[:0])
    assert tuple(out.shape) == (0, 2) and bp.backend.dtype_name(out.dtype) == "float64"
    assert tuple(bp.predict(model, x[:3]).shape) == (3, 2)


@pytest.mark.parametrize("value", [2.0, 2.5, "3", True, None, 0, -1])
@pytest.mark.parametrize("name", ["epochs", "batch_size"])
def test_epochs_and_batch_size_must_be_positive_integers(name, value):
    x, y = _spirals()
    kwargs = {"epochs": 1, "batch_size": 8, name: value}
    with pytest.raises(ConfigError, match=f"^{name} must be a positive integer, got "):
        _fit((x, y), **kwargs)
    assert isinstance(ConfigError("x"), ValueError)


def test_batches_check_their_batch_size():
    x, y = _spirals()
    with pytest.raises(ConfigError, match=r"batch_size must be a positive integer, got 4.0 \(float\)"):
        bp.data.Batches(x, y, batch_size=4.0)
    with pytest.raises(ConfigError, match="drop_last with batch_size 100 > 80 samples leaves no batch"):
        bp.data.Batches(x, y, batch_size=100, drop_last=True)
    assert len(bp.data.Batches(x, y, batch_size=np.int64(16))) == 5


def test_an_unknown_metric_is_refused_before_training():
    x, y = _spirals()
    with pytest.raises(ConfigError, match="unknown metric 'acc'; known metrics: accuracy"):
        _fit((x, y), metrics=("acc",))
    with pytest.raises(ConfigError, match="metrics must be a list of names"):
        bp.evaluate(_model(), bp.losses.cross_entropy, (x, y), metrics="accuracy")


@pytest.mark.parametrize(
    "where, make_bad, message",
    [
        ("train", lambda x, y: ((_set(x, (5, 1), np.nan), y), None), r"the training set has a non-finite input \(nan\)"
         r" in sample 5 \(index \(5, 1\)\)"),
        ("validation", lambda x, y: ((x, y), (_set(x, (7, 0), -np.inf), y)), r"the validation set has a non-finite "
         r"input \(-inf\) in sample 7"),
        ("targets", lambda x, y: ((x, _set(np.eye(2)[y], (3, 1), np.inf)), None), r"the training set has a "
         r"non-finite target \(inf\) in sample 3 \(index \(3, 1\)\)"),
    ],
)  # fmt: skip
def test_non_finite_data_is_named_before_training_not_blamed_on_the_learning_rate(where, make_bad, message):
    x, y = _spirals()
    train, validation = make_bad(x, y)
    model = _model()
    before = [p.numpy().copy() for p in model.parameters()]
    loss = bp.losses.cross_entropy
    with pytest.raises(ConfigError, match=message):
        bp.fit(model, loss, bp.optim.SGD(model.parameters(), lr=0.1), train, 1, 8, validation=validation,
               verbose=0)  # fmt: skip
    for p, saved in zip(model.parameters(), before, strict=True):
        np.testing.assert_array_equal(p.numpy(), saved, strict=True)  # no step was taken


def _set(array, index, value):
    array = array.copy()
    array[index] = value
    return array


def test_non_finite_inputs_in_batches_on_the_device_are_named_too(backend):
    x, y = _spirals()
    batches = bp.data.Batches(_set(x, (3, 0), np.inf), y, batch_size=8)
    with pytest.raises(ConfigError, match=r"the training set has a non-finite input \(inf\) in sample 3"):
        _fit(batches)


def test_a_nan_validation_loss_stops_training():
    x, y = _spirals()
    huge = np.full_like(x, 1e308)  # finite inputs whose ReLU outputs overflow: the validation loss is inf
    bp.manual_seed(0)
    model = bp.nn.mlp([2, 6, 2], "relu", dtype="float64")
    with np.errstate(over="ignore"), pytest.raises(DivergedError, match="the validation loss became inf in epoch 1"):
        _fit((x, y), validation=(huge, y), model=model)


def test_an_epochs_float16_loss_is_summed_without_overflow(backend):
    if not hasattr(bp.get_backend().xp, "float16"):
        pytest.skip("this backend has no float16")
    bp.manual_seed(0)
    model = bp.nn.mlp([2, 4, 2], "tanh", dtype="float16")
    x = np.random.default_rng(1).normal(size=(100_000, 2)).astype("float16")
    y = (x[:, 0] > 0).astype("int64")  # 100000 losses of about 0.7: their float16 sum would be inf
    result = bp.evaluate(model, bp.losses.cross_entropy, (x, y), batch_size=5000)
    assert 0.1 < result["loss"] < 5


# --- optimizers: hyper-parameters that are not finite or out of range ---

BAD_HYPERPARAMETERS = [
    (bp.optim.SGD, {"lr": math.inf}, "learning rate must be finite, got inf"),
    (bp.optim.SGD, {"lr": math.nan}, "learning rate must be finite, got nan"),
    (bp.optim.SGD, {"lr": 0.0}, "learning rate must be positive, got 0.0"),
    (bp.optim.SGD, {"lr": "0.1"}, "learning rate must be a number, got '0.1'"),
    (bp.optim.SGD, {"lr": 0.1, "momentum": math.nan}, "momentum must be finite, got nan"),
    (bp.optim.SGD, {"lr": 0.1, "momentum": -0.5}, "momentum must be >= 0, got -0.5"),
    (bp.optim.SGD, {"lr": 0.1, "momentum": 1.0}, "momentum must be below 1, got 1.0"),
    (bp.optim.SGD, {"lr": 0.1, "weight_decay": -1e-4}, "weight_decay must be >= 0, got -0.0001"),
    (bp.optim.SGD, {"lr": 0.1, "momentum": 0.9, "nesterov": "yes"}, "nesterov must be True or False, got 'yes'"),
    (bp.optim.Adam, {"lr": math.inf}, "learning rate must be finite, got inf"),
    (bp.optim.Adam, {"betas": (1.0, 0.999)}, "beta1 must be below 1, got 1.0"),
    (bp.optim.Adam, {"betas": (0.9, math.nan)}, "beta2 must be finite, got nan"),
    (bp.optim.Adam, {"betas": (0.9,)}, r"betas must be a pair \(beta1, beta2\), got \(0.9,\)"),
    (bp.optim.Adam, {"eps": -1e-8}, "eps must be >= 0, got -1e-08"),
    (bp.optim.Adam, {"eps": math.inf}, "eps must be finite, got inf"),
    (bp.optim.AdamW, {"weight_decay": math.nan}, "weight_decay must be finite, got nan"),
    (bp.optim.AdamW, {"weight_decay": -0.01}, "weight_decay must be >= 0, got -0.01"),
]


@pytest.mark.parametrize("cls, kwargs, message", BAD_HYPERPARAMETERS)
def test_optimizers_refuse_hyperparameters_that_are_not_finite_or_out_of_range(cls, kwargs, message):
    w = bp.nn.Parameter(bp.zeros(3).data)
    with pytest.raises(ConfigError, match=f"^{message}$"):
        cls([w], **kwargs)


def test_every_error_here_is_a_user_error():
    assert issubclass(ConfigError, UserError) and issubclass(DivergedError, UserError)


def test_evaluate_and_predict_give_every_module_its_own_mode_back():
    x, y = _spirals()
    model = bp.nn.Sequential(bp.nn.Linear(2, 6), bp.nn.Dropout(0.5), bp.nn.Tanh(), bp.nn.Linear(6, 2))
    model.layers[1].eval()  # the user keeps this Dropout off while the rest trains
    for run in (lambda: bp.evaluate(model, bp.losses.cross_entropy, (x, y)), lambda: bp.predict(model, x)):
        run()
        assert [m.training for m in model.layers] == [True, False, True, True]
    model.eval()
    bp.evaluate(model, bp.losses.cross_entropy, (x, y))
    assert not any(m.training for _, m in model.named_modules())


class _Scaled(bp.optim.SGD):
    """A user's optimizer with a class-level default hyper-parameter."""

    hyperparameters = ("scale",)
    scale = 0.5

    def _delta(self, p, grad, state, numbers):
        return numbers["lr"] * self.scale * grad


class _Squares(bp.optim.Optimizer):
    """A user's optimizer with state of its own name and a negative hyper-parameter."""

    hyperparameters = ("offset",)

    def __init__(self, params, lr):
        super().__init__(params, lr)
        self.offset = -1.0

    def _delta(self, p, grad, state, numbers):
        state["squares"] = grad * grad
        return numbers["lr"] * grad


def test_user_optimizers_keep_class_defaults_and_load_their_own_state():
    from backprop import changes

    w = bp.nn.Parameter(bp.tensor([1.0, -2.0], dtype="float64").data)
    opt = _Scaled([w], lr=1.0)
    (w * w).sum().backward()
    opt.step()
    np.testing.assert_array_equal(w.numpy(), [0.0, 0.0], strict=True)  # 1 - 1.0 * 0.5 * 2
    before = changes.count
    opt.scale = 0.25
    assert changes.count > before and opt.state_dict()["hyper"]["scale"] == 0.25
    other = _Squares([w], lr=0.1)
    (w * w + w).sum().backward()
    other.step()
    other.load_state_dict(other.state_dict())
    assert other.offset == -1.0 and set(other.state[0]) == {"squares"}


def test_files_that_would_overwrite_each_other_or_a_spiral_boundary_plot_are_refused_before_training(tmp_path, capsys):
    (tmp_path / "sp-boundary.png").mkdir()
    for args, message in [
        (["--save", str(tmp_path / "x.npz"), "--checkpoint", str(tmp_path / "x.npz")], "--save and --checkpoint name"),
        (["--dataset", "spirals", "--plot", str(tmp_path / "sp.png")], "sp-boundary.png: is a folder"),
    ]:
        assert main(["train", "--epochs", "1", "--no-progress", *args]) == 1
        captured = capsys.readouterr()
        assert message in captured.err and "training" not in captured.out, captured


def test_a_resumed_run_refuses_a_learning_rate_other_than_the_checkpoints(tmp_path, capsys):
    path = str(tmp_path / "run.npz")
    common = ["train", "--no-progress", "--optimizer", "sgd", "--lr", "0.5"]
    assert main([*common, "--epochs", "1", "--checkpoint", path]) == 0
    assert main([*common, "--epochs", "2", "--resume", path]) == 0  # the same settings again: fine
    capsys.readouterr()
    assert main(["train", "--no-progress", "--optimizer", "sgd", "--lr", "0.1", "--epochs", "3", "--resume", path]) == 1
    assert "--lr 0.1: the checkpoint" in capsys.readouterr().err


def test_python_dash_m_backprop_is_the_command(tmp_path):
    result = subprocess.run([sys.executable, "-m", "backprop", "--help"], capture_output=True, text=True)
    assert result.returncode == 0 and "usage: backprop" in result.stdout, result.stderr


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda tmp: {"checkpoint": tmp / "run.ckpt"}, "checkpoints are .npz files"),
        (lambda tmp: {"checkpoint": (tmp / "dir.npz").mkdir() or tmp / "dir.npz"}, "is a folder; give a file name"),
        (lambda tmp: {"callbacks": bp.train.EarlyStopping("loss")}, "callbacks must be a list"),
        (lambda tmp: {"callbacks": [bp.train.EarlyStopping]}, "is not an object with on_epoch_end"),
        (lambda tmp: {"callbacks": [bp.train.EarlyStopping("val_loss")]}, "(no validation set was given)"),
        (lambda tmp: {"callbacks": [bp.train.EarlyStopping("los")]}, "EarlyStopping monitors 'los', but each epoch"),
        (lambda tmp: {"callbacks": [bp.train.EarlyStopping("loss", patience="3")]}, "patience must be a whole"),
        (lambda tmp: {"callbacks": [bp.train.EarlyStopping("loss", patience=-1)]}, "patience must be a whole"),
        (lambda tmp: {"callbacks": [bp.train.EarlyStopping("loss", min_delta=-0.1)]}, "min_delta must be a finite"),
    ],
)
def test_fit_refuses_a_bad_checkpoint_path_or_callback_before_the_first_step(tmp_path, make, message):
    x, y = _spirals()
    model = _model()
    optimizer = bp.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises((ConfigError, bp.io.FileFormatError), match=re.escape(message)):
        bp.fit(model, bp.losses.cross_entropy, optimizer, (x, y), 2, 8, verbose=0, **make(tmp_path))
    assert optimizer.steps == 0
