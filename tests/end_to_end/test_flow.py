"""End-to-end through the real Prefect flow and the real command line, on small real data."""
import json
import os
import shutil
import subprocess
import sys
from html.parser import HTMLParser

import numpy as np
import pandas as pd
import pytest
import torch

from fastif_engine.cleaning.pipeline import CACHE_DIR
from fastif_engine.data.batching import RowFile
from flows.cli import main
from tests.end_to_end.runs import FAST, clean
from fastif_engine.config import CleanConfig
from fastif_engine.influence.gradients import STATIONARY_RATIO
from fastif_engine.influence.solvers import RIDGE_OF_TOP

pytestmark = pytest.mark.slow  # real flow runs: the end-to-end tier (pytest -m "not slow" skips it)

FLAG_COLUMNS = ["train_id", "label", "predicted", "harm_score", "self_influence", "n_errors_harmed", "rank",
                "flagged"]


@pytest.fixture(scope="module")
def tabular_run(tabular, tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "out"
    assert clean(tabular, out, "--retrain", "--seeds", "2") == 0
    return out


def test_clean_writes_the_contract(tabular_run, tabular):
    flags = pd.read_parquet(tabular_run / "flags.parquet")
    assert list(flags.columns[:8]) == FLAG_COLUMNS
    train = pd.read_parquet(tabular["train"])
    assert len(flags) == len(train) and list(flags["train_id"]) == list(train["id"])
    assert set(flags["label"]) <= {"benign", "malignant"}
    assert sorted(flags["rank"]) == list(range(1, len(flags) + 1))
    # the default score ranks; a flag needs a rank within the default 15% budget *and* net-harm evidence t ≥ 2
    budget = round(0.15 * len(train))
    expected = (flags["rank"] <= budget) & (flags["net_harm_t"] >= 2.0)
    assert (flags["flagged"] == expected).all() and 0 < flags["flagged"].sum() <= budget
    order = flags.sort_values("combined_score", ascending=False, kind="stable")["train_id"].tolist()
    assert order[:budget] == flags.sort_values("rank")["train_id"].tolist()[:budget]
    assert (flags.loc[flags["flagged"], "net_harm"] > 0).all()
    assert flags["self_influence"].notna().all() and (flags["self_influence"] >= 0).all()
    flipped = pd.read_parquet(tabular["train"])["noisy"].to_numpy()
    assert flipped[flags["flagged"].to_numpy()].mean() >= 0.7  # 10% of rows are flipped

    influence = pd.read_parquet(tabular_run / "influence.parquet")
    assert list(influence.columns) == ["test_id", "train_id", "influence", "rank"]
    metrics = json.loads((tabular_run / "metrics.json").read_text())
    assert influence["test_id"].nunique() == metrics["counts"]["errors"] > 0
    assert len(influence) == metrics["counts"]["errors"] * 100
    # harm_score is the per-row sum of the long table
    summed = influence.groupby("train_id")["influence"].sum()
    np.testing.assert_allclose(flags.set_index("train_id").loc[summed.index, "harm_score"], summed, rtol=1e-9)

    assert metrics["flag_by"] == "combined"
    f = metrics["flagging"]
    assert f["flagged"] == flags["flagged"].sum() and f["within_budget"] == budget
    assert f["below_evidence"] == budget - f["flagged"] == int(((flags["rank"] <= budget) & ~expected).sum())
    past = (flags["rank"] > budget) & (flags["net_harm_t"] >= 2.0)  # the budget, not the floor, stopped these
    assert f["past_budget"] == int(past.sum())
    assert sum(c["flagged"] for c in metrics["class_mix"]["classes"]) == f["flagged"]
    prior = f["class_prior"]  # the prior check: refitted exactly when validation's class mix is within noise
    assert prior["setting"] == "auto" and prior["refitted"] == (prior["z"] < 2.0)
    assert sorted(prior["classes"]) == ["benign", "malignant"] and sum(prior["observed"]) == metrics["counts"]["valid"]

    retrain = metrics["accuracy"]["retrain"]
    assert retrain["seeds"] == 2 and retrain["eval_split"] == "test" and retrain["fix"] == "remove"
    assert set(retrain["summary"]) == {"original", "cleaned", "random"}
    diffs = [c - o for c, o in zip(retrain["summary"]["cleaned"]["values"], retrain["summary"]["original"]["values"])]
    assert retrain["fixed_minus_original"]["mean"] == pytest.approx(np.mean(diffs))
    assert retrain["eval_rows"] == len(pd.read_parquet(tabular["test"]))
    assert retrain["verdict"].split(",")[0] in ("helped", "hurt", "no measurable effect")
    # the run's trained model is the original variant's fit for its seed: evaluated, not fitted again
    assert [(r["variant"], r["seed"]) for r in retrain["runs"] if r["reused_fit"]] == [("original", 0)]
    assert retrain["summary"]["original"]["values"][0] == metrics["accuracy"]["before"]["eval"]
    assert metrics["config"]["model"] == "tabular-mlp" and "faiss" in metrics["versions"]
    solver = metrics["solver"]  # the default ridge: RIDGE_OF_TOP × the (sampled) top eigenvalue
    assert solver["ridge"] == pytest.approx(solver["damping"] * solver["scale"])
    assert solver["ridge_rule"] == f"{RIDGE_OF_TOP:g} × top eigenvalue"
    assert solver["spectrum"]["ridge_over_largest"] == pytest.approx(RIDGE_OF_TOP, rel=1e-4)
    for name in ("report.md", "report.html"):
        assert (tabular_run / name).stat().st_size > 1000
    assert not list(tabular_run.glob("*.tmp")) and not list(tabular_run.glob(".*.tmp"))


def test_clean_from_python_gives_the_command_lines_flags_without_prefect(tabular_run, tabular, tmp_path):
    """A notebook's way in: DataFrames to ``fastif_engine.clean`` in a fresh interpreter give the flags
    and verdict that ``fastif clean`` gave with the same settings (tabular_run), and Prefect is never
    imported there, so no server starts."""
    paths = {name: str(path) for name, path in tabular.items()}
    script = f"""
import json, sys
import pandas as pd
import fastif_engine
frames = {{name: pd.read_parquet(path) for name, path in {paths!r}.items()}}
result = fastif_engine.clean(frames["train"], frames["valid"], frames["test"], model="tabular-mlp", out=sys.argv[1],
                             solver="lissa", depth=200, repeats=2, batch_size=8, k=100, retrain=True, seeds=2,
                             progress=False)
first_error = result.influence["test_id"].iloc[0]
print(json.dumps({{"flagged": result.flagged["train_id"].tolist(), "verdict": result.verdict,
                  "fixes": len(result.fixes), "report": str(result.write_report(sys.argv[1] + "/copy.html")),
                  "explain": first_error in result.explain(first_error), "prefect": "prefect" in sys.modules}}))
"""
    run = subprocess.run([sys.executable, "-c", script, str(tmp_path / "py")], capture_output=True, text=True,
                         timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    got = json.loads(run.stdout.strip().splitlines()[-1])
    assert got["prefect"] is False
    flags = pd.read_parquet(tabular_run / "flags.parquet")
    expected = flags[flags["flagged"]].sort_values("rank")["train_id"].tolist()
    assert got["flagged"] == expected and len(expected) > 0
    assert got["verdict"] == json.loads((tabular_run / "metrics.json").read_text())["accuracy"]["retrain"]["verdict"]
    assert got["fixes"] == len(pd.read_csv(tabular_run / "fixes.csv"))
    assert "<html" in open(got["report"]).read()[:200].lower() and got["explain"]


class _Report(HTMLParser):
    def __init__(self):
        super().__init__()
        self.headings, self.images, self.rows, self._tag, self.cells = [], [], 0, None, []

    def handle_starttag(self, tag, attrs):
        self._tag = tag
        if tag == "img":
            self.images.append(dict(attrs)["src"])
        if tag == "tr":
            self.rows += 1

    def handle_endtag(self, tag):
        self._tag = None

    def handle_data(self, data):
        if not data.strip():
            return
        if self._tag in ("h1", "h2"):
            self.headings.append(data.strip())
        if self._tag == "td":
            self.cells.append(data.strip())


def test_report_html_is_readable(tabular_run):
    report = _Report()
    report.feed((tabular_run / "report.html").read_text())
    assert report.headings[:3] == ["fastif cleaning report", "Accuracy", "Flags"]
    assert "Top flagged training rows (by combined)" in report.headings
    assert len(report.images) == 3 and all(src.startswith("data:image/png;base64,") for src in report.images)
    n_flagged = int(pd.read_parquet(tabular_run / "flags.parquet")["flagged"].sum())
    assert report.rows >= 1 + min(n_flagged, 20)  # header + the top rows (+ class mix and timing tables)
    assert any(c.startswith("mean_radius=") for c in report.cells)  # rows shown by their content
    assert "remove" in report.cells  # the suggested action (fixes.csv holds it too)
    text = (tabular_run / "report.html").read_text()
    assert "positive = harmful" in text and "random" in text
    metrics = json.loads((tabular_run / "metrics.json").read_text())
    verdict = metrics["accuracy"]["retrain"]["verdict"]
    assert f"<p><b>Verdict: removing the {n_flagged} flagged rows " in text and f"{verdict} (test accuracy " in text


@pytest.mark.skipif(not (shutil.which("chromium") and shutil.which("chromedriver")),
                    reason="needs Debian's chromium and chromium-driver (scripts/install.sh installs them as root)")
def test_report_in_headless_chromium_loads_every_image_without_console_errors(tabular_run, tmp_path):
    """report.html as a person opens it: a real browser decodes every image and logs no error."""
    webdriver = pytest.importorskip("selenium.webdriver")
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium")
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1200,900"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=options)
    try:
        driver.get((tabular_run / "report.html").as_uri())
        images = driver.execute_script("return Array.from(document.images).map(i => [i.complete, i.naturalWidth])")
        assert len(images) == 3 and all(done and width > 0 for done, width in images), images
        assert driver.find_element("tag name", "h1").text == "fastif cleaning report"
        assert driver.find_element("tag name", "p").text.startswith("Verdict: ")
        errors = [e for e in driver.get_log("browser") if e["level"] in ("SEVERE", "ERROR")]
        assert not errors, errors
        assert driver.save_screenshot(str(tmp_path / "report.png"))
    finally:
        driver.quit()


def test_explain_prints_harmful_and_helpful_rows(tabular_run, capsys):
    influence = pd.read_parquet(tabular_run / "influence.parquet")
    test_id = influence["test_id"].iloc[0]
    assert main(["explain", "--run", str(tabular_run), "--test-id", str(test_id), "--top", "3"]) == 0
    out = capsys.readouterr().out
    assert f"Validation example {test_id}" in out and "Most harmful" in out and "Most helpful" in out
    assert out.count("  train bc") == 6 and "mean_radius=" in out
    assert main(["explain", "--run", str(tabular_run), "--test-id", "nope"]) == 2
    assert "not one of the" in capsys.readouterr().err


def test_rerun_reuses_unchanged_stages(tabular, tmp_path):
    out = tmp_path / "out"
    assert clean(tabular, out) == 0
    cache = out / ".fastif-cache"
    before = {p.name: p.stat().st_mtime_ns for p in cache.iterdir()}
    flags_before = pd.read_parquet(out / "flags.parquet")
    # a copy with the same content under another name and a new mtime: still the same inputs
    moved = {k: tmp_path / f"copy_{k}.parquet" for k in tabular}
    for k in tabular:
        shutil.copy(tabular[k], moved[k])
    assert clean(moved, out) == 0
    # every stage writes its output by rename when it runs: unchanged mtimes mean nothing re-ran
    assert {p.name: p.stat().st_mtime_ns for p in cache.iterdir() if p.name in before} == before
    assert set(p.name for p in cache.iterdir()) == set(before)
    pd.testing.assert_frame_equal(pd.read_parquet(out / "flags.parquet"), flags_before)
    # one changed label: the data fingerprint changes, so the model is trained again
    train = pd.read_parquet(moved["train"])
    train.loc[0, "label"] = "benign" if train.loc[0, "label"] == "malignant" else "malignant"
    train.to_parquet(moved["train"], index=False)
    assert clean(moved, out) == 0
    assert len(list(cache.glob("model-*.pt"))) == 2


def test_errors_beyond_the_memory_budget_get_the_scores_of_one_pass(tabular, tmp_path):
    """Influence and net harm come from one pass over the training rows, which holds every s_test when
    the budget allows; under a budget of one vector, the pass holds the folds' alone and each error is
    scored over its own candidates afterwards: the same scores and flags."""
    one, grouped = tmp_path / "one", tmp_path / "grouped"
    assert clean(tabular, one) == 0
    assert clean(tabular, grouped, "--memory-budget", "1e-6") == 0
    for out in (one, grouped):
        timings = json.loads((out / "metrics.json").read_text())["timings"]
        assert "influence + net harm" in timings and not {"influence", "net harm"} & set(timings)
    assert json.loads((grouped / "metrics.json").read_text())["solver"]["s_test_rows_held"] == 1
    for name in ("influence.parquet", "flags.parquet"):
        pd.testing.assert_frame_equal(pd.read_parquet(one / name), pd.read_parquet(grouped / name),
                                      rtol=1e-4, atol=1e-5)  # float32 gradients, summed in other chunks


def test_a_new_fastif_version_or_model_recipe_is_not_served_from_an_old_cache(tabular, tmp_path, monkeypatch):
    import fastif_engine
    import fastif_engine.models
    from fastif_engine.cleaning.stage_cache import stage_keys
    from fastif_engine.config import CleanConfig

    cfg = CleanConfig(train=str(tabular["train"]), valid=str(tabular["valid"]), out=str(tmp_path), model="tabular-mlp")
    keys = stage_keys(cfg)
    recipe = fastif_engine.models.model_recipe
    monkeypatch.setattr(fastif_engine.models, "model_recipe", lambda name: {**recipe(name), "epochs": 61})
    changed = stage_keys(cfg)
    assert changed["data"] == keys["data"] and all(changed[k] != keys[k] for k in ("prep", "model", "stest"))
    monkeypatch.undo()
    # LiSSA's settings key the solving stages only when LiSSA solves (auto → exact: a new depth reuses them)
    deeper = cfg.model_copy(update={"depth": cfg.depth + 1, "repeats": 2})
    solving = ("stest", "scores", "net harm")
    assert all(stage_keys(deeper, "exact")[k] == stage_keys(cfg, "exact")[k] for k in solving)
    assert all(stage_keys(deeper, "lissa")[k] != stage_keys(cfg, "lissa")[k] for k in solving)
    assert stage_keys(cfg, "lissa") == keys

    out = tmp_path / "out"
    assert clean(tabular, out, "--self-influence", "off") == 0
    monkeypatch.setattr(fastif_engine, "__version__", fastif_engine.__version__ + ".post1")
    assert clean(tabular, out, "--self-influence", "off") == 0
    cache = out / ".fastif-cache"
    assert len(list(cache.glob("dataset-*.npz"))) == len(list(cache.glob("model-*.pt"))) == 2


def test_a_tampered_cache_file_is_refused_not_executed(tabular, tmp_path, capsys):
    """Cached data loads without pickle: a pickle planted in the cache is an error, never run."""
    import pickle

    from fastif_engine.cleaning import stages

    out, marker = tmp_path / "out", tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    assert clean(tabular, out, "--self-influence", "off") == 0
    cache = out / ".fastif-cache"
    for planted in [next(cache.glob("dataset-*.npz")), next(cache.glob("inputs-*.safetensors"))]:
        original = planted.read_bytes()
        planted.write_bytes(pickle.dumps(Payload()))
        stages.load_cached_dataset.cache_clear()  # a re-run is a new process: nothing loaded yet
        stages._inputs.cache_clear()
        capsys.readouterr()
        # retraining reads the cached inputs (every other stage is reused from the cache)
        assert clean(tabular, out, "--self-influence", "off", "--retrain", "--seeds", "1") == 2
        err = capsys.readouterr().err
        assert f"stage cache file {planted}: not a file fastif wrote" in err and "was not loaded" in err, err
        assert not marker.exists()
        planted.write_bytes(original)


@pytest.fixture(scope="module")
def digits_noisy(tmp_path_factory):
    """digits with 10% of training labels flipped: as 8×8 images, and as 64 pixel columns."""
    from fastif_engine.data.datasets import export, pixels_as_columns

    images = export("digits", tmp_path_factory.mktemp("digits"), noise=0.1, seed=0)
    return {"image": images, "tabular": pixels_as_columns(images)}


@pytest.mark.parametrize("model", ["tabular-logreg", "tabular-mlp", "image-cnn"])
def test_default_settings_give_the_exact_influence(digits_noisy, model, tmp_path):
    """Only --model and data given. For these small models the default solver (auto) predicts an
    exact-quality solver within its budget (the explicit Hessian, or CG to a 1e-4 residual) and
    its influence is the explicit Hessian's (Pearson ≥ 0.999)."""
    paths = digits_noisy["image" if model == "image-cnn" else "tabular"]
    data = ["--train", str(paths["train"]), "--valid", str(paths["valid"]), "--model", model]
    influence = {}
    for solver in ("default", "exact"):
        out = tmp_path / "out"  # one folder: the second run reuses the trained model from the stage cache
        assert main(["clean", *data, "--out", str(out)] + ([] if solver == "default" else ["--solver", solver])) == 0
        influence[solver] = pd.read_parquet(out / "influence.parquet")
        metrics = json.loads((out / "metrics.json").read_text())["solver"]
        if solver == "default":
            assert metrics["requested"] == "auto" and metrics["name"] in ("exact", "cg"), metrics["plan"]
            assert "exact-quality" in metrics["plan"]["reason"]
        else:
            assert metrics["name"] == "exact" and metrics["parameters"] <= 10_000
    merged = influence["default"].merge(influence["exact"], on=["test_id", "train_id"])
    assert len(merged) == len(influence["default"]) > 1000
    assert np.corrcoef(merged["influence_x"], merged["influence_y"])[0, 1] >= 0.999


def test_lowrank_solver_computes_its_eigenpairs_once(tabular, tmp_path):
    out = tmp_path / "out"
    assert clean(tabular, out, "--solver", "lowrank", "--self-influence", "on") == 0
    solver = json.loads((out / "metrics.json").read_text())["solver"]
    assert (solver["name"], solver["requested"], solver["rank"]) == ("lowrank", "lowrank", 32)
    saved = list((out / ".fastif-cache").glob("solver-*.npz"))
    assert len(saved) == 1 and np.load(saved[0])["vectors"].shape == (32, solver["parameters"])
    assert np.isfinite(pd.read_parquet(out / "influence.parquet")["influence"]).all()
    assert (pd.read_parquet(out / "flags.parquet")["self_influence"] >= 0).all()


def test_exact_and_lissa_agree(tabular, tmp_path):
    """Issue #2 through the CLI: the same run with each solver, influence Pearson ≥ 0.99."""
    common = ["--depth", "1000", "--repeats", "4", "--batch-size", "16", "--self-influence", "off"]
    assert clean(tabular, tmp_path / "exact", "--solver", "exact", *common, model="tabular-logreg") == 0
    assert clean(tabular, tmp_path / "lissa", "--solver", "lissa", *common, model="tabular-logreg") == 0
    e = pd.read_parquet(tmp_path / "exact" / "influence.parquet")
    lis = pd.read_parquet(tmp_path / "lissa" / "influence.parquet")
    merged = e.merge(lis, on=["test_id", "train_id"])
    assert len(merged) == len(e) > 0
    assert np.corrcoef(merged["influence_x"], merged["influence_y"])[0, 1] >= 0.99


def _flipped(tabular, flags):
    return pd.read_parquet(tabular["train"]).set_index("id").loc[flags["train_id"], "noisy"].to_numpy()


def test_flag_by_self_influence_of_a_large_model_finds_flipped_labels(tabular, tmp_path):
    """13k parameters: above the exact solver's limit, so the rank-32 Lanczos inverse is used;
    --flag-by self-influence turns self-influence on and, with no evidence floor, flags its top 10% (a quota)."""
    from sklearn.metrics import roc_auc_score

    assert clean(tabular, tmp_path, "--flag-by", "self-influence", "--model-option", "hidden=400",
                 "--flag-evidence", "0", "--flag-fraction", "0.1") == 0
    flags = pd.read_parquet(tmp_path / "flags.parquet")
    flipped = _flipped(tabular, flags)
    assert flags["self_influence"].notna().all() and (flags["self_influence"] >= 0).all()
    assert roc_auc_score(flipped, flags["self_influence"]) >= 0.8
    top = flags.sort_values("self_influence", ascending=False).head(34)
    assert flags["flagged"].sum() == 34 and set(top["train_id"]) == set(flags.loc[flags["flagged"], "train_id"])
    assert flipped[flags["flagged"]].mean() >= 0.5  # 10% of rows are flipped: random flags hold ~0.1
    assert json.loads((tmp_path / "metrics.json").read_text())["flag_by"] == "self-influence"
    assert "## Top flagged training rows (by self-influence)" in (tmp_path / "report.md").read_text()


def test_flag_by_loss_flags_the_rows_the_model_disagrees_with(tabular, tmp_path, capsys):
    assert clean(tabular, tmp_path, "--flag-by", "loss", "--self-influence", "off", "--flag-evidence", "0",
                 "--flag-fraction", "0.1", model="tabular-logreg") == 0
    flags = pd.read_parquet(tmp_path / "flags.parquet")
    found = int(_flipped(tabular, flags)[flags["flagged"]].sum())
    assert f"flipped labels among the flags: {found} of 34 (" in capsys.readouterr().out
    assert flags["self_influence"].isna().all() and (flags["train_loss"] > 0).all()
    # a row whose given label the model does not predict has a loss above log 2 (two classes)
    disagree = (flags["label"] != flags["predicted"]).to_numpy()
    assert (flags.loc[disagree, "train_loss"] > np.log(2)).all() and (flags.loc[~disagree, "train_loss"] < np.log(2)).all()
    assert flags.loc[flags["flagged"], "rank"].max() == flags["flagged"].sum() == 34
    assert _flipped(tabular, flags)[flags["flagged"]].mean() >= 0.5
    report = (tmp_path / "report.md").read_text()
    assert "own training loss" in report and "report_assets/flag_scores.png" in report


def test_fix_relabel_suggests_labels_and_retrains_with_them(tabular, tmp_path, capsys):
    """--fix relabel: flagged rows get the class a model trained without them predicts; the retrain
    relabels the flags (and as many random rows) instead of dropping them."""
    assert clean(tabular, tmp_path, "--fix", "relabel", "--retrain", "--seeds", "2", model="tabular-logreg") == 0
    flags = pd.read_parquet(tmp_path / "flags.parquet")
    flagged = flags["flagged"].to_numpy()
    assert flagged.sum() > 0 and flags.loc[~flagged, "suggested_label"].isna().all()
    truth = pd.read_parquet(tabular["train"]).set_index("id").loc[flags["train_id"], "true_label"].to_numpy()
    # two classes: a flipped row relabelled to the out-of-sample prediction gets its true label back
    assert (flags.loc[flagged, "suggested_label"].to_numpy() == truth[flagged]).mean() >= 0.8
    retrain = json.loads((tmp_path / "metrics.json").read_text())["accuracy"]["retrain"]
    assert retrain["fix"] == "relabel"
    changed = int((flags.loc[flagged, "suggested_label"] != flags.loc[flagged, "label"]).sum())
    for run in retrain["runs"]:
        assert run["rows"] == len(flags)  # nothing removed
        assert run["relabelled"] == {"original": 0, "cleaned": changed}.get(run["variant"], run["relabelled"])
    out = capsys.readouterr().out
    assert "fixed (relabel)" in out and f"Verdict: relabelling the {int(flagged.sum())} flagged rows " in out
    first = flags[flagged].sort_values("rank").iloc[0]
    assert f"| relabel to {first['suggested_label']} |" in (tmp_path / "report.md").read_text()


def test_console_shows_stages_and_the_summary_and_verbose_adds_prefect_lines(tabular, tmp_path):
    """Outside the test harness, as a user runs it: stage lines and the summary, no per-task Prefect
    lines unless --verbose (they always reach the Prefect API)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env["PREFECT_HOME"] = str(tmp_path / "prefect-home")

    def fastif(*options):
        cmd = [sys.executable, "-m", "flows.cli", *options, "clean", "--train", str(tabular["train"]), "--valid",
               str(tabular["valid"]), "--out", str(tmp_path / "out"), "--model", "tabular-logreg", "--solver", "exact"]
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
        return proc

    quiet = fastif()
    for stage in ("train model", "s_test", "influence + net harm", "rank + flag", "report"):
        assert f"  {stage} " in quiet.stderr, quiet.stderr
    assert "Task run '" not in quiet.stderr + quiet.stdout and "Flow run '" not in quiet.stderr + quiet.stdout
    assert "flagged by combined" in quiet.stdout and "report: " in quiet.stdout
    verbose = fastif("--verbose")
    assert "Task run '" in verbose.stderr + verbose.stdout and "flagged by combined" in verbose.stdout


def test_history_names_new_and_resolved_flags_across_two_runs(tabular, tmp_path, capsys):
    """A scheduled run on corrected data: one flagged, flipped row gets its true label back between
    the runs; the second run's report, summary and history table say what is new and what is gone."""
    from fastif_engine.cleaning.history import load

    out, history_path = tmp_path / "out", tmp_path / "history.parquet"
    assert clean(tabular, out, "--history", str(history_path), model="tabular-logreg") == 0
    first = pd.read_parquet(out / "flags.parquet")
    assert "first run recorded" in (out / "report.md").read_text()
    train = pd.read_parquet(tabular["train"])
    fixed = first[first["flagged"] & first["noisy"]].sort_values("rank")["train_id"].iloc[0]
    train.loc[train["id"] == fixed, "label"] = train.loc[train["id"] == fixed, "true_label"]
    train.to_parquet(tmp_path / "train.parquet", index=False)
    capsys.readouterr()
    assert clean({**tabular, "train": tmp_path / "train.parquet"}, out, "--history", str(history_path),
                 model="tabular-logreg") == 0
    second = pd.read_parquet(out / "flags.parquet")
    before, after = set(first.loc[first["flagged"], "train_id"]), set(second.loc[second["flagged"], "train_id"])
    assert fixed in before - after  # the corrected row is no longer flagged
    table = load(history_path)
    assert len(table) == 2
    assert json.loads(table["flagged_ids"].iloc[1]) == second.loc[second["flagged"], "train_id"].tolist()
    assert table["data"].iloc[0] != table["data"].iloc[1]  # the data fingerprint changed
    changes = json.loads((out / "metrics.json").read_text())["history"]["changes"]
    assert set(changes["new"]) == after - before and set(changes["gone"]) == before - after
    assert set(changes["still"]) == before & after
    report = (out / "report.md").read_text()
    gone_line = next(line for line in report.splitlines() if line.startswith("- gone: "))
    assert fixed in gone_line.removeprefix("- gone: ").split(", ")
    assert f"**{len(before - after)} gone**" in report
    assert f"{len(after - before)} new flags" in capsys.readouterr().out


def test_apply_edited_fixes_writes_exactly_those_changes(tabular_run, tabular, tmp_path, capsys):
    """fixes.csv round trip: a person edits two rows (one kept, one relabelled instead of removed);
    `fastif apply` writes a corrected copy with exactly what the file says, which loads cleanly."""
    from fastif_engine.data.tables import load_dataset

    fixes = pd.read_csv(tabular_run / "fixes.csv", dtype=str).fillna("")
    flags = pd.read_parquet(tabular_run / "flags.parquet")
    assert fixes["train_id"].tolist() == flags[flags["flagged"]].sort_values("rank")["train_id"].tolist()
    assert set(fixes["action"]) == {"remove"} and len(fixes) >= 3
    keep_id, relabel_id = fixes["train_id"].iloc[0], fixes["train_id"].iloc[1]
    other = {"benign": "malignant", "malignant": "benign"}[fixes["given_label"].iloc[1]]
    fixes.loc[0, "action"] = "keep"
    fixes.loc[1, ["action", "new_label"]] = ["relabel", other]
    fixes.to_csv(tmp_path / "fixes.csv", index=False)
    corrected = tmp_path / "corrected.parquet"
    assert main(["apply", "--fixes", str(tmp_path / "fixes.csv"), "--train", str(tabular["train"]),
                 "--out", str(corrected)]) == 0
    removed = set(fixes["train_id"].iloc[2:])
    assert f"{len(removed)} rows removed, 1 relabelled, 1 kept" in capsys.readouterr().out
    train = pd.read_parquet(tabular["train"])
    fixed = pd.read_parquet(corrected)
    expected = train[~train["id"].isin(removed)].reset_index(drop=True)
    expected.loc[expected["id"] == relabel_id, "label"] = other
    pd.testing.assert_frame_equal(fixed, expected)
    assert keep_id in set(fixed["id"])
    ds = load_dataset({"train": str(corrected), "valid": str(tabular["valid"])})
    assert len(ds.splits["train"]) == len(train) - len(removed)
    # bad edits: one line naming the file, column and rows; nothing written
    fixes.loc[2, "action"] = "burn"
    fixes.to_csv(tmp_path / "bad.csv", index=False)
    assert main(["apply", "--fixes", str(tmp_path / "bad.csv"), "--train", str(tabular["train"]),
                 "--out", str(tmp_path / "nope.parquet")]) == 2
    err = capsys.readouterr().err
    assert "bad.csv" in err and "'action'" in err and "rows 2 (0-based)" in err
    assert not (tmp_path / "nope.parquet").exists()
    assert main(["apply", "--fixes", str(tmp_path / "fixes.csv"), "--train", str(tabular["train"]),
                 "--out", str(tabular["train"])]) == 2  # never in place


def test_tiny_scale_fails_with_a_clear_message(tabular, tmp_path, capsys):
    assert clean(tabular, tmp_path / "out", "--scale", "1e-6", "--damping", "0.05") == 2  # settings at fault
    err = capsys.readouterr().err
    assert "diverged" in err and "scale" in err and "Traceback" not in err
    assert not (tmp_path / "out" / "flags.parquet").exists()


def test_scale_sweep_recovers_and_logs_every_try(tabular, tmp_path):
    assert clean(tabular, tmp_path / "out", "--scale", "1e-3", "--damping", "0.05", "--scale-sweep") == 0
    solver = json.loads((tmp_path / "out" / "metrics.json").read_text())["solver"]
    tried = solver["scale_sweep"]
    assert tried[0] == {"scale": 1e-3, "diverged": True} and tried[-1]["diverged"] is False
    assert solver["scale"] == pytest.approx(tried[-1]["scale"]) and solver["scale"] > 1e-3


def test_missing_label_column_writes_nothing(tabular, tmp_path, capsys):
    train = pd.read_parquet(tabular["train"]).drop(columns="label")
    train.to_parquet(tmp_path / "train.parquet", index=False)
    paths = {**tabular, "train": tmp_path / "train.parquet"}
    assert clean(paths, tmp_path / "out") == 2
    err = capsys.readouterr().err
    assert "missing column 'label'" in err and str(tmp_path / "train.parquet") in err
    assert not (tmp_path / "out").exists()


def test_yaml_config_and_unknown_keys(tabular, tmp_path, capsys):
    cfg = tmp_path / "clean.yaml"
    cfg.write_text(f"train: {tabular['train']}\nvalid: {tabular['valid']}\nmodel: tabular-logreg\nk: 50\n"
                   f"depth: 100\nbatch_size: 8\nflag_top: 7\nflag_evidence: 0\nout: {tmp_path / 'out'}\n")
    assert main(["clean", "--config", str(cfg)]) == 0
    flags = pd.read_parquet(tmp_path / "out" / "flags.parquet")
    assert flags["flagged"].sum() == 7
    cfg.write_text(cfg.read_text() + "kk: 3\nsolver: newton\n")
    assert main(["clean", "--config", str(cfg)]) == 2
    err = capsys.readouterr().err
    assert "'kk': unknown key" in err and "'solver'" in err


def test_image_cnn_on_digits(tmp_path, capsys):
    assert main(["datasets", "export", "digits", "--out", str(tmp_path / "data"), "--noise", "0.1"]) == 0
    data = tmp_path / "data"
    out = tmp_path / "out"
    assert main(["clean", "--train", str(data / "train.parquet"), "--valid", str(data / "valid.parquet"),
                 "--out", str(out), "--model", "image-cnn", "--model-option", "wings=3", *FAST]) == 2
    assert "unknown option 'wings'" in capsys.readouterr().err and not out.exists()
    assert main(["clean", "--train", str(data / "train.parquet"), "--valid", str(data / "valid.parquet"),
                 "--out", str(out), "--model", "image-cnn", "--model-option", "epochs=4", *FAST]) == 0
    flags = pd.read_parquet(out / "flags.parquet")
    assert len(flags) == 1079 and flags["flagged"].sum() > 0
    assert "data:image/png;base64," in (out / "report.html").read_text()
    # integer ids: explain shows each training row's labels and its image as ASCII art
    test_id = pd.read_parquet(out / "influence.parquet")["test_id"].iloc[0]
    capsys.readouterr()
    assert main(["explain", "--run", str(out), "--test-id", str(test_id), "--top", "2"]) == 0
    shown = capsys.readouterr().out
    assert shown.count(", predicted '") == 4 and ".0  " not in shown and "@" in shown


def test_text_minilm_on_rotten_tomatoes(tmp_path, monkeypatch, capsys):
    """The text model end to end; its hidden states are prepared 128 rows at a time into a file
    of their own and read back by rows, and equal what one in-memory ``prepare`` gives. The
    console shows fastif's stage lines, not transformers' "Loading weights" bar."""
    from fastif_engine.cleaning import stages

    monkeypatch.setattr(stages, "PREPARE_ROWS", 128)
    data = tmp_path / "data"
    assert main(["datasets", "export", "rotten-tomatoes", "--out", str(data), "--noise", "0.1",
                 "--max-train", "300"]) == 0
    out = tmp_path / "out"
    assert main(["clean", "--train", str(data / "train.parquet"), "--valid", str(data / "valid.parquet"),
                 "--out", str(out), "--model", "text-minilm", "--model-option", "top_layers=1",
                 "--depth", "20", "--batch-size", "2", "--k", "50", "--retrain", "--seeds", "1"]) == 0
    console = capsys.readouterr().err
    assert "train model" in console and "Loading weights" not in console
    flags = pd.read_parquet(out / "flags.parquet")
    assert len(flags) == 300 and flags["flagged"].sum() > 0
    metrics = json.loads((out / "metrics.json").read_text())
    retrain = metrics["accuracy"]["retrain"]  # fits on the kept rows, read from disk
    assert set(retrain["summary"]) == {"original", "cleaned", "random"}
    assert all(0.5 < r["accuracy"] <= 1 for r in retrain["runs"])
    assert metrics["solver"]["s_test_rows_held"] == 70  # one thread worker, the default budget: errors in groups
    report = (out / "report.md").read_text()
    top = flags[flags["flagged"]].sort_values("rank").iloc[0]
    assert f"| {top['rank']} | {top['train_id']} |" in report  # shown with its text snippet

    inputs = next((out / CACHE_DIR).glob("inputs-*.safetensors"))
    assert (inputs.parent / f"{inputs.stem}.train.hidden.npy").exists()
    train = stages._inputs(str(inputs))["train"]
    assert isinstance(train["hidden"], RowFile) and train["hidden"].shape == (300, 64, 384)
    texts = pd.read_parquet(data / "train.parquet")["text"].to_numpy()
    rows = np.array([0, 127, 128, 299])  # both sides of a part's edge
    whole = stages.load_adapter(CleanConfig(train="t", valid="v", out="o", model="text-minilm"),
                               str(next((out / CACHE_DIR).glob("dataset-*.npz"))), None).prepare(texts[rows])
    assert torch.equal(train["mask"][rows], whole["mask"])
    real = whole["mask"].unsqueeze(-1)  # what pad positions hold depends on the batch; nothing reads them
    torch.testing.assert_close(train["hidden"][rows] * real, whole["hidden"] * real, rtol=1e-5, atol=1e-5)


@pytest.fixture(scope="module")
def hf_checkpoint(tmp_path_factory):
    """A Hugging Face sequence classifier as a user would have one: the bundled MiniLM loaded as
    BertForSequenceClassification (a new 2-class head) and written with save_pretrained; offline."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from fastif_engine.models.text import encoder_path

    folder = tmp_path_factory.mktemp("hf") / "checkpoint"
    model = AutoModelForSequenceClassification.from_pretrained(encoder_path(), num_labels=2,
                                                               id2label={0: "fresh", 1: "rotten"},
                                                               label2id={"fresh": 0, "rotten": 1})
    model.save_pretrained(folder)
    AutoTokenizer.from_pretrained(encoder_path()).save_pretrained(folder)
    return folder


def test_a_hugging_face_checkpoint_as_given_from_the_cli_and_from_python(hf_checkpoint, tmp_path, capsys):
    """``--model hf:DIR --weights given``: the checkpoint explained as it is, its fit check in metrics.json
    and the report (an untrained head reads 0.33 × a row's gradient); the same flags through fastif_engine.clean."""
    import fastif_engine

    data = tmp_path / "data"
    assert main(["datasets", "export", "rotten-tomatoes", "--out", str(data), "--noise", "0.1",
                 "--max-train", "160"]) == 0
    settings = ["--weights", "given", "--solver", "ekfac", "--k", "40", "--self-influence", "off"]
    out = tmp_path / "cli"
    assert main(["clean", "--train", str(data / "train.parquet"), "--valid", str(data / "valid.parquet"),
                 "--out", str(out), "--model", f"hf:{hf_checkpoint}", *settings]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    from transformers import AutoModelForSequenceClassification

    given = AutoModelForSequenceClassification.from_pretrained(hf_checkpoint)
    top = [given.bert.encoder.layer[-1], given.bert.pooler, given.classifier]  # layers=1 and the checkpoint's head
    assert metrics["solver"]["parameters"] == sum(p.numel() for m in top for p in m.parameters())
    fit = metrics["model_fit"]
    assert fit["ratio"] > 0.1 and fit["stationary"] == (fit["ratio"] <= STATIONARY_RATIO)
    report = (out / "report.md").read_text()
    assert f"{fit['gradient_norm']:.3g}" in report and f"{fit['ratio']:.3g} × a single row's" in report

    result = fastif_engine.clean(data / "train.parquet", data / "valid.parquet", model=f"hf:{hf_checkpoint}",
                                 out=tmp_path / "py", weights="given", solver="ekfac", k=40, self_influence="off",
                                 progress=False)
    cli_flags = pd.read_parquet(out / "flags.parquet")
    assert result.flags["flagged"].tolist() == cli_flags["flagged"].tolist()
    np.testing.assert_allclose(result.flags["net_harm"], cli_flags["net_harm"], rtol=1e-4, atol=1e-9)


def test_an_unsupported_checkpoint_architecture_is_one_line_and_exit_2(tmp_path, capsys):
    """A checkpoint that needs its own code (auto_map): refused before any work, saying what would work."""
    folder = tmp_path / "mine"
    folder.mkdir()
    config = {"model_type": "bert", "architectures": ["MyClassifier"],
              "auto_map": {"AutoModelForSequenceClassification": "modeling_mine.MyClassifier"}}
    (folder / "config.json").write_text(json.dumps(config))
    data = tmp_path / "data"
    assert main(["datasets", "export", "rotten-tomatoes", "--out", str(data), "--max-train", "40"]) == 0
    capsys.readouterr()
    assert main(["clean", "--train", str(data / "train.parquet"), "--valid", str(data / "valid.parquet"),
                 "--out", str(tmp_path / "out"), "--model", f"hf:{folder}"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "remote code" in err[0] and "TorchClassifier" in err[0]
    assert not (tmp_path / "out").exists()
