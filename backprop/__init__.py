"""backprop: one autodiff core, written against the Python array API standard, on any backend.

>>> import backprop as bp
>>> bp.manual_seed(0)
>>> x = bp.tensor([[1.0, 2.0], [3.0, 4.0]], requires_grad=True)
>>> w = bp.randn(2, 3, requires_grad=True)
>>> (x @ w).tanh().sum().backward()
>>> x.grad.shape
(2, 2)
"""

from backprop import blas, data, io, losses, nn, optim, plots
from backprop.backend import (
    Backend,
    get_backend,
    get_rng_state,
    installed_backends,
    manual_seed,
    set_backend,
    set_rng_state,
    to_numpy,
    use_backend,
)
from backprop.backends import BACKENDS, BackendEntry, BackendError, backend_of, register_backend
from backprop.creation import ones, rand, randn, tensor, zeros
from backprop.gradcheck import GradcheckError, gradcheck
from backprop.io import load_model, save_model
from backprop.ops import OPS, op
from backprop.step import CaptureWarning, TrainStep
from backprop.tensor import Tensor, grad, is_grad_enabled, no_grad
from backprop.train import EarlyStopping, History, evaluate, fit, predict, predict_classes

__version__ = "0.1.0"

# every registered op is bp.<name> (bp.tanh, bp.linear, ...): bp.op sets it as it registers the op
