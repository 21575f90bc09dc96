"""miir.provenance: the header every benchmark record and results table starts with."""

from __future__ import annotations

import json
import sys

import pytest

from miir.provenance import commit_label, header_line, machine, run_record, write_result


def test_run_record_names_the_command_commit_date_and_machine(monkeypatch) -> None:
    monkeypatch.setattr(sys, "argv", ["bench/x.py", "--note", "two words"])
    rec = run_record(rows=[1, 2])
    assert rec["command"] == "python bench/x.py --note 'two words'"
    assert rec["commit"] is None or len(rec["commit"]) == 40
    assert rec["dirty"] in (True, False, None)
    assert rec["date"].endswith("+00:00")
    assert rec["machine"]["cores"] >= 1 and rec["machine"]["torch"]
    assert rec["rows"] == [1, 2]
    json.dumps(rec)  # a record is plain JSON


def test_fields_replace_the_header_where_a_script_knows_better(monkeypatch) -> None:
    def no_second_read() -> None:
        raise AssertionError("it was passed in; run_record must not read it again")

    monkeypatch.setattr("miir.provenance.machine", no_second_read)
    monkeypatch.setattr("miir.provenance.git_commit", no_second_read)  # nor the commit
    early = {"commit": "a" * 40, "dirty": False}  # the code measured, read before the runs
    rec = run_record(command="python bench/y.py", machine={"cpu": "x"}, **early)
    assert rec["command"] == "python bench/y.py"
    assert rec["machine"] == {"cpu": "x"} and rec["commit"] == "a" * 40
    assert list(rec)[:5] == ["command", "commit", "dirty", "date", "machine"]


@pytest.mark.parametrize(
    ("record", "label"),
    [
        ({"commit": "0123456789abcdef", "dirty": True}, "0123456789 (dirty)"),
        ({"git": {"commit": "0123456789abcdef", "dirty": False}}, "0123456789"),  # older form
        ({"commit": None, "dirty": None}, "no commit"),
    ],
)
def test_commit_label_reads_both_record_forms(record, label) -> None:
    assert commit_label(record) == label


def test_header_line_and_write_result(tmp_path, capsys) -> None:
    rec = {
        "command": "python bench/z.py",
        "commit": "f" * 40,
        "dirty": False,
        "date": "2026-12-05T00:00:00+00:00",
        "machine": {**machine(), "cpu": "Test CPU", "cores": 2, "gpu": None},
    }
    line = header_line(rec)
    assert line.startswith("`python bench/z.py` at ffffffffff, 2026-12-05T00:00:00+00:00, ")
    assert "Test CPU, 2 cores" in line and "GPU" not in line
    write_result(tmp_path / "out", "z", rec, ["# Z", "", line])
    assert json.loads((tmp_path / "out" / "z.json").read_text()) == rec
    assert (tmp_path / "out" / "z.md").read_text() == f"# Z\n\n{line}\n"
    assert capsys.readouterr().out == f"# Z\n\n{line}\n"
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["z.json", "z.md"]
