"""Errors for bad input, each saying in one line what was wrong and what to do instead.

`UserError` is the family: the command line prints any of them as one line and exits 1, while any
other exception is a bug in backprop and keeps its traceback. Each error also derives from the
built-in class a Python user would catch (ValueError, ImportError, ...). The family: ConfigError
and MissingDependency (here), BackendError (backprop.backends), DataError and IDXError
(backprop.data), FileFormatError (backprop.io), StateDictError (backprop.nn) and DivergedError
(backprop.train).

This module imports nothing, so backprop.backends (which the noxfile reads) can use it. It also
holds the two helpers that keep messages grammatical: `a(noun)` and `count(n, noun)`.

>>> a("Adam"), a("SGD"), a("Linear"), count(1, "epoch"), count(2, "process")
('an Adam', 'an SGD', 'a Linear', '1 epoch', '2 processes')
"""


def a(noun: str) -> str:
    """`noun` with its indefinite article, by sound: "an Adam", "a Tensor", "an SGD", "an ndarray"
    (an acronym is read letter by letter)."""
    acronym = noun[:2].isupper() or noun.startswith("nd")  # ndarray: "en-dee-array"
    vowel_sound = noun[:1].upper() in "AEFHILMNORSX" if acronym else noun[:1].lower() in "aeiou"
    return f"{'an' if vowel_sound else 'a'} {noun}"


def count(n: int, noun: str) -> str:
    """`n` and `noun`, plural unless n is 1: "1 epoch", "3 epochs", "2 processes"."""
    if n == 1:
        return f"{n} {noun}"
    return f"{n} {noun}{'es' if noun.endswith(('s', 'sh', 'x')) else 's'}"


class UserError(Exception):
    """Bad input from the user: a value, a setting, a file, a package that is not installed."""


class ConfigError(UserError, ValueError):
    """A setting or argument with a value it cannot take (a learning rate, a layer size, a name)."""


class MissingDependency(UserError, ImportError):
    """An optional package a feature needs is not installed (the message names the pip extra)."""
