"""Progress bars from tqdm when it is installed (the `progress` extra), else none."""

from __future__ import annotations


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
    """A tqdm bar used as a context manager, or a silent stand-in."""
    if enabled:
        try:
            from tqdm import tqdm

            return tqdm(total=total, desc=description, unit=unit, **options)
        except ImportError:
            pass
    return _NoBar()
