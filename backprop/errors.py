"""Errors for bad input, each saying in one line what was wrong and what to do instead.

`UserError` is the family: the command line prints any of them as one line and exits 1, while any
other exception is a bug in backprop and keeps its traceback. Each error also derives from the
built-in class a Python user would catch (ValueError, ImportError, ...). The family: ConfigError
and MissingDependency (here), BackendError (backprop.backends), DataError and IDXError
(backprop.data), FileFormatError (backprop.io), StateDictError (backprop.nn) and DivergedError
(backprop.train).

This module imports nothing, so backprop.backends (which the noxfile reads) can use it.
"""


class UserError(Exception):
    """Bad input from the user: a value, a setting, a file, a package that is not installed."""


class ConfigError(UserError, ValueError):
    """A setting or argument with a value it cannot take (a learning rate, a layer size, a name)."""


class MissingDependency(UserError, ImportError):
    """An optional package a feature needs is not installed (the message names the pip extra)."""
