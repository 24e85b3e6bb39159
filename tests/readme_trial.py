"""Runs every ```bash and ```python block of README.md, in order, and every example at its shortest
settings, against the installed backprop: `nox -s readme` installs the project (not editable) in a
fresh virtualenv and runs this script from a folder outside the checkout.

A block runs as written unless RULES names it (by a distinctive substring of the block) with a
reason: then it is skipped, or substitutions make it runnable at a small size. The python blocks
share one namespace, in README order (the API block uses the `bp` of the backend block); each bash
block runs in `bash -e -o pipefail`. A block that needs real MNIST is skipped, with that reason,
when $BACKPROP_DATA_DIR holds no mnist/. tests/test_readme.py checks without running anything that
every block that looks unrunnable as written (see `hazards`) is named in RULES, that every rule
still matches exactly one block and that every python block parses, so a new README block is
caught by the default test suite as well.

    python tests/readme_trial.py [--installed] [--readme README.md] [--examples examples]
"""

from __future__ import annotations

import argparse
import ast
import builtins
import io
import os
import re
import subprocess
import sys
import time
import tokenize
import traceback
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LANGUAGES = ("bash", "python")
FENCE = re.compile(r"^ {0,3}(?P<fence>`{3,}|~{3,})\s*(?P<lang>[\w+-]*)")


@dataclass(frozen=True)
class Block:
    lang: str
    code: str
    line: int  # README line of the block's first code line

    @property
    def first(self) -> str:
        return next((line.strip() for line in self.code.splitlines() if line.strip()), "")

    def where(self) -> str:
        return f"README.md:{self.line} ({self.lang}) `{self.first[:90]}`"


def extract(text: str, languages=LANGUAGES) -> list[Block]:
    """The fenced blocks of a Markdown text in `languages` (all if None), in order."""
    blocks, lines, i = [], text.splitlines(), 0
    while i < len(lines):
        opening = FENCE.match(lines[i])
        if not opening:
            i += 1
            continue
        fence, lang, start = opening["fence"], opening["lang"].lower(), i + 1
        i = start
        while i < len(lines) and not re.match(rf"^ {{0,3}}{fence[0]}{{{len(fence)},}}\s*$", lines[i]):
            i += 1
        if languages is None or lang in languages:
            blocks.append(Block(lang, "\n".join(lines[start:i]) + "\n", start + 1))
        i += 1
    return blocks


@dataclass(frozen=True)
class Rule:
    """What to do with the block that contains `key`: skip it, or run it after `replace` (old -> new)."""

    key: str
    reason: str
    skip: bool = False
    replace: tuple[tuple[str, str], ...] = ()
    needs_mnist: bool = False  # besides blocks that name MNIST themselves

    def apply(self, code: str) -> str:
        for old, new in self.replace:
            if old not in code:
                raise RuleError(f"rule {self.key!r}: {old!r} is no longer in its block")
            code = code.replace(old, new)
        return code


class RuleError(Exception):
    pass


# The README blocks that cannot run as written, keyed by a distinctive substring of the block.
RULES = [
    Rule(
        'pip install ".[plot,progress]" && backprop train',
        "the trial venv already holds the project with [plot,progress]; `nox -s tests` is the suite itself",
        replace=(
            ('pip install ".[plot,progress]" && ', ""),
            ("pip install nox && nox -s tests", "# not run here: pip install nox && nox -s tests"),
        ),
    ),
    Rule(
        'with bp.use_backend("cupy")',
        "CuPy needs a GPU: the scoped form runs with NumPy",
        replace=(('bp.use_backend("cupy")', 'bp.use_backend("numpy")'),),
    ),
    Rule(
        "bp.gradcheck(fn, *inputs)",
        "`fn` and `inputs` stand for any function and its inputs: a float64 matmul-tanh here",
        replace=(
            (
                "bp.gradcheck(fn, *inputs)",
                "bp.gradcheck(lambda a, b: (a @ b).tanh(), bp.randn(2, 3, dtype='float64', requires_grad=True),"
                " bp.randn(3, 4, dtype='float64', requires_grad=True))",
            ),
        ),
    ),
    Rule(
        'bp.data.mnist("train"), bp.data.mnist("test")',
        "one epoch on the first 2,000 training and 1,000 test images",
        replace=(
            (
                'bp.data.mnist("test")',
                'bp.data.mnist("test")\n(x, y), test = (x[:2000], y[:2000]), (test[0][:1000], test[1][:1000])',
            ),
            ("epochs=10", "epochs=1"),
        ),
    ),
    Rule(
        "step = bp.TrainStep(model, bp.losses.cross_entropy, opt)",
        "uses the previous block's model, optimizer and data; `...` stands for fit's and TrainStep's arguments",
        replace=(
            ("step = bp.TrainStep(", "x_batch, y_batch = x[:128], y[:128]\nstep = bp.TrainStep("),
            ("bp.fit(..., capture=True)", "bp.fit(model, bp.losses.cross_entropy, opt, (x, y), 1, 128, capture=True)"),
            ("bp.TrainStep(..., gradient_hooks=", "bp.TrainStep(model, bp.losses.cross_entropy, opt, gradient_hooks="),
            ("bp.TrainStep(..., keep_grads=", "bp.TrainStep(model, bp.losses.cross_entropy, opt, keep_grads="),
        ),
        needs_mnist=True,
    ),
    Rule(
        "backprop predict model.npz rows.csv",
        "rows.csv stands for rows of your own: five bundled test digits here",
        replace=(
            (
                "backprop predict model.npz rows.csv",
                'python -c \'import backprop as bp, numpy as np; x, _ = bp.data.digits("test");'
                ' np.savetxt("rows.csv", x[:5], delimiter=",")\'\nbackprop predict model.npz rows.csv',
            ),
        ),
    ),
    Rule(
        "backprop train --dataset mnist --layers 784,30,10",
        "one epoch; PyTorch is not in the trial venv (a large download), so --save runs on NumPy",
        replace=(("--epochs 10", "--epochs 1"), ("--backend torch", "--backend numpy")),
    ),
    Rule(
        "mpiexec -n 4 python train.py",
        "installs mpi4py and MPICH and runs a train.py of your own on 4 processes (nox -s tests_mpi covers it)",
        skip=True,
    ),
]


def rule_for(block: Block) -> Rule | None:
    matches = [rule for rule in RULES if rule.key in block.code]
    if len(matches) > 1:
        raise RuleError(f"{block.where()} matches several rules: {[rule.key for rule in matches]}")
    return matches[0] if matches else None


# ---------------------------------------------------------------------------------------------
# What makes a block unrunnable as written (checked statically by tests/test_readme.py)

OPTIONAL_BACKENDS = r"cupy|torch|jax"
BASH_HAZARDS = [
    (r"\bpip\s+install\b", "installs packages"),
    (r"\bnox\b", "runs nox sessions"),
    (r"\b(mpiexec|mpirun|srun)\b", "needs several processes under MPI"),
    (rf"(--backend[ =]|BACKPROP_BACKEND=)({OPTIONAL_BACKENDS})", "needs a backend the trial venv lacks"),
    (r"--device[ =]|BACKPROP_DEVICE=", "needs a device (GPU)"),
    (r"\bpython3?\s+(?!-)\S+\.py\b", "runs a script by a path relative to the checkout (or of your own)"),
    (r"\bbackprop\s+bench\b", "runs the benchmark suite (from a checkout only)"),
    (r"\bgit\s|\bcd\s", "works on a checkout"),
    (r"\.\.\.|<[a-z_-]+>", "a placeholder"),
]
PYTHON_HAZARDS = [
    (rf"[\"']({OPTIONAL_BACKENDS}|cuda|gpu)[\"':]", "needs a backend or device the trial venv lacks"),
    (r"\b(subprocess|os\.system)\b", "runs commands"),
]


def strip_comments(block: Block) -> str:
    """The block's code without comments (python: by tokens; bash: from an unquoted ` #` on)."""
    if block.lang == "python":
        try:
            tokens = [t for t in tokenize.generate_tokens(io.StringIO(block.code).readline)]
        except (tokenize.TokenError, SyntaxError):
            return block.code
        return tokenize.untokenize((t.type, t.string) for t in tokens if t.type != tokenize.COMMENT)
    return "\n".join(re.sub(r"(^|\s)#.*$", "", line) for line in block.code.splitlines())


def defined_names(tree: ast.AST) -> set[str]:
    """Every name a block binds, in any scope (assignments, imports, defs, arguments, loop targets)."""
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Name) and isinstance(node.ctx, (ast.Store, ast.Del)):
            names.add(node.id)
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, ast.arg):
            names.add(node.arg)
        elif isinstance(node, ast.alias):
            names.add((node.asname or node.name).split(".")[0])
        elif isinstance(node, ast.ExceptHandler) and node.name:
            names.add(node.name)
    return names


def hazards(block: Block, known: set[str]) -> list[str]:
    """Why `block` could not run as written after the python blocks that bound `known` ([] if none seen)."""
    code = strip_comments(block)
    table = BASH_HAZARDS if block.lang == "bash" else PYTHON_HAZARDS
    found = [f"{why} ({match[0]!r})" for pattern, why in table if (match := re.search(pattern, code))]
    if block.lang == "python":
        try:
            tree = ast.parse(block.code)
        except SyntaxError as error:
            return [*found, f"does not parse: {error}"]
        statements = {id(node.value) for node in ast.walk(tree) if isinstance(node, ast.Expr)}
        if any(n.value is Ellipsis and id(n) not in statements for n in ast.walk(tree) if isinstance(n, ast.Constant)):
            found.append("a `...` placeholder")
        bound = known | defined_names(tree) | set(dir(builtins))
        free = sorted({n.id for n in ast.walk(tree) if isinstance(n, ast.Name) and n.id not in bound})
        if free:
            found.append(f"uses names no earlier block defines: {', '.join(free)}")
    return found


def needs_mnist(block: Block, rule: Rule | None) -> bool:
    return bool(rule and rule.needs_mnist) or "mnist" in strip_comments(block).lower()


@dataclass
class Step:
    block: Block
    rule: Rule | None
    code: str  # what runs (the block after the rule's substitutions)
    problems: list[str] = field(default_factory=list)


def plan(blocks: list[Block]) -> tuple[list[Step], list[str]]:
    """Each block with its rule and the code that will run, and every problem of the table: blocks
    that look unrunnable yet are not named, rules matching no block or several, stale substitutions."""
    steps, problems, known = [], [], set()
    for block in blocks:
        try:
            rule = rule_for(block)
            code = rule.apply(block.code) if rule and not rule.skip else block.code
        except RuleError as error:
            problems.append(str(error))
            continue
        step = Step(block, rule, code)
        if block.lang == "python":
            try:
                ast.parse(block.code)
            except SyntaxError as error:
                step.problems.append(f"{block.where()} does not parse: {error}")
        if not (rule and rule.skip):
            adapted = Block(block.lang, code, block.line)
            found = hazards(adapted, known)
            if found:
                told = "after its rule's substitutions still" if rule else "is not in tests/readme_trial.py RULES and"
                step.problems.append(f"{block.where()} {told} looks unrunnable: {'; '.join(found)}")
            if block.lang == "python":
                try:
                    known |= defined_names(ast.parse(code))
                except SyntaxError:
                    pass
        problems += step.problems
        steps.append(step)
    for rule in RULES:
        count = sum(rule.key in block.code for block in blocks)
        if count != 1:
            problems.append(f"rule {rule.key!r} matches {count} README blocks (it should match exactly one)")
    return steps, problems


# ---------------------------------------------------------------------------------------------
# The examples, at the settings tests/test_examples.py runs them short (kept the same by hand)


@dataclass(frozen=True)
class Example:
    name: str
    kwargs: dict
    check: str  # a Python condition on `figures`, main()'s result, as test_examples.py asserts
    needs_mnist: bool = False


EXAMPLES = [
    Example("handwritten_backward", {}, "max(figures['loss_difference'], figures['engine_max_difference']) < 1e-12"),
    Example("sparse_autoencoder", {"m": 10_000}, "figures['max_difference'] < 1e-10"),
    Example("spirals", {"plot": "spirals.png"}, "figures['train_accuracy'] >= 0.95"),
    Example("nielsen_mnist", {"epochs": 1, "limit": 2000}, "figures['test_accuracy'] > 0.3", needs_mnist=True),
    Example("mnist_784_50_10", {"epochs": 1, "limit": 2000}, "figures['test_accuracy'] > 0.3", needs_mnist=True),
    *(
        Example("modern_mlp", {"dataset": name, "epochs": 1, "limit": 3000}, "figures['test_accuracy'] > 0.6", True)
        for name in ("mnist", "fashion-mnist")
    ),
]

RUN_EXAMPLE = """
import importlib.util, sys
sys.path.insert(0, {folder!r})
spec = importlib.util.spec_from_file_location({name!r}, {path!r})
module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)
figures = module.main(**{kwargs!r})
print({name!r}, "->", figures)
assert {check}, f"{name}: {check} is false for {{figures}}"
"""


def have_mnist() -> bool:
    folder = os.environ.get("BACKPROP_DATA_DIR")
    return bool(folder) and (Path(folder) / "mnist").is_dir()


# ---------------------------------------------------------------------------------------------
# Running


def run_python(step: Step, namespace: dict) -> None:
    source = "\n" * (step.block.line - 1) + step.code  # tracebacks name README.md lines
    exec(compile(source, "README.md", "exec"), namespace)


class BashFailed(Exception):
    pass


def run_bash(step: Step) -> None:
    done = subprocess.run(["bash", "-e", "-o", "pipefail", "-c", step.code])
    if done.returncode:
        raise BashFailed(f"bash exited with status {done.returncode} (its output is above)")


def trial(readme: Path, examples: Path, installed: bool) -> int:
    os.environ.setdefault("MPLBACKEND", "Agg")
    import backprop

    where = Path(backprop.__file__).resolve()
    print(f"backprop {backprop.__version__} from {where.parent}; working in {Path.cwd()}")
    if installed and where.parent == ROOT / "backprop":
        print(f"FAIL: backprop is imported from the source tree ({where}), not from an installed copy")
        return 1
    steps, problems = plan(extract(readme.read_text(encoding="utf-8")))
    if problems:
        print("FAIL: README blocks and tests/readme_trial.py RULES disagree:", *problems, sep="\n  ")
        return 1
    ran, skipped, failed, namespace = [], [], [], {"__name__": "__readme__"}
    python_failed = None
    for step in steps:
        block, rule = step.block, step.rule
        if rule and rule.skip:
            skipped.append((block, rule.reason))
            continue
        if needs_mnist(block, rule) and not have_mnist():
            skipped.append((block, "needs real MNIST: $BACKPROP_DATA_DIR holds no mnist/"))
            continue
        if block.lang == "python" and python_failed:
            skipped.append((block, f"an earlier python block failed ({python_failed.where()})"))
            continue
        print(f"\n--- {block.where()}" + (f"  [adapted: {rule.reason}]" if rule else ""), flush=True)
        start = time.perf_counter()
        try:
            run_python(step, namespace) if block.lang == "python" else run_bash(step)
        except Exception as error:  # noqa: BLE001 - every failure is reported with its block
            if not isinstance(error, BashFailed):
                traceback.print_exc()
            failed.append((block, f"{type(error).__name__}: {error}"))
            python_failed = python_failed or (block if block.lang == "python" else None)
            continue
        ran.append((block, rule, time.perf_counter() - start))
        sys.stdout.flush()

    for example in EXAMPLES:
        label = f"examples/{example.name}.py main(**{example.kwargs})"
        if example.needs_mnist and not have_mnist():
            skipped.append((label, "needs real MNIST: $BACKPROP_DATA_DIR holds no mnist/"))
            continue
        print(f"\n--- {label}", flush=True)
        path = examples / f"{example.name}.py"
        code = RUN_EXAMPLE.format(folder=str(examples), path=str(path), check=example.check,
                                  name=example.name, kwargs=example.kwargs)  # fmt: skip
        start = time.perf_counter()
        done = subprocess.run([sys.executable, "-c", code])
        if done.returncode:
            failed.append((label, f"exited with status {done.returncode}"))
        else:
            ran.append((label, None, time.perf_counter() - start))

    print(f"\nREADME trial: ran {len(ran)}, skipped {len(skipped)}, failed {len(failed)}")
    for what, rule, seconds in ran:
        name = what.where() if isinstance(what, Block) else what
        print(f"  ran      {name}  {seconds:.1f} s" + (f"  (adapted: {rule.reason})" if rule else ""))
    for what, reason in skipped:
        print(f"  skipped  {what.where() if isinstance(what, Block) else what}: {reason}")
    for what, error in failed:
        print(f"  FAILED   {what.where() if isinstance(what, Block) else what}: {error}")
    return 1 if failed else 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--readme", type=Path, default=ROOT / "README.md")
    parser.add_argument("--examples", type=Path, default=ROOT / "examples")
    parser.add_argument("--installed", action="store_true", help="fail unless backprop comes from an installed copy")
    args = parser.parse_args(argv)
    return trial(args.readme.resolve(), args.examples.resolve(), args.installed)


if __name__ == "__main__":
    sys.exit(main())
