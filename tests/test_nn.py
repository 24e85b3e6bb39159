"""Modules: reflection, state dicts, modes, moving between backends, initializers, errors."""

from unittest import mock

import numpy as np
import pytest

import backprop as bp
from backprop import nn


def _model():
    bp.manual_seed(0)
    return nn.Sequential(nn.Linear(5, 4), nn.Tanh(), nn.Dropout(0.5), nn.Linear(4, 3, bias=False))


def test_parameters_are_found_by_reflection_with_dotted_names():
    class Net(nn.Module):
        def __init__(self):
            self.encoder = _model()
            self.head = nn.Linear(3, 2)

    names = [name for name, _ in Net().named_parameters()]
    assert names == ["encoder.0.weight", "encoder.0.bias", "encoder.3.weight", "head.weight", "head.bias"]


def test_state_dict_round_trip_and_mismatches():
    source, target = _model(), nn.Sequential(nn.Linear(5, 4), nn.Tanh(), nn.Dropout(0.5), nn.Linear(4, 3, bias=False))
    target.load_state_dict(source.state_dict())
    for (name, a), (_, b) in zip(source.named_parameters(), target.named_parameters(), strict=True):
        np.testing.assert_array_equal(a.numpy(), b.numpy(), strict=True, err_msg=name)
    state = source.state_dict()
    with pytest.raises(KeyError, match=r"missing \['3.weight'\], unexpected \['3.weights'\]"):
        target.load_state_dict({**{k: v for k, v in state.items() if k != "3.weight"}, "3.weights": state["3.weight"]})
    with pytest.raises(ValueError, match=r"parameter '0.bias': state dict has shape \(5,\), model has \(4,\)"):
        target.load_state_dict({**state, "0.bias": np.zeros(5)})


def test_a_load_that_fails_late_changes_nothing():
    """A wrong shape in the last layer is found before the first layer is touched."""
    source, target = _model(), _model()
    before = {name: a.copy() for name, a in ((n, p.numpy()) for n, p in target.named_parameters())}
    state = {**source.state_dict(), "3.weight": np.zeros((3, 4))}
    with pytest.raises(bp.nn.StateDictError, match=r"parameter '3.weight': state dict has shape \(3, 4\)"):
        target.load_state_dict(state)
    for name, p in target.named_parameters():
        np.testing.assert_array_equal(p.numpy(), before[name], strict=True, err_msg=name)


class _Tied(nn.Module):
    def __init__(self):
        self.encoder = nn.Linear(3, 2, bias=False, dtype="float64")
        self.decoder = nn.Linear(3, 2, bias=False, dtype="float64")
        self.decoder.weight = self.encoder.weight

    def forward(self, x):
        return x @ self.encoder.weight + x @ self.decoder.weight


def test_a_shared_parameter_loads_under_any_of_its_names_and_they_must_agree():
    model, w = _Tied(), np.arange(6.0).reshape(3, 2)
    assert list(model.state_dict()) == ["encoder.weight"]
    for state in ({"decoder.weight": w}, {"encoder.weight": w, "decoder.weight": w}):  # an older file kept both
        model.load_state_dict({k: v + 1 for k, v in state.items()})
        np.testing.assert_array_equal(model.decoder.weight.numpy(), w + 1, strict=True)
        assert model.decoder.weight is model.encoder.weight
    with pytest.raises(bp.nn.StateDictError, match="'encoder.weight' and 'decoder.weight' are one, but differ"):
        model.load_state_dict({"encoder.weight": w, "decoder.weight": w * 2})
    np.testing.assert_array_equal(model.encoder.weight.numpy(), w + 1, strict=True)


def test_zero_grad_train_eval_and_dropout(backend):
    model = _model()
    x = bp.randn(8, 5)
    model(x).sum().backward()
    assert all(p.grad is not None for p in model.parameters())
    model.zero_grad()
    assert all(p.grad is None for p in model.parameters())
    model.eval()
    assert not model[2].training
    np.testing.assert_array_equal(model(x).numpy(), model(x).numpy())  # no dropout in eval
    model.train()
    dropped = nn.Dropout(0.5)(bp.ones(200, 50)).numpy()
    assert set(np.unique(dropped)) == {0.0, 2.0} and 0.4 < (dropped == 0).mean() < 0.6


def test_linear_rejects_wrong_input_shapes_naming_the_layer(backend):
    layer = nn.Linear(784, 30)
    with pytest.raises(
        ValueError, match=r"Linear\(784, 30, bias=True\) expects input of shape \(batch, 784\), got \(10, 783\)"
    ):
        layer(bp.zeros(10, 783))


def test_model_moves_between_backends(backend):
    model = _model()
    with bp.use_backend("numpy"):
        x_host = bp.randn(3, 5).numpy()
    expected = model.eval()(bp.tensor(x_host)).numpy()
    model.to("numpy", dtype="float64")
    assert all(isinstance(p.data, np.ndarray) and p.dtype == np.float64 for p in model.parameters())
    with bp.use_backend("numpy"):
        np.testing.assert_allclose(model(bp.tensor(x_host, dtype="float64")).numpy(), expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    "init, std",
    [("kaiming_normal", np.sqrt(2 / 400)), ("kaiming_normal_fan_out", np.sqrt(2 / 300)),
     ("kaiming_uniform", np.sqrt(2 / 400)), ("glorot_normal", np.sqrt(2 / 700)),
     ("glorot_uniform", np.sqrt(2 / 700)), ("standard_normal", 1.0)],
)  # fmt: skip
def test_initializers_have_the_right_spread(init, std):
    bp.manual_seed(1)
    layer = nn.Linear(400, 300, init=init)
    weights = layer.weight.numpy()
    assert weights.shape == (400, 300) and weights.flags["C_CONTIGUOUS"]
    assert abs(weights.std() / std - 1) < 0.03
    biases = layer.bias.numpy()
    assert (biases.std() > 0.9) if init == "standard_normal" else not biases.any()


def test_bad_configurations_are_named():
    with pytest.raises(ValueError, match="unknown initializer 'he'"):
        nn.Linear(2, 3, init="he")
    with pytest.raises(ValueError, match="unknown activation 'swish'"):
        nn.mlp([2, 3, 1], "swish")
    with pytest.raises(ValueError, match="layer sizes must be two or more positive integers"):
        nn.mlp([2])
    with pytest.raises(TypeError, match="Sequential: item 1 is a function"):
        nn.Sequential(nn.ReLU(), bp.relu)


def test_fused_linear_activation_equals_the_layers_one_by_one(backend):
    bp.manual_seed(3)
    linears = [nn.Linear(n_in, n_out, dtype="float64") for n_in, n_out in ((5, 4), (4, 4), (4, 3), (3, 2))]
    model = nn.Sequential(linears[0], nn.Sigmoid(), linears[1], nn.Tanh(), linears[2], nn.ReLU(), linears[3])
    x = bp.tensor(np.random.default_rng(0).normal(size=(6, 5)), dtype="float64")
    fused_out = model(x)
    fused = bp.grad(fused_out.sum(), model.parameters())
    one_by_one = x
    for layer in model.layers:
        one_by_one = layer(one_by_one)
    separate = bp.grad(one_by_one.sum(), model.parameters())
    np.testing.assert_allclose(fused_out.numpy(), one_by_one.numpy(), rtol=1e-13, strict=True)
    for a, b in zip(fused, separate, strict=True):
        np.testing.assert_allclose(bp.to_numpy(a), bp.to_numpy(b), rtol=1e-13, atol=1e-15, strict=True)


class _Blocks(nn.Module):
    """Sub-modules in a list, a dict and a tuple nested in a list; one parameter of its own."""

    def __init__(self):
        self.blocks = [nn.Linear(4, 5, dtype="float64"), nn.Linear(5, 5, dtype="float64")]
        self.heads = {"a": nn.Linear(5, 2, dtype="float64"), "b": nn.Linear(5, 3, dtype="float64")}
        self.extra = [(nn.Dropout(0.5), bp.nn.Parameter(bp.zeros(5, dtype="float64").data))]
        self.scale = bp.nn.Parameter(bp.ones(1, dtype="float64").data)

    def forward(self, x):
        for block in self.blocks:
            x = bp.tanh(block(x))
        x = self.extra[0][0](x) + self.extra[0][1]
        return bp.concat([self.heads["a"](x), self.heads["b"](x)], axis=1) * self.scale


def test_parameters_inside_lists_tuples_and_dicts_are_found_named_and_trained(backend):
    bp.manual_seed(0)
    model = _Blocks()
    names = [name for name, _ in model.named_parameters()]
    assert names == [
        "scale", "extra.0.1", "blocks.0.weight", "blocks.0.bias", "blocks.1.weight", "blocks.1.bias",
        "heads.a.weight", "heads.a.bias", "heads.b.weight", "heads.b.bias",
    ]  # fmt: skip
    model.eval()
    assert not model.extra[0][0].training and not model.blocks[1].training
    x = bp.tensor(np.random.default_rng(0).normal(size=(6, 4)), dtype="float64")
    before = model(x).numpy()
    opt = bp.optim.SGD(model.parameters(), lr=0.1)
    (model(x) * model(x)).sum().backward()
    assert all(p.grad is not None for p in model.parameters())
    opt.step()
    assert not np.allclose(model(x).numpy(), before)
    clone = _Blocks()
    clone.load_state_dict(model.state_dict())
    np.testing.assert_array_equal(clone.eval()(x).numpy(), model(x).numpy(), strict=True)


def test_a_shared_parameter_is_one_parameter_with_both_gradients():
    class Tied(nn.Module):
        def __init__(self):
            self.encoder = nn.Linear(3, 2, bias=False, dtype="float64")
            self.decoder = nn.Linear(2, 3, bias=False, dtype="float64")
            self.decoder.weight = self.encoder.weight  # tied (its transpose is used below)
            self.again = [self.encoder]  # the same module twice

        def forward(self, x):
            return (x @ self.encoder.weight) @ self.decoder.weight.mT

    model = Tied()
    assert [name for name, _ in model.named_parameters()] == ["encoder.weight"]
    assert len(model.parameters()) == 1 and len(list(model.named_modules())) == 3
    x = bp.tensor(np.arange(6.0).reshape(2, 3) / 5, dtype="float64")
    w = model.encoder.weight
    assert bp.gradcheck(lambda weight: (x @ weight) @ weight.mT, bp.tensor(w.numpy(), requires_grad=True))


def test_a_module_that_refers_back_to_its_parent_does_not_hang():
    outer = nn.Sequential(nn.Linear(2, 2))
    outer.layers[0].owner = outer  # a reference cycle
    assert len(outer.parameters()) == 2 and [n for n, _ in outer.named_modules()] == ["", "0"]
    outer.eval()
    assert not outer.layers[0].training


def _nodes(out) -> str:
    """The op that made `out` (its backward's qualified name)."""
    return out._backward.__qualname__.split(".")[0]


def test_a_sequential_calls_its_layers_as_they_are_now(backend):
    # a layer class patched after the first call (a spy in a test) is called, and a layer that
    # returns an array of its own is followed by one that gets it as a Tensor, as Module.__call__ does
    x = np.linspace(-1.0, 1.0, 6).reshape(2, 3)
    model = bp.nn.Sequential(
        bp.nn.Linear(3, 4, dtype="float64"), bp.nn.LeakyReLU(), bp.nn.Linear(4, 2, dtype="float64")
    )
    model(x)
    calls, original = [], bp.nn.LeakyReLU.forward
    with mock.patch.object(bp.nn.LeakyReLU, "forward", lambda self, t: calls.append(t.shape) or original(self, t)):
        model(x)
    assert calls == [(2, 4)]

    class Standardize(bp.nn.Module):  # parameter-free, computes on the host
        def forward(self, t):
            a = bp.to_numpy(t.data)
            return (a - a.mean(axis=0)) / (a.std(axis=0) + 1e-8)

    assert bp.nn.Sequential(Standardize(), bp.nn.Linear(3, 2, dtype="float64"))(x).shape == (2, 2)


def test_fusion_is_a_declared_rule_a_new_layer_can_join(backend):
    bp.manual_seed(1)
    x = bp.tensor(np.random.default_rng(0).normal(size=(4, 3)), dtype="float64", requires_grad=True)

    class ScaledSigmoid(nn.Sigmoid):  # inherits fused_activation, but changes forward: never fused
        def forward(self, x):
            return ops_sigmoid(x) * 2.0

    ops_sigmoid = bp.sigmoid
    linear = nn.Linear(3, 2, dtype="float64")
    assert _nodes(nn.Sequential(linear, nn.Tanh())(x)) == "linear"  # one node
    scaled = nn.Sequential(linear, ScaledSigmoid())(x)
    np.testing.assert_allclose(scaled.numpy(), 2 / (1 + np.exp(-(x.numpy() @ linear.weight.numpy()))), rtol=1e-12)

    class Affine(nn.Module):  # a new layer joins by declaring the rule and taking `activation`
        fuses_activation = True

        def __init__(self):
            self.weight = nn.Parameter(bp.tensor(np.eye(3) * 2, dtype="float64").data)

        def forward(self, x, activation=None):
            return bp.linear(x, self.weight, None, activation)

    fused = nn.Sequential(Affine(), nn.ReLU())
    assert _nodes(fused(x)) == "linear"
    np.testing.assert_array_equal(fused(x).numpy(), np.maximum(2 * x.numpy(), 0), strict=True)
    assert bp.gradcheck(lambda t: fused(t), x)
