"""The README's two opening commands are the ones CI and users run."""

from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _commands() -> list[str]:
    text = (REPO / "README.md").read_text()
    block = text.split("```bash\n", 1)[1].split("```", 1)[0]
    return [line for line in block.splitlines() if line and not line.startswith("#")]


def test_readme_opens_with_two_commands_and_ci_runs_them_from_the_readme():
    main, tests = _commands()
    ci = (REPO / ".ci" / "run").read_text()
    # CI reads both commands from the README (no copy to drift) and runs command 1 in a fresh clone.
    assert "README.md" in ci and 'git clone -q . "$fresh/featcache"' in ci
    assert '-c "${COMMANDS[0]}"' in ci and '-c "${COMMANDS[1]}"' in ci
    assert "-e '.[cpu" in main and "test" not in main.split("featcache-extract")[0]
    assert "featcache-extract data/sample cache/sample" in main and "make_sample.py data/sample" in main
    assert "pytest" in tests
