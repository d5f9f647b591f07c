"""The one markdown-table writer every generated page uses."""

from __future__ import annotations

import pytest

from modalfuse.markdown import markdown_table


def test_a_table_is_header_separator_and_rows_as_given():
    assert markdown_table(["a", "b"], [[1, "x"], [None, ""]]) == (
        "| a | b |\n| --- | --- |\n| 1 | x |\n| None |  |")
    assert markdown_table(["only"], []) == "| only |\n| --- |"


def test_alignment_per_column():
    table = markdown_table(["engine", "rows/s", "c", "l"], [["local", 198, 1, 2]],
                           align=[None, "right", "center", "left"])
    assert table.splitlines()[1] == "| --- | ---: | :---: | :--- |"
    with pytest.raises(ValueError, match="align has 1 entries for 2 columns"):
        markdown_table(["a", "b"], [], align=["right"])
