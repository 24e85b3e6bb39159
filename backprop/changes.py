"""A counter of the changes that can alter what a training step computes.

Module attributes (sub-modules, train/eval mode, settings such as `negative_slope`), the layers
of a Sequential, an optimizer's hyper-parameters and a loaded optimizer state each add one when
they change. A captured step (backprop.step) reads the counter on every call, a few tens of
nanoseconds, and looks closer only when it moved (it reads `requires_grad` flags and compares
its state arrays itself).

>>> import backprop as bp
>>> from backprop import changes
>>> relu = bp.nn.LeakyReLU(0.1)
>>> before = changes.count
>>> relu.negative_slope = 0.2
>>> changes.count > before
True
"""

count = 0


def note() -> None:
    """Record a change (the counter only ever grows)."""
    global count
    count += 1
