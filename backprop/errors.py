"""Errors for bad input, each saying in one line what was wrong and what to do instead.

`UserError` is the family: the command line prints any of them as one line and exits 1, while any
other exception is a bug in backprop and keeps its traceback. Each error also derives from the
built-in class a Python user would catch (ValueError, ImportError, ...). The family: ConfigError
and MissingDependency (here), BackendError (backprop.backends), DataError and IDXError
(backprop.data), FileFormatError (backprop.io), StateDictError (backprop.nn) and DivergedError
(backprop.train).

This module imports nothing of backprop's, so backprop.backends (which the noxfile reads) can use
it. It also holds the two helpers that keep messages grammatical, `a(noun)` and `count(n, noun)`,
and `positive_int`, the check of a count the user gives (epochs, a batch size).

>>> a("Adam"), a("SGD"), a("Linear"), count(1, "epoch"), count(2, "process")
('an Adam', 'an SGD', 'a Linear', '1 epoch', '2 processes')
"""

import numbers


def a(noun: str) -> str:
    """`noun` with its indefinite article, by sound: "an Adam", "a Tensor", "an SGD", "an ndarray",
    "a uint8", "an 8-bit" (an acronym is read letter by letter)."""
    if not noun:
        return noun
    acronym = noun[:2].isupper() or noun.startswith("nd")  # ndarray: "en-dee-array"
    if acronym:
        vowel_sound = noun[0].upper() in "AEFHILMNORSX"
    elif noun[0].isdigit():
        vowel_sound = noun.startswith(("8", "11", "18"))  # eight, eleven, eighteen
    else:
        you = noun.lower().startswith(("uint", "ufunc", "use", "uni", "usa", "eu"))  # "yoo"
        vowel_sound = noun[0].lower() in "aeiou" and not you
    return f"{'an' if vowel_sound else 'a'} {noun}"


def count(n: int, noun: str) -> str:
    """`n` and `noun`, plural unless n is 1: "1 epoch", "3 epochs", "2 processes", "2 batches"."""
    if n == 1:
        return f"{n} {noun}"
    if noun in IRREGULAR:
        return f"{n} {IRREGULAR[noun]}"
    if noun.endswith("y") and noun[-2:-1] not in ("a", "e", "o", "u"):
        return f"{n} {noun[:-1]}ies"
    return f"{n} {noun}{'es' if noun.endswith(('s', 'sh', 'x', 'tch', 'z')) else 's'}"


IRREGULAR = {"axis": "axes", "matrix": "matrices", "index": "indices"}


def positive_int(name: str, value) -> int:
    """`value` as an int, or a ConfigError naming `name` where it is not a positive integer (a
    bool, a float such as 4.0, a string or zero)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ConfigError(f"{name} must be a positive integer, got {value!r} ({type(value).__name__})")
    if value < 1:
        raise ConfigError(f"{name} must be a positive integer, got {value}")
    return int(value)


class UserError(Exception):
    """Bad input from the user: a value, a setting, a file, a package that is not installed."""


class ConfigError(UserError, ValueError):
    """A setting or argument with a value it cannot take (a learning rate, a layer size, a name)."""


class MissingDependency(UserError, ImportError):
    """An optional package a feature needs is not installed (the message names the pip extra)."""
