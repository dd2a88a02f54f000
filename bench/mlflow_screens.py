"""The MLflow UI screenshots of README: a fake temperature study (tests/fake_runs.py) with the experiment
tags a study sets, served by `mlflow server`, shot by headless Chromium: the experiment's runs view and
the comparison of 9 trial runs (parallel coordinates over the searched parameter).

    .venv/bin/python bench/mlflow_screens.py      # writes docs/img/mlflow_runs.png, mlflow_compare.png
"""
import json, os, socket, subprocess, sys, tempfile, time, urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests")); sys.path.insert(0, str(ROOT))
from fake_runs import concave_score, log_fake_study, new_store
from mlflow.tracking import MlflowClient
from distill_lab.record_schema import StudyRecord

root = Path(tempfile.mkdtemp(prefix="mlflow-screens-"))
uri = new_store(root / "store")
log_fake_study(uri, "temperature_convexity", score=concave_score(t_star=5.0), rng_seed=3)
client = MlflowClient(uri)
exp = client.get_experiment_by_name("temperature_convexity")
spec = {"name": "temperature_convexity", "description": "Is there one interior optimum of dev F1 over T?",
        "teacher": {"model": "minilm-l6"}, "student": {"from_teacher": {"num_layers": 3}}, "data": {"source": "conll"},
        "study": {"search_space": {"distill.temperature": {}}}}
for k, v in StudyRecord.experiment_tags(spec).items():
    client.set_experiment_tag(exp.experiment_id, k, v)
runs = [r.info.run_id for r in client.search_runs([exp.experiment_id], "tags.role = 'trial'")]
with socket.socket() as s:
    s.bind(("127.0.0.1", 0)); port = s.getsockname()[1]
server = subprocess.Popen([sys.executable, "-m", "mlflow", "server", "--backend-store-uri", uri, "--host", "127.0.0.1",
                           "--port", str(port), "--workers", "1"], env={**os.environ,
                           "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
try:
    for _ in range(120):
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1).close(); break
        except Exception: time.sleep(1)
    base = f"http://127.0.0.1:{port}/"
    pages = {"mlflow_runs.png": f"{base}#/experiments/{exp.experiment_id}/runs",
             "mlflow_compare.png": f"{base}#/compare-runs?runs={json.dumps(runs[:9])}&experiments={json.dumps([exp.experiment_id])}"}
    for name, url in pages.items():
        out = ROOT / "docs" / "img" / name
        subprocess.run(["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                        f"--user-data-dir={root}/profile-{name}", "--window-size=1400,1000",
                        "--virtual-time-budget=20000", f"--screenshot={out}", url], timeout=180,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        print(name, out.stat().st_size if out.exists() else "missing")
finally:
    server.terminate(); server.wait()
