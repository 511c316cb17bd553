"""docs/reliability.md is the table generated from the reliability suite's docstrings."""
from tools import reliability_table


def test_the_reliability_page_is_up_to_date():
    assert reliability_table.main(["--check"]) == 0, "regenerate: python -m tools.reliability_table > docs/reliability.md"


def test_every_case_has_a_case_and_an_outcome():
    rows = reliability_table.cases()
    assert len(rows) >= 15
    assert all(case and outcome for case, outcome, _ in rows)
