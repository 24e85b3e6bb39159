"""README.md's code blocks, checked without running them (`nox -s readme` runs them): every block
either looks runnable as written or is named in tests/readme_trial.py RULES with a reason, every
rule still matches one block, every python block parses, and every example has short settings."""

import ast
from pathlib import Path

import pytest
import readme_trial as trial

ROOT = Path(__file__).resolve().parent.parent
BLOCKS = trial.extract((ROOT / "README.md").read_text(encoding="utf-8"))


def test_the_readme_has_bash_and_python_blocks():
    assert {block.lang for block in BLOCKS} == {"bash", "python"}


def test_no_code_block_escapes_the_trial():
    """The trial runs bash and python blocks; a block in another language would go unchecked."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    other = [b.where() for b in trial.extract(text, languages=None) if b.lang not in ("", "text", *trial.LANGUAGES)]
    assert other == [], "tests/readme_trial.py runs only ```bash and ```python blocks"


def test_every_block_runs_as_written_or_is_listed_with_a_reason():
    steps, problems = trial.plan(BLOCKS)
    assert problems == []
    assert len(steps) == len(BLOCKS)
    assert all(rule.reason.strip() for rule in trial.RULES)


@pytest.mark.parametrize("block", [b for b in BLOCKS if b.lang == "python"], ids=lambda b: f"README.md:{b.line}")
def test_every_python_block_parses(block):
    ast.parse(block.code)
    rule = trial.rule_for(block)
    if rule and not rule.skip:
        ast.parse(rule.apply(block.code))


def test_every_example_has_short_settings():
    examples = {path.stem for path in (ROOT / "examples").glob("*.py") if not path.name.startswith("_")}
    assert examples == {example.name for example in trial.EXAMPLES}


def test_the_extractor_and_the_hazards():
    text = "\n".join(
        [
            "```bash",
            "pip install foo   # a comment: nox",
            "```",
            "```",
            "```python",  # inside an unlabelled block: not a block of its own
            "```",
            "~~~python",
            "bp.fit(..., epochs=1)",
            "with bp.no_grad(): ...",
            "~~~",
        ]
    )
    bash, python = trial.extract(text)
    assert (bash.lang, bash.line, python.lang, python.line) == ("bash", 2, "python", 8)
    assert trial.hazards(bash, set()) == ["installs packages ('pip install')"]
    assert trial.hazards(python, {"bp"}) == ["a `...` placeholder"]  # `with ...: ...` is a body, not a placeholder
    assert trial.hazards(python, set()) == ["a `...` placeholder", "uses names no earlier block defines: bp"]
