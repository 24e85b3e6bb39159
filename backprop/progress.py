"""What `fit` shows per epoch, as Keras's `verbose`: 0 nothing, 1 a progress bar (tqdm, the
`progress` extra; one line per epoch and a hint at the extra without it), 2 one line per epoch;
"auto" is 1 on a terminal, else 2 (a log file gets lines, not bars).

>>> resolve_verbose(0), resolve_verbose(2)
(0, 2)
>>> epoch_line(3, 10, {"epoch": 3, "loss": 0.123456, "accuracy": 0.9, "seconds": 0.52})
'epoch 3/10: loss 0.1235, accuracy 0.9000 (0.52 s)'
"""

from __future__ import annotations

import numbers
import sys

from backprop.errors import ConfigError

_hinted = False  # the progress extra is suggested once per process


def _tqdm():
    try:
        from tqdm import tqdm
    except ImportError:
        return None
    return tqdm


def resolve_verbose(verbose) -> int:
    """0, 1 or 2 for `verbose` (0, 1, 2, a bool or "auto"); anything else is a ConfigError."""
    if isinstance(verbose, str) and verbose == "auto":
        return 1 if sys.stderr.isatty() else 2
    if not isinstance(verbose, numbers.Integral) or verbose not in (0, 1, 2):  # True and False are 1 and 0
        raise ConfigError(f"verbose={verbose!r}: use 0 (silent), 1 (progress bar), 2 (one line per epoch) or 'auto'")
    return int(verbose)


class _NoBar:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def update(self, n=1):
        pass

    def set_postfix(self, values):
        pass


def progress_bar(total: int | None, description: str, unit: str, enabled: bool = True, **options):
    """A tqdm bar used as a context manager, or a silent stand-in (tqdm missing or not `enabled`)."""
    tqdm = _tqdm() if enabled else None
    return tqdm(total=total, desc=description, unit=unit, **options) if tqdm is not None else _NoBar()


def epoch_line(epoch: int, epochs: int, record: dict) -> str:
    """One epoch's record as one line: its losses and metrics with 4 decimals, then its time."""
    values = ", ".join(f"{key} {value:.4f}" for key, value in record.items() if key not in ("epoch", "seconds"))
    return f"epoch {epoch}/{epochs}: {values} ({record['seconds']:.2f} s)"


class EpochReport:
    """The bar (verbose 1 with tqdm) or the line (verbose 2, or 1 without tqdm) of one epoch."""

    def __init__(self, verbose: int, epoch: int, epochs: int, batches: int):
        self.epoch, self.epochs = epoch, epochs
        has_bar = verbose == 1 and _tqdm() is not None
        self.line = verbose == 2 or (verbose == 1 and not has_bar)
        if verbose == 1 and not has_bar:
            _hint_progress_extra()
        self.bar = progress_bar(batches, f"epoch {epoch}/{epochs}", "batch", enabled=has_bar)

    def __enter__(self):
        self.bar.__enter__()
        return self

    def __exit__(self, *exc):
        return self.bar.__exit__(*exc)

    def update(self, n: int = 1) -> None:
        self.bar.update(n)

    def finish(self, record: dict) -> None:
        """Show the epoch's record: as the bar's postfix, or as one printed line."""
        self.bar.set_postfix({k: round(v, 4) for k, v in record.items() if k not in ("epoch", "seconds")})
        if self.line:
            print(epoch_line(self.epoch, self.epochs, record), flush=True)


def _hint_progress_extra() -> None:
    global _hinted
    if not _hinted:
        _hinted = True
        print("(one line per epoch; for a progress bar: pip install 'backprop[progress]')", file=sys.stderr)
