"""report_to: metrics and settings through accelerate's trackers, none by default, a missing one refused
before anything is written. TensorBoard runs in-process (it is in the dev extra); wandb (offline), Trackio
(local database) and MLflow (local file store) run in a subprocess with their files and caches under the
test's folder, and are skipped where their package is not installed (they are the `trackers` extra)."""
import importlib.util
import json
import os
import subprocess
import sys

import pytest

from r1lab import R1labError
from r1lab.cold_start import write_cold_start
from r1lab.config import NOT_SETTINGS, CompeteConfig, GRPOConfig, SFTConfig, load_config


def sft_config(tmp_path, **overrides):
    if not (tmp_path / "cold.jsonl").exists():
        write_cold_start("arithmetic", 16, str(tmp_path / "cold.jsonl"))
    values = {"model": "tiny-random", "data": str(tmp_path / "cold.jsonl"), "batch_size": 4, "micro_batch_size": 4,
              "out": str(tmp_path / "sft"), **{k: str(v) for k, v in overrides.items()}}
    return load_config(SFTConfig, None, values)


@pytest.mark.parametrize("cls", [SFTConfig, GRPOConfig, CompeteConfig])
def test_every_training_stage_has_report_to_none_by_default_and_it_is_not_a_setting(cls):
    assert cls().report_to == "none" and "report_to" in NOT_SETTINGS
    assert load_config(cls, None, {"report_to": "tensorboard,wandb"}).report_to == "tensorboard,wandb"


@pytest.mark.parametrize("value", ["tensorbord", "", "none,wandb", "wandb,,comet"])
def test_a_bad_report_to_is_one_error_naming_the_option_and_the_choices(value):
    with pytest.raises(R1labError, match=r"^SFTConfig.report_to must be none, or one or more of tensorboard, wandb, "
                                         r"trackio, mlflow separated by commas, got"):
        load_config(SFTConfig, None, {"report_to": value})


def test_a_missing_tracker_stops_the_stage_before_it_writes_with_the_pip_command(tmp_path, monkeypatch):
    import accelerate.tracking
    from r1lab.algorithms.sft import train_sft
    monkeypatch.setattr(accelerate.tracking, "get_available_trackers", lambda: [])     # as on a machine without them
    with pytest.raises(R1labError, match=r"report_to tensorboard,mlflow: tensorboard, mlflow not installed; "
                                         r"run: pip install tensorboard mlflow .*r1lab\[trackers\]"):
        train_sft(sft_config(tmp_path, report_to="tensorboard,mlflow"))
    assert not (tmp_path / "sft").exists()


def test_without_report_to_no_tensorboard_is_written_even_where_it_is_installed(tmp_path):
    from r1lab.algorithms.sft import train_sft
    train_sft(sft_config(tmp_path))
    assert (tmp_path / "sft" / "metrics.jsonl").is_file() and not (tmp_path / "sft" / "tensorboard").exists()


def test_report_to_tensorboard_writes_every_metric_and_the_settings(tmp_path):
    pytest.importorskip("tensorboard", reason="tensorboard is not installed (pip install 'r1lab[dev]')")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from r1lab.algorithms.sft import train_sft
    train_sft(sft_config(tmp_path, report_to="tensorboard", learning_rate=0.001))
    rows = [json.loads(line) for line in (tmp_path / "sft" / "metrics.jsonl").read_text().splitlines()]
    events = EventAccumulator(str(tmp_path / "sft" / "tensorboard")).Reload()
    logged = [(e.step, e.value) for e in events.Scalars("loss")]
    assert logged == [(r["step"], pytest.approx(r["loss"], rel=1e-6)) for r in rows] and len(rows) == 4
    assert "grad_norm" in events.Tags()["scalars"] and "step" not in events.Tags()["scalars"]
    hparams = next((tmp_path / "sft" / "tensorboard").glob("*/hparams.yml")).read_text()
    assert "learning_rate: 0.001" in hparams and "report_to: tensorboard" in hparams


TRACKER_RUN = """
import sys
from pathlib import Path
from r1lab.config import SFTConfig
from r1lab.training import JsonlLog, start_trackers
out = Path(sys.argv[1]); out.mkdir()
log = JsonlLog(out / "metrics.jsonl", 0, start_trackers(out, SFTConfig(report_to=sys.argv[2], learning_rate=0.002,
                                                                         out=str(out))))
log.write({"step": 1, "loss": 0.5, "note": "text is not a metric"})
log.write({"step": 2, "loss": 0.25})
log.close()
"""


def run_tracker(tmp_path, name: str):
    """One tracker's run in a fresh process, its files, caches and settings under tmp_path: the output folder."""
    if importlib.util.find_spec(name) is None:
        pytest.skip(f"{name} is not installed (pip install 'r1lab[trackers]'); the tracker extra is optional")
    env = {**os.environ, "HOME": str(tmp_path / "home"), "WANDB_MODE": "offline", "WANDB_SILENT": "true",
           "TRACKIO_DIR": str(tmp_path / "trackio"), "MLFLOW_TRACKING_URI": f"file:{tmp_path / 'mlruns'}",
           "MLFLOW_ALLOW_FILE_STORE": "true", "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([sys.executable, "-c", TRACKER_RUN, str(tmp_path / "run"), name], env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return tmp_path / "run"


def test_report_to_wandb_offline_keeps_metrics_and_settings_in_the_run_folder(tmp_path):
    out = run_tracker(tmp_path, "wandb")
    runs = list((out / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(runs) == 1
    data = runs[0].read_bytes()
    assert b"loss" in data and b"learning_rate" in data and b"0.002" in data


def test_report_to_trackio_logs_to_its_local_database(tmp_path):
    import sqlite3
    run_tracker(tmp_path, "trackio")
    db = sqlite3.connect(tmp_path / "trackio" / "r1lab.db")
    metrics = [(step, json.loads(values)) for step, values in db.execute("select step, metrics from metrics order by step")]
    assert [(step, values["loss"]) for step, values in metrics] == [(1, 0.5), (2, 0.25)]
    assert all("note" not in values for _, values in metrics)
    (config,) = [json.loads(row[0]) for row in db.execute("select config from configs")]
    assert config["learning_rate"] == 0.002 and config["report_to"] == "trackio"


def test_report_to_mlflow_logs_to_a_local_file_store(tmp_path):
    run_tracker(tmp_path, "mlflow")
    (run,) = [p for p in (tmp_path / "mlruns").glob("*/*") if (p / "metrics").is_dir()]
    assert [line.split()[1:] for line in (run / "metrics" / "loss").read_text().splitlines()] == [["0.5", "1"], ["0.25", "2"]]
    assert (run / "params" / "learning_rate").read_text() == "0.002"


def test_a_recipe_naming_a_missing_tracker_fails_when_it_loads_naming_the_stage(tmp_path, monkeypatch):
    import accelerate.tracking
    from r1lab.pipeline import load_recipe
    monkeypatch.setattr(accelerate.tracking, "get_available_trackers", lambda: [])
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(f"name: t\nruns_dir: {tmp_path}\nmodel: tiny-random\nstages:\n  - {{name: cold, kind: cold_start, n: 4}}\n"
                      "  - {name: sft, kind: sft}\n  - {name: grpo, kind: grpo, report_to: wandb}\n")
    with pytest.raises(R1labError, match=r"recipe.yaml, stage 'grpo': report_to wandb: wandb not installed"):
        load_recipe(recipe)
    assert not (tmp_path / "t").exists()                   # nothing ran: the first stages would have
