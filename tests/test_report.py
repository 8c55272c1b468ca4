"""recipes/report.py: the README's and docs/results.md's quickstart tables are what it renders from the committed runs.

The script is plain Python and json; it runs in subprocesses here, and one checks that it
imports neither Keras nor a backend to render (it writes a page through keras_lct.saving).
"""

import contextlib
import importlib.util
import io
import json
import os
import shutil
import subprocess
import sys
import types

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REPORT = os.path.join(ROOT, "recipes", "report.py")
START = "<!-- report.py: {} (generated; edit recipes/report.py or rerun it) -->"
END = "<!-- /report.py -->"


def load_report():
    """recipes/report.py as a module (plain Python: it imports no backend)."""
    spec = importlib.util.spec_from_file_location("report", REPORT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def named(path):
    """How report.py names `path` in a message (relative to the repository when inside it, as in CI)."""
    return load_report().shown(str(path))


def report(*args):
    """`python recipes/report.py ARGS`, run in this process: its stdout, stderr and exit code.

    In-process because a page rewrite imports keras-lct (`keras_lct.saving`), which this process
    has loaded already: a subprocess would import Keras and a backend for each rewrite. That the
    script renders and checks without Keras is tested in a subprocess, below.
    """
    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.chdir(ROOT), contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        try:
            code = load_report().main([str(arg) for arg in args])
        except SystemExit as exit:
            code = exit.code
    return types.SimpleNamespace(returncode=code, stdout=stdout.getvalue(), stderr=stderr.getvalue())


def scores(frechet_distance, recall):
    return {"frechet_distance": frechet_distance, "recall": recall}


def seed_scores(frechet_distance, recall, frechet_distance_std, recall_std):
    return {"frechet_distance": frechet_distance, "recall": recall,
            "frechet_distance_std": frechet_distance_std, "recall_std": recall_std}


def run_metrics(backend, method_one_step, ilct_one_step, method_std=1.0, ilct_std=2.0):
    """A quickstart metrics.json's content over 3 seeds with the keys report.py reads, and some it ignores."""
    return {
        "one_step": seed_scores(method_one_step, 0.8, method_std, 0.02), "two_step": seed_scores(6.5, 0.876, 0.5, 0.01),
        "ilct": {"one_step": seed_scores(ilct_one_step, 0.7, ilct_std, 0.03), "two_step": seed_scores(12.0, 0.75, 1.5, 0.04)},
        "real_holdout": scores(0.631, 0.92), "untrained": scores(199.256, 0.0), "seeds": [0, 1, 2],
        "backend": backend, "seconds": 290.4, "steps": 1500,
        "date": "2026-12-04T10:20:30+00:00", "commit": "abc1234",
        "versions": {"keras": "3.15.1", "keras_lct": "0.1.0", backend: "9.9"},
    }


def pages(folder):
    """A README and a results page in `folder`, each with its empty generated blocks among other text."""
    readme, results = folder / "README.md", folder / "results.md"
    readme.write_text(f"# title\n\n{START.format('quickstart table')}\n{END}\n\nafter\n")
    results.write_text(f"before\n{START.format('quickstart table')}\n{END}\nmiddle\n{START.format('backends table')}\n{END}\n"
                       f"{START.format('conditional design table')}\n{END}\n{START.format('objectives table')}\n{END}\n"
                       f"{START.format('ect table')}\n{END}\n")
    return readme, results


def write_runs(folder, *runs):
    paths = []
    for run in runs:
        paths.append(folder / f"quickstart-{run['backend']}.json")
        paths[-1].write_text(json.dumps(run))
    return paths


@pytest.mark.backend_neutral
def test_the_committed_pages_are_what_the_script_renders_from_the_committed_runs():
    result = report("--check")
    assert result.returncode == 0, result.stdout + result.stderr
    # It renders without Keras or a backend, so it runs at once, anywhere.
    imported = subprocess.run(
        [sys.executable, "-c", "import runpy, sys; runpy.run_path(sys.argv[1], run_name='report'); "
         "print(sorted({name.split('.')[0] for name in sys.modules} & {'keras', 'keras_lct', 'jax', 'torch', 'tensorflow', 'numpy'}))",
         REPORT],
        capture_output=True, text=True, timeout=60, cwd=ROOT,
    )
    assert imported.returncode == 0 and imported.stdout.strip() == "[]", imported.stdout + imported.stderr


@pytest.mark.backend_neutral
def test_a_changed_figure_makes_the_check_fail_naming_the_file(tmp_path):
    readme, results = tmp_path / "README.md", tmp_path / "results.md"
    shutil.copy(os.path.join(ROOT, "README.md"), readme)
    shutil.copy(os.path.join(ROOT, "docs", "results.md"), results)
    assert report("--check", "--readme", readme, "--results", results).returncode == 0
    text = results.read_text()
    start = text.index(START.format("backends table"))
    row = text.index("\n| ", text.index("|---", start)) + 1  # the first run's row
    cells = text[row:text.index("\n", row)].split(" | ")
    cells[4] = "1.23, 0.45 / " + cells[4].split(" / ", 1)[1]  # the paper's method's 1-step figures
    results.write_text(text[:row] + " | ".join(cells) + text[text.index("\n", row):])
    result = report("--check", "--readme", readme, "--results", results)
    assert result.returncode == 1
    stale = [line for line in result.stderr.splitlines() if "is stale" in line]
    assert len(stale) == 1 and stale[0].startswith(f"{named(results)} is stale"), result.stderr
    assert "python recipes/report.py" in result.stderr


@pytest.mark.backend_neutral
def test_the_tables_and_the_winner_sentences(tmp_path):
    readme, results = pages(tmp_path)
    behind = run_metrics("jax", 14.234, 7.871, method_std=1.0, ilct_std=2.0)  # beyond the spread (3.00)
    ahead = run_metrics("torch", 5.718, 15.342, method_std=4.0, ilct_std=6.0)  # within the spread (10.00)
    # A run with --ot off and --curriculum-s1 320; files without the keys predate the options (OT on, s1 640).
    ahead.update(minibatch_ot=False, curriculum_s1=320, classifier_accuracy=0.9844)
    ahead["conditional"] = {"one_step": dict(scores(3.0606, 0.8373), accuracy=0.904),
                            "two_step": dict(scores(2.6267, 0.8867), accuracy=0.9301),
                            "seed": 0, "steps": 1200, "label_dropout": 0.1}
    behind["per_seed"] = {name: [{"one_step": scores(fd, 0.8)} for fd in distances]
                          for name, distances in (("the_papers_method", (13.0, 14.0, 15.7)), ("ilct", (6.0, 8.0, 9.6)))}
    behind, ahead = write_runs(tmp_path, behind, ahead)
    result = report("--metrics", behind, ahead, "--readme", readme, "--results", results)
    assert result.returncode == 0, result.stderr
    readme_text = readme.read_text()
    assert readme_text.startswith(f"# title\n\n{START.format('quickstart table')}\n") and readme_text.endswith(f"{END}\n\nafter\n")
    lost = ("The paper's method lost to iLCT at 1 step: Frechet distance 14.23 ± 1.00 against iLCT's 7.87 ± 2.00, "
            "6.36 higher, more than the spread of the 3 seeds (3.00, the sum of the standard deviations)")
    for line in [
        "Measured with `make demo` on jax (2026-12-04, commit abc1234, 290 s on this machine's 2 CPU cores); "
        "each consistency model trained for 1500 steps (curriculum up to N = 641) from 3 seeds (0, 1, 2), "
        "the paper's method with minibatch OT; "
        "mean ± standard deviation:",
        "| real held-out digits | 0.63 | 0.92 |",
        "| the paper's method, 1 / 2 steps | 14.23 ± 1.00 / 6.50 ± 0.50 | 0.80 ± 0.02 / 0.88 ± 0.01 |",
        "| iLCT, 1 / 2 steps | 7.87 ± 2.00 / 12.00 ± 1.50 | 0.70 ± 0.03 / 0.75 ± 0.04 |",
        "| untrained model | 199.26 | 0.00 |",
        f"{lost}; the other backends are in [docs/results.md](docs/results.md).",
        "Per seed (0, 1, 2), 1-step Frechet distance: the paper's method 13.00, 14.00, 15.70; iLCT 6.00, 8.00, 9.60.",
    ]:
        assert f"\n{line}\n" in readme_text, line
    results_text = results.read_text()
    assert results_text.startswith("before\n") and f"{END}\nmiddle\n" in results_text
    for line in [
        "| jax | 290 s | 3 | 1500 steps, s1 640, OT on | 14.23 ± 1.00, 0.80 ± 0.02 / 6.50 ± 0.50, 0.88 ± 0.01 | 7.87 ± 2.00, 0.70 ± 0.03 / 12.00 ± 1.50, "
        "0.75 ± 0.04 | 0.63, 0.92 | 199.26, 0.00 | 2026-12-04 | abc1234 |",
        f"{lost}.",
    ]:
        assert f"\n{line}\n" in results_text, line
    assert "| torch | 290 s | 3 | 1500 steps, s1 320, OT off | 5.72 ± 4.00, 0.80 ± 0.02 / " in results_text
    assert "keras 3.15.1, keras_lct 0.1.0, torch 9.9" in results_text
    assert ("The lower mean 1-step Frechet distance: iLCT on jax; the paper's method on torch (within the seeds' spread); "
            "mean over the 2 backends 9.98 (the paper's method) against 11.61 (iLCT).") in results_text
    assert report("--check", "--metrics", behind, ahead, "--readme", readme, "--results", results).returncode == 0
    assert not [path.name for path in tmp_path.iterdir() if path.name.startswith(".")]  # no temporary left

    # The paper's method ahead, within the spread.
    result = report("--metrics", ahead, "--readme", readme, "--results", results)
    assert result.returncode == 0, result.stderr
    assert ("\nThe paper's method won at 1 step: Frechet distance 5.72 ± 4.00 against iLCT's 15.34 ± 6.00, 9.62 lower, "
            "within the spread of the 3 seeds (10.00, the sum of the standard deviations): not told apart from seed noise; "
            "the other backends are in [docs/results.md](docs/results.md).\n") in readme.read_text()
    assert "| jax |" not in results.read_text()
    assert "(curriculum up to N = 321) from 3 seeds (0, 1, 2), the paper's method without minibatch OT;" in readme.read_text()
    assert "Per seed" not in readme.read_text()  # a run without per_seed figures
    assert "\n| the class-conditional model (1200 steps, seed 0), 1 / 2 steps | 3.06 / 2.63 | 0.84 / 0.89 |\n" in readme.read_text()
    assert ("\nConditional accuracy: the class-conditional model drew the requested digit in 90.4% of its 1-step samples "
            "and 93.0% of its 2-step samples (50 of each digit, judged by the digits classifier, 98.4% accurate on the "
            "held-out digits); 10% of its training labels were dropped, so it also samples without one.\n") in readme.read_text()
    assert "class-conditional" not in readme_text  # the first run trained none


@pytest.mark.backend_neutral
def test_seed_summary_and_verdict_against_hand_computed_values():
    module = load_report()
    runs = [{"one_step": scores(fd, recall), "two_step": scores(fd / 2, recall)}
            for fd, recall in ((5.0, 0.8), (6.0, 0.9), (10.0, 0.7))]
    summary = module.seed_summary(runs)
    # mean 7; std (n - 1) = sqrt(((5-7)^2 + (6-7)^2 + (10-7)^2) / 2) = sqrt(7); recall 0.8, std 0.1.
    assert summary["one_step"]["frechet_distance"] == pytest.approx(7.0)
    assert summary["one_step"]["frechet_distance_std"] == pytest.approx(7 ** 0.5)
    assert summary["one_step"]["recall"] == pytest.approx(0.8) and summary["one_step"]["recall_std"] == pytest.approx(0.1)
    assert summary["two_step"]["frechet_distance"] == pytest.approx(3.5)
    assert module.seed_summary(runs[:1])["one_step"]["frechet_distance_std"] == 0.0
    other = {"one_step": {"frechet_distance": 13.0, "frechet_distance_std": 3.0}}
    verdict = module.one_step_verdict(summary, other, 3)  # 6.00 apart, spread 2.65 + 3.00
    assert verdict["winner"] == "the paper's method" and verdict["difference"] == 6.0 and verdict["spread"] == 5.65
    assert verdict["beyond_spread"] and "more than the spread" in verdict["sentence"]
    other["one_step"]["frechet_distance_std"] = 3.5
    verdict = module.one_step_verdict(summary, other, 3)
    assert not verdict["beyond_spread"] and "not told apart from seed noise" in verdict["sentence"]
    verdict = module.one_step_verdict(other, summary, 3)
    assert verdict["winner"] == "iLCT" and verdict["sentence"].startswith("The paper's method lost to iLCT")
    verdict = module.one_step_verdict(summary, summary, 1)
    assert verdict["winner"] == "neither" and not verdict["beyond_spread"] and "one seed" in verdict["sentence"]


@pytest.mark.backend_neutral
def test_the_objectives_table_puts_the_papers_method_first_and_counts_the_seeds_it_beats(tmp_path):
    def method(one_step_fds, accuracy):
        runs = [{"one_step": dict(scores(fd, 0.5), accuracy=accuracy), "two_step": dict(scores(fd, 0.5), accuracy=accuracy),
                 "steps": 100 + index, "seconds": 40.0 + index} for index, fd in enumerate(one_step_fds)]
        return {**load_report().seed_summary(runs, ("frechet_distance", "recall", "accuracy")), "per_seed": runs}

    path = tmp_path / "objectives.json"
    path.write_text(json.dumps({
        "methods": {"MeanFlow": method([2.0, 9.0, 3.0], 0.99), "the paper's method": method([2.5, 2.5, 2.6], 0.87)},
        "seeds": [0, 1, 2], "steps": 900, "num_samples": 500, "backend": "jax", "date": "2026-12-07T10:00:00+00:00",
        "commit": "abc1234",
    }))
    block = load_report().objectives_block(str(path))
    rows = [line for line in block.splitlines() if line.startswith("| ") and "objective" not in line]
    assert rows[0].startswith("| the paper's method | 101 | 2.53 ± 0.06 ") and rows[1].startswith("| MeanFlow | 101 | 4.67 ± 3.79 ")
    assert "| 87.0 ± 0.0 |" in rows[0] and "| 99.0 ± 0.0 |" in rows[1]
    # 4.67 > 2.53 on the mean; seeds 0 (2.0 <= 2.5) and 2 (3.0 > 2.6): one of three.
    assert "MeanFlow above it (at or below the paper's method's seed on 1 of 3 seeds)" in block
    assert "about 41 s, its 900 steps" in block and "jax, 2026-12-07, commit abc1234" in block


@pytest.mark.backend_neutral
def test_the_ect_table_counts_steps_with_pretraining_and_judges_each_configuration_against_5_and_the_papers_method(tmp_path):
    def method(one_step_fds, steps=None):
        runs = [{"one_step": scores(fd, 0.5), "two_step": scores(fd / 2, 0.6), "steps": 900, "seconds": 40.0 + index}
                for index, fd in enumerate(one_step_fds)]
        for run in runs if steps else ():
            run.update(pretraining_steps=steps[0], ect_steps=steps[1], steps=sum(steps),
                       stages_reached=4 + (run["one_step"]["frechet_distance"] > 7))  # one seed of the 8.0 reached 5
        return {**load_report().seed_summary(runs), "per_seed": runs}

    diffusion_runs = [{"one_step": scores(fd, 0.0), "heun": scores(fd / 10, 0.7), "steps": 450, "seconds": 20.0}
                      for fd in (60.0, 70.0, 80.0)]
    path = tmp_path / "ect.json"
    path.write_text(json.dumps({
        "methods": {"diffusion + ECT": method([6.0, 4.0, 8.0], (450, 400)), "the paper's method": method([5.0, 5.0, 5.2]),
                    "diffusion + ECT + Cauchy": method([4.0, 4.5, 3.0], (450, 380))},
        "diffusion": {**load_report().seed_summary(diffusion_runs, samplers=("one_step", "heun")),
                      "per_seed": diffusion_runs, "heun_steps": 10},
        "seeds": [0, 1, 2], "steps": 900, "num_samples": 500, "pretrain_share": 0.5, "stages": 4, "backend": "jax",
        "date": "2026-12-07T10:00:00+00:00", "commit": "abc1234",
    }))
    block = load_report().ect_block(str(path))
    rows = [line for line in block.splitlines() if line.startswith("| ") and not line.startswith("| method |")]
    assert rows == ["| the paper's method | 900 | 5.07 ± 0.12 | 2.53 ± 0.06 | 0.50 ± 0.00 |",
                    "| diffusion + ECT | 450 + 400 | 6.00 ± 2.00 | 3.00 ± 1.00 | 0.50 ± 0.00 |",
                    "| diffusion + ECT + Cauchy | 450 + 380 | 3.83 ± 0.76 | 1.92 ± 0.38 | 0.50 ± 0.00 |"]
    # 6.00 > 5: missed; seed 1 (4.0) is at or below both 5 and the paper's method's 5.0. Cauchy: 3.83 meets it on every seed.
    assert ("diffusion + ECT misses it (6.00: above 5, at or below it on 1 of 3 seeds; above the paper's method's, "
            "at or below its seed on 1 of 3 seeds); diffusion + ECT + Cauchy meets it (3.83: at or below 5, at or below "
            "it on 3 of 3 seeds; at or below the paper's method's, at or below its seed on 3 of 3 seeds).") in block
    assert "Frechet distance 70.00 ± 10.00 at 1 step and 7.00 ± 1.00 with EDM's Heun sampler at 10 levels (19 network calls)" in block
    assert "about 41 s, its 900 steps" in block and "50% of it (about 20 s)" in block and "set for 4 stages (it reached 4 to 5)" in block and "jax, 2026-12-07, commit abc1234" in block


@pytest.mark.backend_neutral
def test_a_missing_or_incomplete_metrics_file_says_which_key_and_to_rerun_the_quickstart(tmp_path):
    readme, results = pages(tmp_path)
    before = readme.read_text(), results.read_text()
    run = run_metrics("jax", 10.0, 9.0)
    del run["ilct"]["two_step"]
    (path,) = write_runs(tmp_path, run)
    result = report("--metrics", path, "--readme", readme, "--results", results)
    assert result.returncode == 2
    assert named(path) in result.stderr and "'ilct.two_step'" in result.stderr and "rerun the quickstart" in result.stderr
    result = report("--check", "--metrics", tmp_path / "nowhere.json", "--readme", readme, "--results", results)
    assert result.returncode == 2 and "nowhere.json" in result.stderr and "rerun the quickstart" in result.stderr
    assert (readme.read_text(), results.read_text()) == before  # nothing was written
