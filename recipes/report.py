"""Report: the quickstart's tables in README.md and docs/results.md, rendered from metrics.json files.

Every quickstart figure the README and docs/results.md print comes from a run's `metrics.json`
through this script, with the run's date, backend and commit; none is copied by hand. The
committed runs are `docs/results/quickstart-<backend>.json`, each a `make demo` run's
`runs/quickstart/metrics.json` (`make demo DEMO_BACKEND=torch` for another backend):

    make demo
    cp runs/quickstart/metrics.json docs/results/quickstart-jax.json
    python recipes/report.py            # rewrites the generated blocks of README.md and docs/results.md
    python recipes/report.py --check    # exit 1 when a file's blocks differ from what it renders

It renders two blocks, each between HTML comment markers that it finds in the files:

- `quickstart table`: the first file's run (the demo's backend, jax, when there is one) as a
  table of Frechet distance and recall (held-out real digits, the paper's method and iLCT at 1
  and 2 steps, the untrained model), with a sentence saying which method has the lower 1-step
  Frechet distance and by how much. In README.md and docs/results.md.
- `backends table`: one row per file (backend, wall time, both methods at 1 / 2 steps, held-out,
  untrained, date, commit), their versions, and which method is ahead on each backend. In
  docs/results.md.

Plain Python and json: it imports neither Keras nor a backend, so it runs at once.
"""

import argparse
import glob
import json
import os
import re
import shlex
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS_FOLDER = os.path.join(ROOT, "docs", "results")
DEMO_BACKEND = "jax"  # the Makefile's DEMO_BACKEND: its run goes first, so the README shows it
END_MARKER = "<!-- /report.py -->"
QUICKSTART_BLOCK = "quickstart table"
BACKENDS_BLOCK = "backends table"
RERUN = (
    "rerun the quickstart with this version (`make demo`, or `KERAS_BACKEND=<backend> python "
    "recipes/quickstart.py`) and copy its runs/quickstart/metrics.json to docs/results/quickstart-<backend>.json"
)
SCORES = ("frechet_distance", "recall")
# What a metrics file must hold: (key path, kind). Each score is {"frechet_distance", "recall"}.
REQUIRED = [(("backend",), str), (("seconds",), float), (("date",), str), (("commit",), str), (("versions",), dict)]
REQUIRED += [((*run, score), float) for run in (("real_holdout",), ("one_step",), ("two_step",), ("ilct", "one_step"),
                                               ("ilct", "two_step"), ("untrained",)) for score in SCORES]


class ReportError(Exception):
    """A metrics file or a page that cannot be rendered; the message says what to do."""


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--metrics", nargs="+", metavar="FILE",
                        help="quickstart metrics.json files, the README's run first "
                             "(default: docs/results/quickstart-<backend>.json, jax first)")
    parser.add_argument("--readme", default=os.path.join(ROOT, "README.md"), help="the README to update (default: %(default)s)")
    parser.add_argument("--results", default=os.path.join(ROOT, "docs", "results.md"),
                        help="the results page to update (default: %(default)s)")
    parser.add_argument("--check", action="store_true",
                        help="write nothing; exit 1 when a file's generated blocks are not what this script renders")
    return parser.parse_args(argv)


def shown(path):
    """`path` relative to the repository when it is inside it, for messages."""
    relative = os.path.relpath(os.path.abspath(path), ROOT)
    return path if relative.startswith("..") else relative


# ## The metrics files: the committed runs, each checked for every key the tables print.
def default_metrics_files():
    files = glob.glob(os.path.join(RESULTS_FOLDER, "quickstart-*.json"))
    if not files:
        raise ReportError(f"no metrics files in {shown(RESULTS_FOLDER)}/ (quickstart-<backend>.json); {RERUN}")
    return sorted(files, key=lambda path: (os.path.basename(path) != f"quickstart-{DEMO_BACKEND}.json", path))


def load_metrics(path):
    try:
        with open(path, encoding="utf-8") as file:
            metrics = json.load(file)
    except (OSError, ValueError) as error:
        raise ReportError(f"cannot read the metrics file {shown(path)} ({error}); {RERUN}") from None
    for keys, kind in REQUIRED:
        value = metrics
        for depth, key in enumerate(keys):
            if not isinstance(value, dict) or key not in value:
                raise ReportError(f"the metrics file {shown(path)} has no {'.'.join(keys[: depth + 1])!r} "
                                  f"(written by an older quickstart?); {RERUN}")
            value = value[key]
        number = kind is float and isinstance(value, (int, float)) and not isinstance(value, bool)
        if not (number or (kind is not float and isinstance(value, kind))):
            raise ReportError(f"the metrics file {shown(path)} has {'.'.join(keys)} = {value!r}, not a "
                              f"{'number' if kind is float else kind.__name__}; {RERUN}")
    named = re.fullmatch(r"quickstart-(.+)\.json", os.path.basename(path))
    if named and named.group(1) != metrics["backend"]:
        raise ReportError(f"{shown(path)} holds a {metrics['backend']} run; name it quickstart-{metrics['backend']}.json")
    return metrics


# ## The blocks: markdown rendered from the metrics, 2 decimals throughout.
def start_marker(name):
    return f"<!-- report.py: {name} (generated; edit recipes/report.py or rerun it) -->"


def pair(scores):
    return f"{scores['frechet_distance']:.2f}, {scores['recall']:.2f}"


def one_step_distances(metrics):
    """The 1-step Frechet distances of the paper's method and of iLCT, as the tables round them."""
    return round(metrics["one_step"]["frechet_distance"], 2), round(metrics["ilct"]["one_step"]["frechet_distance"], 2)


def placeholder_note(metrics):
    note = metrics.get("placeholder")
    return [] if not note else [f"**{metrics['backend']}: placeholder, not a measurement.** {note}", ""]


def comparison(metrics):
    """Which method has the lower 1-step Frechet distance, and by how much, as a sentence without its end."""
    method, ilct = one_step_distances(metrics)
    if method < ilct:
        return f"The paper's method is ahead of iLCT at 1 step: Frechet distance {method:.2f} against {ilct:.2f}, {ilct - method:.2f} lower"
    if method > ilct:
        return f"The paper's method is behind iLCT at 1 step: Frechet distance {method:.2f} against {ilct:.2f}, {method - ilct:.2f} higher"
    return f"The paper's method and iLCT tie at 1 step: Frechet distance {method:.2f} each"


def quickstart_block(metrics, see_also=""):
    """The table of one run, with its provenance above and `comparison` below; `see_also` ends the sentence."""
    method, ilct = metrics, metrics["ilct"]

    def both(key):
        return f"{method['one_step'][key]:.2f} / {method['two_step'][key]:.2f}", f"{ilct['one_step'][key]:.2f} / {ilct['two_step'][key]:.2f}"

    (method_fd, ilct_fd), (method_recall, ilct_recall) = both("frechet_distance"), both("recall")
    lines = [
        start_marker(QUICKSTART_BLOCK),
        f"Measured with `make demo` on {metrics['backend']} ({metrics['date'][:10]}, commit {metrics['commit']}, "
        f"{metrics['seconds']:.0f} s on this machine's 2 CPU cores):",
        "",
        *placeholder_note(metrics),
        "| samples | Frechet distance | recall |",
        "|---|---|---|",
        f"| real held-out digits | {metrics['real_holdout']['frechet_distance']:.2f} | {metrics['real_holdout']['recall']:.2f} |",
        f"| the paper's method, 1 / 2 steps | {method_fd} | {method_recall} |",
        f"| iLCT, 1 / 2 steps | {ilct_fd} | {ilct_recall} |",
        f"| untrained model | {metrics['untrained']['frechet_distance']:.2f} | {metrics['untrained']['recall']:.2f} |",
        "",
        f"{comparison(metrics)} (one seed{see_also}).",
        END_MARKER,
    ]
    return "\n".join(lines)


def listed(names):
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]


def backends_block(runs):
    """One row per run, their versions, and on which backends each method has the lower 1-step distance."""
    lines = [
        start_marker(BACKENDS_BLOCK),
        "| backend | wall time | method 1 / 2 steps: FD, recall | iLCT 1 / 2 steps: FD, recall | held-out | untrained | date | commit |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for metrics in runs:
        lines.append(
            f"| {metrics['backend']} | {metrics['seconds']:.0f} s | {pair(metrics['one_step'])} / {pair(metrics['two_step'])} "
            f"| {pair(metrics['ilct']['one_step'])} / {pair(metrics['ilct']['two_step'])} | {pair(metrics['real_holdout'])} "
            f"| {pair(metrics['untrained'])} | {metrics['date'][:10]} | {metrics['commit']} |"
        )
    lines.append("")
    for metrics in runs:
        lines += placeholder_note(metrics)
    versions = "; ".join(f"{metrics['backend']}: " + ", ".join(f"{name} {version}" for name, version in metrics["versions"].items())
                         for metrics in runs)
    winners = {"the paper's method": [], "iLCT": [], "neither (a tie)": []}
    for metrics in runs:
        method, ilct = one_step_distances(metrics)
        winners["the paper's method" if method < ilct else "iLCT" if ilct < method else "neither (a tie)"].append(metrics["backend"])
    summary = "; ".join(f"{who} on {listed(backends)}" for who, backends in winners.items() if backends)
    sentence = f"Versions: {versions}. The lower 1-step Frechet distance: {summary}"
    if len(runs) > 1:
        means = [sum(one_step_distances(metrics)[index] for metrics in runs) / len(runs) for index in (0, 1)]
        sentence += f"; mean over the {len(runs)} runs {means[0]:.2f} (the paper's method) against {means[1]:.2f} (iLCT)"
    lines += [sentence + " (one seed each).", END_MARKER]
    return "\n".join(lines)


# ## The pages: each block replaces the text between its markers, nothing else changes.
def with_block(text, name, block, path):
    start = text.find(f"<!-- report.py: {name} ")
    if start < 0 or (start > 0 and text[start - 1] != "\n"):
        raise ReportError(f"{shown(path)} has no line starting {start_marker(name)!r}: put it, and {END_MARKER!r} "
                          "on a line of its own, where the generated block goes")
    if text.find(f"<!-- report.py: {name} ", start + 1) >= 0:
        raise ReportError(f"{shown(path)} has two {name!r} blocks; keep one")
    end = text.find(END_MARKER, start)
    if end < 0:
        raise ReportError(f"{shown(path)}'s {name!r} block has no end marker {END_MARKER!r}")
    return text[:start] + block + text[end + len(END_MARKER):]


def rendered_pages(runs, readme, results):
    """{path: (current text, rendered text)} of the README and the results page."""
    blocks = {
        readme: [(QUICKSTART_BLOCK, quickstart_block(runs[0], "; the other backends in [docs/results.md](docs/results.md)"))],
        results: [(QUICKSTART_BLOCK, quickstart_block(runs[0])), (BACKENDS_BLOCK, backends_block(runs))],
    }
    pages = {}
    for path, page_blocks in blocks.items():
        try:
            with open(path, encoding="utf-8") as file:
                text = file.read()
        except OSError as error:
            raise ReportError(f"cannot read {shown(path)} ({error})") from None
        new = text
        for name, block in page_blocks:
            new = with_block(new, name, block, path)
        pages[path] = text, new
    return pages


def write_atomic(path, text):
    """Writes `text` to a temporary file beside `path`, then renames it over `path` (keras_lct.saving imports Keras)."""
    temporary = os.path.join(os.path.dirname(os.path.abspath(path)), f".{os.path.basename(path)}.{os.getpid()}.tmp")
    try:
        with open(temporary, "w", encoding="utf-8") as file:
            file.write(text)
        os.replace(temporary, path)
    finally:
        if os.path.exists(temporary):
            os.remove(temporary)


# ## Run: render, then check or write.
def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    try:
        files = args.metrics or default_metrics_files()
        runs = [load_metrics(path) for path in files]
        pages = rendered_pages(runs, args.readme, args.results)
    except ReportError as error:
        print(f"report.py: error: {error}", file=sys.stderr)
        return 2
    for path, metrics in zip(files, runs):
        if metrics.get("placeholder"):
            print(f"report.py: warning: {shown(path)} is a placeholder, not a measurement; {RERUN}", file=sys.stderr)
    stale = [path for path, (text, new) in pages.items() if text != new]
    if args.check:
        command = shlex.join(["python", "recipes/report.py"] + [word for word in argv if word != "--check"])
        for path in stale:
            print(f"{shown(path)} is stale: its generated blocks are not what recipes/report.py renders from "
                  f"{', '.join(map(shown, files))}; run `{command}`", file=sys.stderr)
        return 1 if stale else 0
    for path, (text, new) in pages.items():
        if text != new:
            write_atomic(path, new)
        print(f"{shown(path)}: {'updated' if text != new else 'up to date'} from {', '.join(map(shown, files))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
