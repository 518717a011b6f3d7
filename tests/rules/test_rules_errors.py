"""One folder per broken rule set (tests/data/rulesets/<case>/), each with its expected error."""

from __future__ import annotations

from pathlib import Path

import pytest

from frontfilter.rules import RuleSetError, load_ruleset

CASES = Path(__file__).resolve().parents[1] / "data" / "rulesets"


@pytest.mark.parametrize("case", sorted(p.name for p in CASES.iterdir() if p.is_dir()))
def test_broken_rule_set_is_refused_with_its_error(case: str) -> None:
    folder = CASES / case
    expected = (folder / "expected_error.txt").read_text().strip()
    with pytest.raises(RuleSetError) as raised:
        load_ruleset(folder)
    assert raised.value.errors == [expected]


def test_every_error_of_the_set_is_reported_not_just_the_first(tmp_path: Path) -> None:
    (tmp_path / "00-a.toml").write_text(
        '[[rule]]\nname = "a"\ntls = "yes"\nsubject = { regex = "(" }\naction = "bounce"\n'
        '[[rule]]\nname = "b"\nstage = "helo"\nsender.domain = "x"\naction = "reject"\n'
    )
    (tmp_path / "10-b.toml").write_text("[[rule]\n")
    with pytest.raises(RuleSetError) as raised:
        load_ruleset(tmp_path)
    errors = raised.value.errors
    assert [e.split(":")[0:2] for e in errors] == [
        ["00-a.toml", " rule a"], ["00-a.toml", " rule a"], ["00-a.toml", " rule a"],
        ["00-a.toml", " rule b"], ["10-b.toml", " line 1"],
    ]
    assert all("\n" not in error and "Traceback" not in error for error in errors)


def test_a_good_rule_next_to_a_bad_one_does_not_load_either(tmp_path: Path) -> None:
    (tmp_path / "00-good.toml").write_text('[[rule]]\nname = "good"\naction = "accept"\n')
    (tmp_path / "10-bad.toml").write_text('[[rule]]\nname = "bad"\naction = "nope"\n')
    with pytest.raises(RuleSetError):
        load_ruleset(tmp_path)


def test_missing_rules_directory_is_an_error_not_a_traceback(tmp_path: Path) -> None:
    with pytest.raises(RuleSetError) as raised:
        load_ruleset(tmp_path / "nowhere")
    assert raised.value.errors == [f"{tmp_path / 'nowhere'}: not a directory"]


def test_rule_file_that_is_not_utf8_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "00-a.toml").write_bytes(b'[[rule]]\nname = "\xff"\n')
    with pytest.raises(RuleSetError) as raised:
        load_ruleset(tmp_path)
    assert raised.value.errors == ["00-a.toml: line 2: not UTF-8 text"]


def test_toml_error_at_end_of_file_names_the_last_line(tmp_path: Path) -> None:
    (tmp_path / "00-a.toml").write_text('[[rule]]\nname = "a"\naction = "reject')
    with pytest.raises(RuleSetError) as raised:
        load_ruleset(tmp_path)
    assert raised.value.errors[0].startswith("00-a.toml: line 3: ")
