from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest
import yaml

from helpers.harness import notebook as nb

NB00 = "00_inside_a_language_model"


def test_every_notebook_has_three_profiles_and_default_equals_parameters_cell():
    assert NB00 in nb.notebook_names()
    for name in nb.notebook_names():
        declared = nb.notebook_parameters(name)
        assert "profile" in declared and "output_dir" in declared and "seed" in declared
        for prof in nb.PROFILES:
            params = nb.load_profile(name, prof)
            assert params["profile"] == prof
        default = yaml.safe_load((nb.PARAMS_DIR / name / "default.yaml").read_text())
        assert {k: declared[k] for k in default} == default, "default.yaml must equal the parameters cell"


def test_extra_profiles_are_listed_after_the_required_ones(tmp_path, monkeypatch):
    assert nb.notebook_profiles("04_scoring_skills") == ["smoke", "default", "paper", "evidence"]
    assert nb.notebook_profiles(NB00) == list(nb.PROFILES)
    assert nb.load_profile("04_scoring_skills", "evidence")["items"] == list(range(1, 11))
    params = tmp_path / "params"
    (params / NB00).mkdir(parents=True)
    for prof in ("smoke", "default"):
        (params / NB00 / f"{prof}.yaml").write_text("seed: 0\n")
    monkeypatch.setattr(nb, "PARAMS_DIR", params)
    with pytest.raises(FileNotFoundError, match=r"profiles \['paper'\] are missing"):
        nb.notebook_profiles(NB00)


def test_parameters_cell_is_read_as_literals():
    p = nb.notebook_parameters(NB00)
    assert p["model_name"] == "smollm2-135m-instruct" and p["n_per_set"] == 60 and p["pca_depth"] == 0.5
    assert isinstance(p["lens_prompts"], list) and p["output_dir"] == ""


def test_unknown_and_ill_typed_parameters_fail_with_a_clear_message():
    with pytest.raises(nb.ParameterError, match=r"unknown parameter 'n_per_sets' \(did you mean 'n_per_set'\?\)"):
        nb.validate_params(NB00, {"n_per_sets": 3})
    with pytest.raises(nb.ParameterError, match="'n_per_set' must be int"):
        nb.validate_params(NB00, {"n_per_set": "ten"})
    with pytest.raises(nb.ParameterError, match="'n_per_set' must be int"):
        nb.validate_params(NB00, {"n_per_set": 2.5})
    with pytest.raises(nb.ParameterError, match="'lens_prompts' must be list"):
        nb.validate_params(NB00, {"lens_prompts": "just one"})
    assert nb.validate_params(NB00, {"pca_depth": 1}) == {"pca_depth": 1.0}  # int widens to float


def test_bad_override_fails_before_any_kernel_starts(tmp_path):
    out = tmp_path / "never"
    with pytest.raises(nb.ParameterError):
        nb.run_notebook(NB00, "smoke", overrides={"batch_sise": 4}, output_dir=out)
    assert not out.exists()
    with pytest.raises(FileNotFoundError, match="No profile 'huge'"):
        nb.run_notebook(NB00, "huge", output_dir=out)
    with pytest.raises(FileNotFoundError, match="Unknown notebook"):
        nb.run_notebook("99_nothing", "smoke", output_dir=out)


def test_cli_reports_errors_and_exit_code():
    r = subprocess.run([sys.executable, "-m", "helpers", "notebook", "run", NB00, "--profile", "smoke",
                        "--set", "n_per_set=abc"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "'n_per_set' must be int" in r.stderr
    r = subprocess.run([sys.executable, "-m", "helpers", "notebook", "validate"], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0 and NB00 in r.stdout


def test_run_save_and_results_table_round_trip(tmp_path, monkeypatch):
    ns = {**nb.notebook_parameters(NB00), "output_dir": str(tmp_path / NB00), "profile": "smoke"}
    run = nb.start(NB00, ns)
    from helpers.core import memo

    assert memo.enabled()  # every notebook run caches its expensive measurements (helpers.core.memo)
    with run.timer("step"):
        pass
    import numpy as np

    p = run.save({"acc": np.float64(0.8766), "nested": {"k": 3}}, provenance={"model": {"name": "m"}})
    res = nb.load_results(p.parent)
    assert res["metrics"] == {"acc": 0.8766, "nested": {"k": 3}}
    assert res["profile"] == "smoke" and "step" in res["timings"] and res["environment"]["torch"]
    monkeypatch.setattr(nb, "OUTPUTS_DIR", tmp_path)
    table = nb.results_table([NB00])
    assert f"| {NB00} | smoke | `acc` | 0.877 |" in table and "`nested.k` | 3" in table
    with pytest.raises(FileNotFoundError, match="make run-"):
        nb.load_results("01_missing")


def test_savefig_writes_the_png_and_returns_nothing_to_display(tmp_path):
    """A cell ending in run.savefig(...) must not show a machine-specific path in the committed notebook."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ns = {**nb.notebook_parameters(NB00), "output_dir": str(tmp_path / NB00), "profile": "smoke"}
    run = nb.start(NB00, ns)
    fig, ax = plt.subplots()
    ax.plot([0, 1], [1, 0])
    assert run.savefig(fig, "line") is None and run.savefig(None, "skipped") is None
    assert run.figure_path("line").stat().st_size > 1000 and not run.figure_path("skipped").exists()
    plt.close(fig)


def test_papermill_sees_exactly_the_declared_parameters():
    import papermill as pm

    for name in nb.notebook_names():
        seen = pm.inspect_notebook(str(nb.NOTEBOOKS_DIR / f"{name}.ipynb"))
        assert set(seen) == set(nb.notebook_parameters(name)), "papermill cannot parse a line of the parameters cell"


def test_readme_section_is_generated_from_results(tmp_path, monkeypatch):
    out = tmp_path / "outputs" / NB00
    out.mkdir(parents=True)
    (out / "results.json").write_text(json.dumps({"profile": "default", "metrics": {"probe": {"acc_full": 0.98765},
                                      "other": 1}, "timings": {"total": 12.0}, "environment": {"cpu_count": 2}}))
    monkeypatch.setattr(nb, "OUTPUTS_DIR", tmp_path / "outputs")
    readme = tmp_path / "README.md"
    readme.write_text("intro\n<!-- results:start -->\nold\n<!-- results:end -->\nrest\n")
    nb.write_readme(readme)
    text = readme.read_text()
    assert "| `probe.acc_full` | 0.988 |" in text and "other" not in text and "old" not in text
    assert text.startswith("intro") and text.endswith("rest\n")


def test_a_kernel_that_dies_while_starting_is_started_again_and_other_errors_are_not(tmp_path, monkeypatch):
    """Two sweep workers starting kernels at once can race for ports (CI: 'Kernel died before replying to
    kernel_info'); no cell has run then, so run_notebook starts a fresh kernel. A failure inside a cell is raised."""
    import papermill

    calls = []

    def flaky(*a, **k):
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("Kernel died before replying to kernel_info")

    monkeypatch.setattr(papermill, "execute_notebook", flaky)
    monkeypatch.setattr(nb.time, "sleep", lambda s: None)
    nb.run_notebook("00_inside_a_language_model", "smoke", output_dir=tmp_path)
    assert len(calls) == 2

    def always(*a, **k):
        calls.append(1)
        raise RuntimeError("Kernel died before replying to kernel_info")

    calls.clear()
    monkeypatch.setattr(papermill, "execute_notebook", always)
    with pytest.raises(RuntimeError, match="kernel_info"):
        nb.run_notebook("00_inside_a_language_model", "smoke", output_dir=tmp_path)
    assert len(calls) == nb.KERNEL_START_ATTEMPTS

    def cell_error(*a, **k):
        calls.append(1)
        raise RuntimeError("a cell raised")

    calls.clear()
    monkeypatch.setattr(papermill, "execute_notebook", cell_error)
    with pytest.raises(RuntimeError, match="a cell raised"):
        nb.run_notebook("00_inside_a_language_model", "smoke", output_dir=tmp_path)
    assert len(calls) == 1


def test_cell_timeout_comes_from_the_argument_or_the_environment_and_bad_values_are_named(monkeypatch):
    monkeypatch.delenv("XAI_CELL_TIMEOUT", raising=False)
    assert nb.cell_timeout() is None
    monkeypatch.setenv("XAI_CELL_TIMEOUT", "1500")
    assert nb.cell_timeout() == 1500.0
    assert nb.cell_timeout(7) == 7.0
    monkeypatch.setenv("XAI_CELL_TIMEOUT", "soon")
    with pytest.raises(ValueError, match="XAI_CELL_TIMEOUT"):
        nb.cell_timeout()
    with pytest.raises(ValueError, match="> 0"):
        nb.cell_timeout(0)


def test_a_cell_that_never_returns_fails_after_the_cell_timeout(tmp_path, monkeypatch):
    """The safety net `make test` relies on: run_notebook hands the timeout to papermill, and papermill (through
    nbclient) stops a cell that runs past it instead of waiting forever, as a hung kernel would make it."""
    import nbformat
    import papermill

    seen = {}
    real = papermill.execute_notebook

    def spy(*a, **k):
        seen.update(k)

    monkeypatch.setattr(papermill, "execute_notebook", spy)
    monkeypatch.setenv("XAI_CELL_TIMEOUT", "900")
    nb.run_notebook("00_inside_a_language_model", "smoke", output_dir=tmp_path)
    assert seen["execution_timeout"] == 900.0

    book = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("import time; time.sleep(120)")])
    nbformat.write(book, tmp_path / "sleep.ipynb")
    t0 = time.time()
    from nbclient.exceptions import CellTimeoutError

    with pytest.raises(CellTimeoutError, match="timed out"):
        real(str(tmp_path / "sleep.ipynb"), str(tmp_path / "out.ipynb"), progress_bar=False, kernel_name="python3",
             execution_timeout=3)
    assert time.time() - t0 < 60


def test_publish_profile_results_commits_a_copy_without_response_texts(tmp_path, monkeypatch):
    run = tmp_path / "run"
    run.mkdir()
    res = {"profile": "evidence", "metrics": {"x": 1.0},
           "predictions": {"3": [{"Id": 7, "EssayText": "a student's answer", "Score1": 1, "optimized skill": 2}]}}
    (run / "results.json").write_text(json.dumps(res))
    monkeypatch.setattr(nb, "RESULTS_DIR", tmp_path / "results")
    dest = nb.publish_profile_results("04_scoring_skills", "evidence", run)
    assert dest == tmp_path / "results" / "04_scoring_skills.evidence.json"
    got = json.loads(dest.read_text())
    assert got["predictions"]["3"] == [{"Id": 7, "Score1": 1, "optimized skill": 2}] and got["metrics"] == {"x": 1.0}
    assert "a student's answer" not in dest.read_text()
    with pytest.raises(nb.ParameterError, match="is a 'evidence' run, not 'default'"):
        nb.publish_profile_results("04_scoring_skills", "default", run)
    with pytest.raises(FileNotFoundError, match="--profile evidence"):
        nb.publish_profile_results("04_scoring_skills", "evidence", tmp_path / "nowhere")
