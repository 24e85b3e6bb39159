"""The documentation pages stay true: their examples run, and the files they include exist.

A ```pycon block of docs/**/*.md is a doctest. The blocks of a page run in order in one
namespace, as a reader would type them. A block right after the line
`<!-- doctest: needs-mnist -->` runs on its own (a fresh namespace) and is skipped, with the reason,
where real MNIST is not in $BACKPROP_DATA_DIR. Other code blocks (```python, ```bash) are shown,
not run. The site itself is built by `nox -s docs` (mkdocs build --strict).
"""

import doctest
import os
import re
import types
from pathlib import Path

import pytest

import backprop as bp
from backprop import backend

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
PAGES = sorted(DOCS.rglob("*.md"))
NEEDS_MNIST = "<!-- doctest: needs-mnist -->"
FENCE = re.compile(r"^```pycon[^\n]*\n(.*?)^```", re.MULTILINE | re.DOTALL)
SNIPPET = re.compile(r'^\s*--8<--\s+"([^"]+)"', re.MULTILINE)
DATA_DIR = os.environ.get("BACKPROP_DATA_DIR")
HAVE_MNIST = bool(DATA_DIR) and Path(DATA_DIR, "mnist").is_dir()
FLAGS = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE


def blocks(page: Path) -> list[tuple[int, str, bool]]:
    """(line, source, needs MNIST) of every ```pycon block of `page`."""
    text = page.read_text(encoding="utf-8")
    found = []
    for match in FENCE.finditer(text):
        before = text[: match.start()].rstrip("\n").rsplit("\n", 1)[-1]
        found.append((text.count("\n", 0, match.start()) + 1, match.group(1), before.strip() == NEEDS_MNIST))
    return found


def run_doctest(source: str, name: str, line: int, namespace: dict) -> None:
    """Run `source` as a doctest in `namespace`; fail with doctest's report of each difference."""
    test = doctest.DocTestParser().get_doctest(source, namespace, name, name, line)
    runner = doctest.DocTestRunner(optionflags=FLAGS)
    report = []
    runner.run(test, out=report.append, clear_globs=False)
    namespace.update(test.globs)  # the DocTest ran in a copy: the page's next block continues from here
    assert runner.failures == 0, "".join(report)


@pytest.fixture
def isolated():
    """The backend flag and the random state as they were: a page may set either."""
    default, rng = backend._default, bp.get_rng_state()
    yield
    backend._default = default
    bp.set_rng_state(rng)


def _page_id(page: Path) -> str:
    return str(page.relative_to(DOCS))


RUNNABLE = [page for page in PAGES if any(not mnist for _, _, mnist in blocks(page))]
WITH_MNIST = [(page, line) for page in PAGES for line, _, mnist in blocks(page) if mnist]


def test_the_pages_have_runnable_examples():
    assert RUNNABLE, "no ```pycon block found under docs/"


@pytest.mark.parametrize("page", RUNNABLE, ids=_page_id)
def test_page_examples_run(page, isolated):
    namespace: dict = {}
    for line, source, mnist in blocks(page):
        if not mnist:
            run_doctest(source, f"{_page_id(page)}:{line}", line, namespace)


@pytest.mark.skipif(not HAVE_MNIST, reason="real MNIST not found in $BACKPROP_DATA_DIR")
@pytest.mark.parametrize("page, line", WITH_MNIST, ids=[f"{_page_id(p)}:{n}" for p, n in WITH_MNIST])
def test_mnist_examples_run(page, line, isolated):
    (source,) = [s for n, s, _ in blocks(page) if n == line]
    run_doctest(source, f"{_page_id(page)}:{line}", line, {})


@pytest.mark.parametrize("page", PAGES, ids=_page_id)
def test_included_files_exist(page):
    """Every `--8<--` snippet (examples/, bench/) names a file of the repository: an include
    that went stale fails here, in the default test session, not only in `nox -s docs`."""
    for target in SNIPPET.findall(page.read_text(encoding="utf-8")):
        path, section = re.sub(r"(:-?\d*)+$", "", target), None  # a line range: "file.md:2:" or "file.md:3:10"
        if re.search(r":[A-Za-z][\w-]*$", path):  # a section: "README.md:from-pytorch"
            path, section = path.rsplit(":", 1)
        assert (ROOT / path).is_file(), f"{_page_id(page)} includes {target!r}, which does not exist"
        if section is not None:
            text = (ROOT / path).read_text(encoding="utf-8")
            for end in ("start", "end"):
                assert f"--8<-- [{end}:{section}]" in text, f"{path} has no {end} marker of section {section!r}"


def test_the_api_reference_names_every_public_name():
    """A name added to `backprop` (other than a submodule or an op: those have pages of their own)
    must appear as `backprop.<name>` on the API reference's top-level page (docs/api/backprop.md)."""
    page = (DOCS / "api" / "backprop.md").read_text(encoding="utf-8")
    public = [
        name
        for name, value in vars(bp).items()
        if not name.startswith("_") and not isinstance(value, types.ModuleType) and name not in bp.OPS
    ]
    missing = [name for name in public if not re.search(rf"backprop\.{name}\b", page)]
    assert not missing, f"docs/api/backprop.md does not mention backprop.{', backprop.'.join(missing)}"
