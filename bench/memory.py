"""Where the training step's memory goes: resident memory per phase, in a fresh process.

For each UNet preset and batch size, starts a fresh Python that imports
keras_lct, builds the mid-curriculum model of the authors'-step harness
`compare_step.py` (not shipped; docs/benchmarks.md) and runs `fit` on random 32x32x4 latents with minibatch OT pairing. After each
phase (imports, model built, first step, last step) it records the process's
resident memory (VmRSS) and its peak so far (VmHWM), glibc malloc's bytes in
use and free (mallinfo2), and which of torch / jax / tensorflow the process
has imported; and the minor page faults and system CPU seconds of each step
after the first (medians): memory the allocator gave back and the next step
faults in again. Prints one JSON document and a table.

    KERAS_BACKEND=jax python bench/memory.py --presets tiny small --batch-sizes 8 32
    KERAS_BACKEND=torch python bench/memory.py --python /path/to/torch-only-venv/bin/python

`--python` runs the measured process in another environment (with keras-lct
installed there), e.g. one with a single backend installed, as users install
it: Keras imports jax at `import keras` whenever jax is installed, and
`keras.utils.set_random_seed` imports tensorflow whenever it is installed,
whatever the backend. The environment passes through, so e.g.
`JAX_COMPILATION_CACHE_DIR` (run twice) shows what a warm compilation cache
saves, and `GLIBC_TUNABLES=glibc.malloc.mmap_threshold=33554432:glibc.malloc.trim_threshold=1073741824`
what glibc's heap trimming costs per step (the trim threshold alone would also
freeze the mmap threshold at 128 KiB). Memory is not timing: runs need not be
alone on the machine.
"""

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys

PHASES = ("imports", "built", "first_step", "last_step")
FRAMEWORKS = ("torch", "jax", "tensorflow")
RECORDED_ENVIRONMENT = ("KERAS_BACKEND", "XLA_FLAGS", "JAX_COMPILATION_CACHE_DIR", "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS",
                        "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "MALLOC_ARENA_MAX", "GLIBC_TUNABLES")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--presets", nargs="+", default=["tiny", "small"], help="UNet presets (default: tiny small)")
    parser.add_argument("--batch-sizes", nargs="+", type=int, default=[8, 32], help="(default: 8 32)")
    parser.add_argument("--steps", type=int, default=13, help="training steps per process (default: 13, as compare_step.py's OT-on run: 3 warm-up + 10 timed)")
    parser.add_argument("--python", default=sys.executable, help="the Python that runs the measured processes (default: this one)")
    parser.add_argument("--plain", action="store_true",
                        help="run the step with keras_lct.backend.use_fast_paths(False), to see what the fast paths save")
    parser.add_argument("--output", help="also write the JSON here")
    parser.add_argument("--measure", nargs=2, metavar=("PRESET", "BATCH"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.steps < 2:
        parser.error(f"--steps must be at least 2 (a first and a last step), got {args.steps}")
    if min(args.batch_sizes) < 1:
        parser.error(f"--batch-sizes must be positive, got {args.batch_sizes}")
    return args


def memory_now():
    """This process's resident MiB (all, anonymous, file-backed: mostly the frameworks' shared libraries),
    its peak resident MiB so far, glibc malloc's in-use and free MiB, and the frameworks it imported."""
    status = {}
    with open("/proc/self/status") as file:
        for line in file:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM", "RssAnon", "RssFile"):
                status[key] = int(value.split()[0]) / 1024
    record = {"rss_mib": round(status["VmRSS"]), "peak_rss_mib": round(status["VmHWM"]),
              "rss_anonymous_mib": round(status["RssAnon"]), "rss_file_mib": round(status["RssFile"])}
    record.update(malloc_mib())
    record["frameworks_imported"] = [name for name in FRAMEWORKS if name in sys.modules]
    return record


def malloc_mib():
    """glibc's `mallinfo2`: bytes handed out by malloc and bytes it holds free; {} without glibc >= 2.33."""
    import ctypes

    fields = "arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks keepcost".split()

    class Mallinfo2(ctypes.Structure):
        _fields_ = [(name, ctypes.c_size_t) for name in fields]

    try:
        mallinfo2 = ctypes.CDLL("libc.so.6").mallinfo2
    except (OSError, AttributeError):
        return {}
    mallinfo2.restype = Mallinfo2
    info = mallinfo2()
    in_use = info.uordblks + info.hblkhd  # small blocks from the arenas + blocks mmapped on their own
    return {"malloc_in_use_mib": round(in_use / 2**20), "malloc_free_mib": round(info.fordblks / 2**20)}


def measure(preset, batch_size, steps, fast_paths):
    """Runs in the measured process: one model, `steps` steps of `fit`, a memory record after each phase."""
    phases = {}
    import keras
    import numpy as np

    from harness import mid_curriculum_model
    from keras_lct.backend import use_fast_paths
    from keras_lct.data import NoisePairedDataset

    phases["imports"] = memory_now()
    keras.utils.set_random_seed(0)
    model = mid_curriculum_model(preset)
    phases["built"] = memory_now()

    faults, system_seconds = [], []

    class PhaseRecorder(keras.callbacks.Callback):
        def on_train_batch_begin(self, batch, logs=None):
            self.usage = resource.getrusage(resource.RUSAGE_SELF)

        def on_train_batch_end(self, batch, logs=None):
            usage = resource.getrusage(resource.RUSAGE_SELF)
            if batch == 0:
                phases["first_step"] = memory_now()
                return
            faults.append(usage.ru_minflt - self.usage.ru_minflt)
            system_seconds.append(usage.ru_stime - self.usage.ru_stime)
            if batch == steps - 1:
                phases["last_step"] = memory_now()

    latents = (0.5 * np.random.default_rng(1).standard_normal((steps * batch_size, 32, 32, 4))).astype("float32")
    batches = NoisePairedDataset(latents, batch_size=batch_size, ot=True, seed=0)
    with use_fast_paths(fast_paths):
        model.fit(batches, epochs=1, verbose=0, callbacks=[PhaseRecorder()])
    record = {"backend": keras.backend.backend(), "keras": keras.__version__, "fast_paths": fast_paths, "phases": phases,
              "minor_page_faults_per_step": round(statistics.median(faults)),
              "system_s_per_step": round(statistics.median(system_seconds), 4)}
    if keras.backend.backend() == "tensorflow":  # tensors live in tensorflow's own allocator, not malloc's
        import tensorflow as tf

        record["tensorflow_allocator_peak_mib"] = round(tf.config.experimental.get_memory_info("CPU:0")["peak"] / 2**20)
    return record


def run_measured_process(args, preset, batch_size):
    command = [args.python, os.path.abspath(__file__), "--measure", preset, str(batch_size), "--steps", str(args.steps)]
    command += ["--plain"] if args.plain else []
    completed = subprocess.run(command, capture_output=True, text=True)
    if completed.returncode != 0:
        raise SystemExit(f"error: the measured process for {preset}, batch {batch_size} failed "
                         f"({' '.join(command)}):\n{completed.stderr[-3000:]}")
    record = json.loads(completed.stdout.strip().splitlines()[-1])
    return {"preset": preset, "batch_size": batch_size, "steps": args.steps, **record}


def table(runs):
    lines = ["| backend | preset | batch | " + " | ".join(f"{phase} RSS / peak MiB" for phase in PHASES)
             + " | last step: file-backed / anonymous MiB | malloc in use / free MiB | frameworks imported |",
             "|---|---|---|" + "---|" * len(PHASES) + "---|---|---|"]
    for run in runs:
        phases = run["phases"]
        last = phases["last_step"]
        cells = [f"{phases[phase]['rss_mib']} / {phases[phase]['peak_rss_mib']}" for phase in PHASES]
        malloc = f"{last['malloc_in_use_mib']} / {last['malloc_free_mib']}" if "malloc_in_use_mib" in last else "-"
        lines.append(f"| {run['backend']} | {run['preset']} | {run['batch_size']} | " + " | ".join(cells)
                     + f" | {last['rss_file_mib']} / {last['rss_anonymous_mib']} | {malloc} | {', '.join(last['frameworks_imported'])} |")
    return "\n".join(lines)


def main():
    args = parse_args()
    if args.measure:
        preset, batch_size = args.measure[0], int(args.measure[1])
        print(json.dumps(measure(preset, batch_size, args.steps, fast_paths=not args.plain)))
        return
    environment = {name: os.environ[name] for name in RECORDED_ENVIRONMENT if name in os.environ}
    results = {"python": args.python, "environment": environment, "runs": []}
    for preset in args.presets:
        for batch_size in args.batch_sizes:
            run = run_measured_process(args, preset, batch_size)
            peak = run["phases"]["last_step"]["peak_rss_mib"]
            allocator = run.get("tensorflow_allocator_peak_mib")
            allocator = "" if allocator is None else f", tensorflow allocator peak {allocator} MiB"
            print(f"{run['backend']} {preset} batch {batch_size}{'' if run['fast_paths'] else ', plain'}: "
                  f"peak RSS {peak} MiB{allocator}, {run['minor_page_faults_per_step']} page faults and "
                  f"{run['system_s_per_step']} s system time per step", file=sys.stderr, flush=True)
            results["runs"].append(run)
    print(json.dumps(results, indent=2))
    print(table(results["runs"]))
    if args.output:
        os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
        with open(args.output, "w") as file:
            json.dump(results, file, indent=2)


if __name__ == "__main__":
    main()
