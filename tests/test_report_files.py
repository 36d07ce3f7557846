"""r1lab report reads what a run left, however it ended: a torn last metrics line is skipped, a bad line elsewhere
is a one-line error, a run of data stages only gets a report of what they wrote, eval.json becomes bars from 0
and a table, and the report imports no training or evaluation code."""
import json
import subprocess
import sys

import pytest
from matplotlib.figure import Figure

from r1lab import R1labError
from r1lab.cli import main
from r1lab.report import write_report

ROW = '{"step": %d, "reward": 0.5, "accuracy": 0.25}\n'
RESULT = {"task": "arithmetic", "samples": 4, "temperature": 0.6, "top_p": 0.95, "models": {
    name: {"pass@1": p, "pass@1_ci": [max(0, p - 0.1), p + 0.1], "cons@4": p, "cons@4_ci": [0.0, p + 0.05], "pass@4": p,
           "score": p, "format": 0.9, "length_mean": 40.0, "length_median": 38.0, "reflection": 0.1, "language_mixing": 0.0}
    for name, p in (("runs/r/grpo/checkpoint", 0.5), ("tiny-random", 0.0))}}


def test_a_torn_last_line_is_skipped_and_a_whole_one_without_newline_kept(tmp_path):
    (tmp_path / "grpo").mkdir()
    (tmp_path / "grpo" / "metrics.jsonl").write_text(ROW % 1 + ROW % 2 + '{"step": 3, "rew')      # killed mid-write
    assert "| grpo | 2 |" in write_report(str(tmp_path)).read_text()
    (tmp_path / "grpo" / "metrics.jsonl").write_text(ROW % 1 + (ROW % 2).strip())                  # written by hand
    assert "| grpo | 2 |" in write_report(str(tmp_path)).read_text()


def test_a_bad_line_before_the_last_is_a_one_line_error_naming_file_and_line(tmp_path, capsys):
    (tmp_path / "grpo").mkdir()
    (tmp_path / "grpo" / "metrics.jsonl").write_text(ROW % 1 + "{oops\n" + ROW % 3)
    with pytest.raises(R1labError, match=r"grpo/metrics\.jsonl, line 2: invalid JSON"):
        write_report(str(tmp_path))
    with pytest.raises(SystemExit) as exit:
        main(["report", str(tmp_path)])
    assert exit.value.code != 0
    error = capsys.readouterr().err.strip()
    assert error.startswith("r1lab: error: ") and "line 2" in error and "\n" not in error


def test_a_run_of_data_stages_only_reports_what_each_wrote(tmp_path, monkeypatch):
    saved = []
    monkeypatch.setattr(Figure, "savefig", lambda self, path, *a, **k: saved.append(path))
    stage = tmp_path / "cold" / "cold_start"
    stage.mkdir(parents=True)
    (stage / "data.jsonl").write_text('{"prompt": "1+1", "completion": "2"}\n' * 150)
    (stage / ".done").write_text("n: 150\n")
    text = write_report(str(tmp_path / "cold")).read_text()
    assert "- `cold_start`: data.jsonl, 150 rows" in text and not saved


def test_an_empty_or_missing_directory_is_an_error(tmp_path):
    with pytest.raises(R1labError, match="no stage output"):
        write_report(str(tmp_path))
    with pytest.raises(R1labError, match="not found"):
        write_report(str(tmp_path / "nope"))


def test_eval_bars_start_at_zero_and_the_table_names_each_model(tmp_path, monkeypatch):
    limits, real = {}, Figure.savefig

    def savefig(self, path, *args, **kwargs):
        limits[path.name] = (self.axes[0].get_ylim(), list(self.axes[0].get_yticks()))
        return real(self, path, *args, **kwargs)
    monkeypatch.setattr(Figure, "savefig", savefig)
    (tmp_path / "eval").mkdir()
    (tmp_path / "eval" / "eval.json").write_text(json.dumps(RESULT))
    text = write_report(str(tmp_path)).read_text()
    (bottom, top), ticks = limits["eval.png"]
    assert bottom == 0 and 60 <= top <= 105 and min(t for t in ticks if t <= top) >= 0
    assert "| `runs/r/grpo/checkpoint` | 50.0 [40.0, 60.0] | 50.0 [0.0, 55.0] | 50.0 |" in text
    assert "| `tiny-random` | 0.0 [0.0, 10.0] |" in text and "- `eval`: eval.json" in text


def test_report_imports_no_evaluation_code(tmp_path):
    (tmp_path / "eval").mkdir()
    (tmp_path / "eval" / "eval.json").write_text(json.dumps(RESULT))
    (tmp_path / "grpo").mkdir()
    (tmp_path / "grpo" / "metrics.jsonl").write_text(ROW % 1)
    code = ("import sys; from r1lab.report import write_report; write_report(sys.argv[1]); "
            "print(sorted(m for m in sys.modules if m in ('r1lab.evaluate', 'torch', 'transformers')))")
    result = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"
