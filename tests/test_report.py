"""recipes/report.py: the README's and docs/results.md's quickstart tables are what it renders from the committed runs.

The script is plain Python and json; it runs in subprocesses here, and one checks that it
imports neither Keras nor a backend.
"""

import json
import os
import shutil
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REPORT = os.path.join(ROOT, "recipes", "report.py")
START = "<!-- report.py: {} (generated; edit recipes/report.py or rerun it) -->"
END = "<!-- /report.py -->"


def report(*args):
    return subprocess.run([sys.executable, REPORT, *map(str, args)], capture_output=True, text=True, timeout=60, cwd=ROOT)


def named(path):
    """How report.py names `path` in a message: relative to the repository when inside it (as in CI)."""
    relative = os.path.relpath(os.path.abspath(path), ROOT)
    return str(path) if relative.startswith("..") else relative


def scores(frechet_distance, recall):
    return {"frechet_distance": frechet_distance, "recall": recall}


def run_metrics(backend, method_one_step, ilct_one_step):
    """A quickstart metrics.json's content with the keys report.py reads, and one it ignores."""
    return {
        "one_step": scores(method_one_step, 0.8), "two_step": scores(6.5, 0.876),
        "ilct": {"one_step": scores(ilct_one_step, 0.7), "two_step": scores(12.0, 0.75)},
        "real_holdout": scores(0.631, 0.92), "untrained": scores(199.256, 0.0),
        "backend": backend, "seconds": 290.4, "steps": 1500,
        "date": "2026-12-04T10:20:30+00:00", "commit": "abc1234",
        "versions": {"keras": "3.15.1", "keras_lct": "0.1.0", backend: "9.9"},
    }


def pages(folder):
    """A README and a results page in `folder`, each with its empty generated blocks among other text."""
    readme, results = folder / "README.md", folder / "results.md"
    readme.write_text(f"# title\n\n{START.format('quickstart table')}\n{END}\n\nafter\n")
    results.write_text(f"before\n{START.format('quickstart table')}\n{END}\nmiddle\n{START.format('backends table')}\n{END}\n")
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
    cells[2] = "1.23, 0.45 / " + cells[2].split(" / ", 1)[1]  # the paper's method's 1-step figures
    results.write_text(text[:row] + " | ".join(cells) + text[text.index("\n", row):])
    result = report("--check", "--readme", readme, "--results", results)
    assert result.returncode == 1
    stale = [line for line in result.stderr.splitlines() if "is stale" in line]
    assert len(stale) == 1 and stale[0].startswith(f"{named(results)} is stale"), result.stderr
    assert "python recipes/report.py" in result.stderr


@pytest.mark.backend_neutral
def test_the_tables_and_the_winner_sentences(tmp_path):
    readme, results = pages(tmp_path)
    behind, ahead = write_runs(tmp_path, run_metrics("jax", 14.234, 7.871), run_metrics("torch", 5.718, 15.342))
    result = report("--metrics", behind, ahead, "--readme", readme, "--results", results)
    assert result.returncode == 0, result.stderr
    readme_text = readme.read_text()
    assert readme_text.startswith(f"# title\n\n{START.format('quickstart table')}\n") and readme_text.endswith(f"{END}\n\nafter\n")
    for line in [
        "Measured with `make demo` on jax (2026-12-04, commit abc1234, 290 s on this machine's 2 CPU cores):",
        "| real held-out digits | 0.63 | 0.92 |",
        "| the paper's method, 1 / 2 steps | 14.23 / 6.50 | 0.80 / 0.88 |",
        "| iLCT, 1 / 2 steps | 7.87 / 12.00 | 0.70 / 0.75 |",
        "| untrained model | 199.26 | 0.00 |",
        "The paper's method is behind iLCT at 1 step: Frechet distance 14.23 against 7.87, 6.36 higher "
        "(one seed; the other backends in [docs/results.md](docs/results.md)).",
    ]:
        assert f"\n{line}\n" in readme_text, line
    results_text = results.read_text()
    assert results_text.startswith("before\n") and f"{END}\nmiddle\n" in results_text
    for line in [
        "| jax | 290 s | 14.23, 0.80 / 6.50, 0.88 | 7.87, 0.70 / 12.00, 0.75 | 0.63, 0.92 | 199.26, 0.00 | 2026-12-04 | abc1234 |",
        "| torch | 290 s | 5.72, 0.80 / 6.50, 0.88 | 15.34, 0.70 / 12.00, 0.75 | 0.63, 0.92 | 199.26, 0.00 | 2026-12-04 | abc1234 |",
        "The paper's method is behind iLCT at 1 step: Frechet distance 14.23 against 7.87, 6.36 higher (one seed).",
    ]:
        assert f"\n{line}\n" in results_text, line
    assert "keras 3.15.1, keras_lct 0.1.0, torch 9.9" in results_text
    assert "The lower 1-step Frechet distance: the paper's method on torch; iLCT on jax; mean over the 2 runs" in results_text
    assert report("--check", "--metrics", behind, ahead, "--readme", readme, "--results", results).returncode == 0

    # The paper's method ahead.
    result = report("--metrics", ahead, "--readme", readme, "--results", results)
    assert result.returncode == 0, result.stderr
    assert ("\nThe paper's method is ahead of iLCT at 1 step: Frechet distance 5.72 against 15.34, 9.62 lower "
            "(one seed; the other backends in [docs/results.md](docs/results.md)).\n") in readme.read_text()
    assert "| jax |" not in results.read_text()


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
