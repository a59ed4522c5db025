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
