"""Output people can follow (issue 12): fit's `verbose`, `model.summary()`, messages in good
English and `backprop train --help` with every default."""

import re

import numpy as np
import pytest

import backprop as bp
from backprop import progress
from backprop.cli import build_parser, main
from backprop.errors import ConfigError, a, count

X = np.random.default_rng(0).normal(size=(12, 4))
Y = np.array([0, 1, 0, 1, 1, 0, 0, 1, 1, 0, 1, 0])


def _fit(**options):
    bp.manual_seed(0)
    model = bp.nn.mlp([4, 3, 2], "tanh", dtype="float64")
    return bp.fit(model, "cross_entropy", bp.optim.SGD(model, lr=0.1), (X, Y), 2, 4, validation=(X, Y), **options)


def test_verbose_2_prints_one_line_per_epoch_with_every_number(capsys):
    history = _fit(verbose=2)
    lines = capsys.readouterr().out.splitlines()
    assert [line.split(":")[0] for line in lines] == ["epoch 1/2", "epoch 2/2"]
    record = history.epochs[1]
    for key in ("loss", "accuracy", "val_loss", "val_accuracy"):
        assert f"{key} {record[key]:.4f}" in lines[1]


def test_verbose_0_prints_nothing(capsys):
    _fit(verbose=0)
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err == ""


def test_verbose_1_without_tqdm_prints_lines_and_hints_at_the_extra_once(capsys, monkeypatch):
    monkeypatch.setattr(progress, "_tqdm", lambda: None)
    monkeypatch.setattr(progress, "_hinted", False)
    _fit(verbose=1)
    _fit(verbose=1)
    captured = capsys.readouterr()
    assert len(captured.out.splitlines()) == 4  # two runs of two epochs
    assert captured.err.count("pip install 'backprop[progress]'") == 1


def test_verbose_auto_gives_a_bar_on_a_terminal_and_lines_elsewhere(capsys, monkeypatch):
    monkeypatch.setattr(progress.sys.stderr, "isatty", lambda: True)
    assert progress.resolve_verbose("auto") == 1
    monkeypatch.setattr(progress.sys.stderr, "isatty", lambda: False)
    assert progress.resolve_verbose("auto") == 2
    _fit()
    assert len(capsys.readouterr().out.splitlines()) == 2


@pytest.mark.parametrize("verbose", [3, -1, "yes", None, 1.0, "1"])
def test_a_bad_verbose_is_named_before_any_training(verbose):
    bp.manual_seed(0)
    model = bp.nn.mlp([4, 3, 2], "tanh", dtype="float64")
    before = bp.to_numpy(model.layers[0].weight.data).copy()
    with pytest.raises(ConfigError, match=re.escape(f"verbose={verbose!r}")):
        bp.fit(model, "cross_entropy", bp.optim.SGD(model, lr=0.1), (X, Y), 1, verbose=verbose)
    np.testing.assert_array_equal(bp.to_numpy(model.layers[0].weight.data), before)


def test_summary_lists_layers_shapes_parameters_dtype_and_backend():
    bp.manual_seed(0)
    model = bp.nn.Sequential(
        bp.nn.Linear(5, 7, dtype="float64"),
        bp.nn.Dropout(0.5),
        bp.nn.Sequential(bp.nn.Linear(7, 3, bias=False, dtype="float64"), bp.nn.Tanh()),
    )
    model.layers[2].layers[0].weight.requires_grad = False
    lines = []
    model.summary(print_fn=lines.append)
    assert lines[0] == "Sequential on numpy (device cpu), float64"
    rows = [line.split() for line in lines[3:7]]
    assert rows == [
        ["0", "Linear", "(batch,", "7)", "42"],
        ["1", "Dropout", "(batch,", "7)", "0"],
        ["2.0", "Linear", "(batch,", "3)", "21"],
        ["2.1", "Tanh", "(batch,", "3)", "0"],
    ]
    assert lines[-1] == "total parameters: 63 (trainable 42, frozen 21), 504 B"
    assert model.count_parameters() == 63 and model.count_parameters(trainable_only=True) == 42


def test_summary_runs_in_eval_mode_draws_no_random_numbers_and_restores_modes():
    bp.manual_seed(3)
    model = bp.nn.Sequential(bp.nn.Linear(4, 3), bp.nn.Dropout(0.5), bp.nn.Linear(3, 2))
    model.layers[2].eval()  # a mode the user chose stays
    model.summary(print_fn=lambda line: None)
    assert [m.training for m in model.layers] == [True, True, False]
    after_summary = bp.randn(3).numpy()
    bp.manual_seed(3)
    bp.nn.Sequential(bp.nn.Linear(4, 3), bp.nn.Dropout(0.5), bp.nn.Linear(3, 2))
    np.testing.assert_array_equal(bp.randn(3).numpy(), after_summary)


def test_summary_of_a_model_that_is_not_a_chain_shows_unknown_shapes_and_a_bad_shape_is_named():
    class TwoHeads(bp.nn.Module):
        def __init__(self):
            self.a, self.b = bp.nn.Linear(4, 2), bp.nn.Linear(4, 2)

        def forward(self, x):
            return self.a(x) + self.b(x)

    lines = []
    TwoHeads().summary(print_fn=lines.append)
    assert [line.split()[:3] for line in lines[3:5]] == [["a", "Linear", "?"], ["b", "Linear", "?"]]
    with pytest.raises(ConfigError, match=r"input_shape \(5,\) does not fit"):
        bp.nn.mlp([4, 3, 2]).summary(input_shape=(5,), print_fn=lambda line: None)


def test_a_shared_parameter_is_counted_once():
    layer = bp.nn.Linear(3, 3)
    assert bp.nn.Sequential(layer, bp.nn.Tanh(), layer).count_parameters() == 12


def test_messages_use_the_right_article_and_plural():
    assert [a(word) for word in ("Adam", "SGD", "AdamW", "Linear", "int", "Tensor", "ndarray")] == [
        "an Adam", "an SGD", "an AdamW", "a Linear", "an int", "a Tensor", "an ndarray"]  # fmt: skip
    assert [count(n, word) for n, word in ((1, "epoch"), (0, "epoch"), (2, "process"), (3, "thread"))] == [
        "1 epoch", "0 epochs", "2 processes", "3 threads"]  # fmt: skip
    assert [count(2, word) for word in ("batch", "entry", "axis", "key", "input")] == [
        "2 batches", "2 entries", "2 axes", "2 keys", "2 inputs"]  # fmt: skip
    assert [a(word) for word in ("uint8", "ufunc", "UserDict", "8-bit", "int8", "")] == [
        "a uint8", "a ufunc", "a UserDict", "an 8-bit", "an int8", ""]  # fmt: skip


def test_the_final_line_after_one_epoch_says_epoch(capsys):
    assert main(["train", "--epochs", "1", "--verbose", "0"]) == 0
    assert re.search(r"after 1 epoch \(", capsys.readouterr().out)


def test_a_checkpoint_of_another_optimizer_is_named_with_its_article(tmp_path):
    bp.manual_seed(0)
    model = bp.nn.mlp([4, 3, 2], "tanh", dtype="float64")
    bp.fit(model, "cross_entropy", bp.optim.Adam(model), (X, Y), 1, verbose=0, checkpoint=tmp_path / "c.npz")
    with pytest.raises(bp.io.FileFormatError, match="holds an Adam state, not an SGD"):
        bp.io.load_checkpoint(tmp_path / "c.npz", model, bp.optim.SGD(model, lr=0.1))


def test_train_help_gives_every_option_a_help_line_its_default_and_its_choices():
    train = build_parser()._subparsers._group_actions[0].choices["train"]
    options = train.format_help().split("options:", 1)[1]
    for action in train._actions:
        if not action.option_strings or action.dest == "help":
            continue
        assert action.help, f"{action.option_strings[0]} has no help line"
        if action.default is not None and action.default is not False:
            entry = options.split(f"  {action.option_strings[0]}", 1)[1].split("\n  --", 1)[0]
            assert f"(default: {action.default})" in " ".join(entry.split()), entry
    text = " ".join(options.split())
    assert "(default: 32)" in text and "(default: glorot_uniform)" in text and "{float32,float64}" in text
    assert "(default: 1 on a terminal, 2 elsewhere)" in text
