"""The report renders user data (labels, ids, snippets, paths) verbatim and safely in both formats."""
import itertools
import re
from html.parser import HTMLParser

from fastif_engine.report.content import render

NASTY = ['a|b', '<script>alert("x")</script>', "it's \"quoted\"", "**not bold** `not code`"]


class _Tables(HTMLParser):
    def __init__(self):
        super().__init__()
        self.tags, self.tables, self._row = [], [], None

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        if tag == "table":
            self.tables.append([])
        elif tag == "tr":
            self._row = []
            self.tables[-1].append(self._row)
        elif tag in ("td", "th"):
            self._row.append("")

    def handle_data(self, data):
        if self._row is not None and self.tags and self.tags[-1] in ("td", "th", "code", "b"):
            self._row[-1] += data


def _metrics():
    label = NASTY[0] + " " + NASTY[1]
    return {
        "counts": {"train": 3, "valid": 2, "errors": 1, "distinct_candidates": 2, "flagged": 1},
        "config": {"model": "pkg.mod:make", "train": "/data/x|y <z>.parquet", "k": 2},
        "flag_by": "combined",
        "accuracy": {"before": {"valid": 0.5}, "retrain": None},
        "flagging": {"score": "combined", "within_budget": 1, "flagged": 1, "min_evidence": 2.0, "below_evidence": 0,
                     "folds": 2, "net_harm_not_positive": 0, "past_budget": 7,
                     "class_prior": {"setting": "auto", "refitted": True, "z": 0.4, "observed": [1, 1],
                                     "expected": [0.8, 1.2], "offset": [0.1, -0.1], "classes": [NASTY[2], label]}},
        "class_mix": {"classes": [{"label": label, "train": 2, "flagged": 1, "train_share": 2 / 3,
                                   "flagged_share": 1.0}], "distance": 0.1},
        "history": {"path": "h.parquet", "changes": {"previous_time": "t0", "new": NASTY[1:3], "still": [],
                                                     "gone": []},
                    "trend": [{"time": "t0", "errors": 1, "flagged": 1, "valid_accuracy": 0.5, "verdict": NASTY[0]}]},
        "solver": {"name": "exact", "ridge": 0.1}, "timings": {"s_test": 1.0}, "versions": {"fastif": "x"},
    }


def _row():
    return {"rank": 1, "train_id": NASTY[0], "content": " ".join(NASTY), "given": NASTY[1], "predicted": NASTY[2],
            "suggested": NASTY[0], "combined_score": 0.9, "net_harm": 1.0, "net_harm_t": 3.0, "harm_score": 0.5,
            "n_errors_harmed": 1, "harms": NASTY[3]}


def test_html_escapes_user_data_and_keeps_every_table_cell():
    _, html, _ = render(_metrics(), [_row()], {})
    parsed = _Tables()
    parsed.feed(html)
    assert "script" not in parsed.tags  # no element was injected
    assert html.count("<b>") == html.count("</b>") and "<b>not bold</b>" not in html  # user ** is not markup
    for table in parsed.tables:
        assert len({len(row) for row in table}) == 1, table  # a | in a cell never splits it
    top = parsed.tables[-2]  # the top flagged rows (the timings table is last)
    cells = dict(zip(top[0], top[1]))
    assert cells["train id"] == NASTY[0] and cells["given"] == NASTY[1] and cells["predicted"] == NASTY[2]
    assert cells["content"] == " ".join(NASTY) and cells["suggested action"] == "relabel to " + NASTY[0]
    assert parsed.tables[0][1][0] == NASTY[0] + " " + NASTY[1]  # the class-mix label
    # the class-prior sentence names the class furthest from the model's predictions, as code
    assert "at the class prior refitted to validation: validation has 1 rows of <code>it&#39;s &#34;quoted&#34;</code>" in html
    assert "(z = 0.40 over all classes, below 2: within sampling noise)" in html
    assert "A further <b>7</b> rows past the budget clear the evidence floor too" in html


def test_markdown_tables_keep_their_columns_and_user_markup_is_inert():
    markdown, _, _ = render(_metrics(), [_row()], {})
    runs = itertools.groupby(markdown.splitlines(), key=lambda line: line.startswith("|"))
    tables = [list(lines) for is_table, lines in runs if is_table]
    assert len(tables) == 4  # class mix, history, top rows, timings
    for table in tables:
        widths = {len(re.split(r"(?<!\\)\|", line)) for line in table}
        assert len(widths) == 1, table  # an escaped \| in a cell never adds a column
    assert "\\<script\\>" in markdown and "<script>" not in markdown
    assert "\\*\\*not bold\\*\\*" in markdown
    assert "`/data/x|y <z>.parquet`" in markdown  # a path shown as code, outside a table: as it is
