"""Reports in the UI: the images a report links beside report.md are embedded, since the UI sees only the text."""

import base64

from assets.publish import report_markdown


def test_linked_images_are_embedded_and_the_rest_left_alone(tmp_path):
    png = b"\x89PNG\r\n\x1a\nfake"
    (tmp_path / "exact_match.png").write_bytes(png)
    report = ("# R\n\n![exact match](exact_match.png)\n\n![gone](missing.png) ![remote](https://x/y.png) "
              "[a link](exact_match.png)\n")
    text = report_markdown(report, tmp_path).value
    assert f"![exact match](data:image/png;base64,{base64.b64encode(png).decode()})" in text
    assert "![gone](missing.png)" in text and "![remote](https://x/y.png)" in text  # nothing to embed
    assert "[a link](exact_match.png)" in text  # a link is not an image
    assert text.count("data:image/png") == 1


def test_table_cells_and_headers_are_literal_markdown():
    from ml.reports import markdown_table

    table = markdown_table([{"name": "__init__", "code": "a | b", "note": "*x* `y` <T> [l](u) ~z~ a\\b\nc"}],
                           ["name", "code", "note"])
    head, rule, row = table.split("\n")
    assert row == r"| \_\_init\_\_ | a \| b | \*x\* \`y\` \<T\> [l]\(u) \~z\~ a\\b⏎c |"
    assert row.count(" | ") == 2  # three cells: the pipe inside one does not split it
    assert markdown_table([{"_a": 1}], ["_a"]).startswith(r"| \_a |")
    # legible where nothing needs escaping: an interval, a snake_case name (no emphasis inside a word)
    assert markdown_table([{"x": "0.5 [0.4, 0.6]"}], ["x"]).endswith("| 0.5 [0.4, 0.6] |")
    assert markdown_table([{"metric": "exact_match"}], ["metric"]).endswith("| exact_match |")


def test_a_long_cell_is_cut_before_it_is_escaped():
    from ml.reports import markdown_table

    row = markdown_table([{"x": "_" * 10}], ["x"], width=4).split("\n")[2]
    assert row == r"| \_\_\_… |"  # no escape split from its character
