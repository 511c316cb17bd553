"""docs/reliability.md is the table generated from the reliability suite's docstrings."""
import pytest

from tools import reliability_table


def test_the_reliability_page_is_up_to_date():
    assert reliability_table.main(["--check"]) == 0, "regenerate: python -m tools.reliability_table --write"


def test_every_case_has_a_case_and_an_outcome():
    rows = reliability_table.cases()
    assert len(rows) >= 15
    assert all(case and outcome for case, outcome, _ in rows)


def test_write_regenerates_the_page_and_a_failure_leaves_it_whole(tmp_path, monkeypatch, capsys):
    page = tmp_path / "reliability.md"
    page.write_text("an old page\n")
    monkeypatch.setattr(reliability_table, "DOC", page)
    assert reliability_table.main(["--write"]) == 0
    assert page.read_text() == reliability_table.render() and f"wrote {page}" in capsys.readouterr().out
    assert reliability_table.main(["--check"]) == 0
    assert [p.name for p in tmp_path.iterdir()] == ["reliability.md"]  # no temporary left

    def no_docstring(repo=None):
        raise SystemExit("tests/x.py:1: test_reliability_x needs a docstring '<case> => <outcome>'")

    monkeypatch.setattr(reliability_table, "cases", no_docstring)
    before = page.read_text()
    with pytest.raises(SystemExit, match="needs a docstring"):
        reliability_table.main(["--write"])
    assert page.read_text() == before  # '> docs/reliability.md' left it empty
