"""reasonlab.markdown.table: headers, alignment, missing values and escaping."""

import pytest

from reasonlab.markdown import table


def test_table_from_dicts_and_sequences():
    rows = [{"model": "a|b", "acc": 0.5, "n": None}, {"model": "c\nd", "acc": float("nan"), "n": 3}]
    assert table(rows, ["model", "acc", "n"], fmt={"acc": ".3f"}, align="lrr") == (
        "| model | acc | n |\n|---|---:|---:|\n| a\\|b | 0.500 | — |\n| c d | — | 3 |\n")
    assert table([["x", 1]], {"k": "key", "v": "value"}) == "| key | value |\n|---|---|\n| x | 1 |\n"
    assert table([], ["a"]) == "| a |\n|---|\n"


def test_table_refuses_rows_and_alignments_of_the_wrong_width():
    with pytest.raises(ValueError, match="a row has 1 cells for 2 columns"):
        table([["x"]], ["a", "b"])
    with pytest.raises(ValueError, match="align has 1 letters for 2 columns"):
        table([], ["a", "b"], align="l")
