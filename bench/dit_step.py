"""Training-step speed of ConsistencyModel around keras-lct's DiT against the authors' DiT step, on CPU.

Ours: `ConsistencyModel(DiT(...))` with the paper's settings (Cauchy, diffusion loss on the lowest
quarter of the grid with weight 5, EMA 0.99993, RAdam 1e-4 with weight decay 1e-4), trained by
`model.fit` over `keras_lct.data.NoisePairedDataset` batches (OT on), timed from one batch's end to
the next (the noise, the OT pairing, the step, the callbacks). Theirs: one iteration of the loop
body of `train_cm_latent.py` (github quandao10/LCT, revision 63e5adf of their `ssl_ot` history,
the last one whose DiT builds unmodified): noise, the exact OT plan, `consistency_losses` (Cauchy
+ diffusion loss through their gradient normalization), backward, gradient clipping at their
script's 100, `torch.optim.RAdam`, their EMA copies (all 7 of the script, or 1 as ours) and the
target copy. Both sides: the same DiT (depth, width, heads, patch; unconditional unless
`--conditional`), the same number of trainable parameters (checked), the same batch, fp32, the same
thread count, the mid-curriculum point N = 81 with eq. 11's c.

The authors' code is AGPL and is not part of keras-lct: it is extracted from a local git mirror
into a temporary directory at run time (with import-only stubs for modules their package imports
but this step never runs) and deleted after. It needs timm and einops, which keras-lct does not
depend on: install them into a scratch folder (not the project's environment) and pass it with
`--scratch`:

    pip install --no-deps --target /tmp/lct-scratch timm einops
    python bench/dit_step.py --mirror <git mirror of quandao10/LCT> --scratch /tmp/lct-scratch \\
        --rounds 2 --output bench/results/dit_step_cpu.json

Every measurement runs in its own subprocess, interleaved per round (authors, jax, torch,
tensorflow). `--implementations` and `--round` run a part (e.g. one backend) and merge its rows
into an existing `--output`, so that a long comparison can be run in short pieces; the markdown
table beside the JSON is rewritten from all rows each time. `--profile` adds where the time goes
in a torch step, on both sides.
"""

import argparse
import ast
import datetime
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
REVISION = "63e5adf"
BACKENDS = ("jax", "torch", "tensorflow")
IMPLEMENTATIONS = ("authors",) + BACKENDS
# The mid-curriculum point of bench/harness.py: step 35,000 of 70,000, N = 81, eq. 11's c.
TOTAL_STEPS, MID_STEP = 70000, 35000
# The authors' script (scripts/train_lct_dit.sh) passes --max-grad-norm 100 and keeps the default --diff-lamb 5.
MAX_GRAD_NORM, DIFFUSION_WEIGHT = 100.0, 5.0
# Labels of the conditional configuration: their DiT's LabelEmbedder with class_dropout_prob 0.1, ours alike.
CONDITIONAL_CLASSES, LABEL_DROPOUT = 10, 0.1

# Import-only stubs: modules the authors' `models` package (or timm) imports at module level but
# this step never calls: LPIPS, MPI, blob storage, fairscale's parallel layers, torchvision.
_ANY_NAME = (
    "class _Unused:\n"
    "    def __init__(self, *args, **kwargs):\n"
    "        raise RuntimeError('an import-only stub of dit_step.py was called')\n"
    "def __getattr__(name):\n"
    "    if name.startswith('__'):\n"
    "        raise AttributeError(name)\n"
    "    return type(name, (_Unused,), {})\n"
)
STUBS = {
    "blobfile/__init__.py": "",
    "mpi4py/__init__.py": "MPI = None\n",
    "piq/__init__.py": "LPIPS = None\n",
    "robust_loss_pytorch/__init__.py": "",
    "elatentlpips/__init__.py": "ELatentLPIPS = None\n",
    "fairscale/__init__.py": "",
    "fairscale/nn/__init__.py": "",
    "fairscale/nn/model_parallel/__init__.py": "",
    "fairscale/nn/model_parallel/initialize.py": "",
    "fairscale/nn/model_parallel/layers.py": "ColumnParallelLinear = ParallelEmbedding = RowParallelLinear = None\n",
    "torchvision/__init__.py": "__version__ = '0.0.0+stub'\n",
    "torchvision/transforms/__init__.py": _ANY_NAME,
    "torchvision/transforms/functional.py": (
        "import enum\n"
        "class InterpolationMode(enum.Enum):\n"
        "    NEAREST = 'nearest'\n    NEAREST_EXACT = 'nearest-exact'\n    BILINEAR = 'bilinear'\n"
        "    BICUBIC = 'bicubic'\n    BOX = 'box'\n    HAMMING = 'hamming'\n    LANCZOS = 'lanczos'\n" + _ANY_NAME
    ),
    "torchvision/datasets/__init__.py": _ANY_NAME,
    "torchvision/ops/__init__.py": "",
    "torchvision/ops/misc.py": _ANY_NAME,
}


def peak_rss_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


def summarize(durations, batch):
    median = statistics.median(durations)
    return {"median_s": median, "min_s": min(durations), "max_s": max(durations), "samples_per_s": batch / median,
            "steps": len(durations), "all_s": durations}


def dit_config(opts):
    """The DiT both sides build (32x32x4 latents, MLP ratio 4)."""
    return dict(input_size=32, in_channels=4, depth=opts.depth, hidden_size=opts.hidden_size,
                num_heads=opts.num_heads, patch_size=opts.patch_size)


def latents_and_labels(count, seed=1):
    """`count` normalized 32x32x4 "latents" (channels_last) and class labels, the same on both sides."""
    import numpy as np

    rng = np.random.default_rng(seed)
    latents = (0.5 * rng.standard_normal((count, 32, 32, 4))).astype("float32")
    return latents, rng.integers(0, CONDITIONAL_CLASSES, count)


# =============================================================================== the authors' step
def extract_reference(mirror, dest):
    """`git archive` the authors' code at REVISION into dest/ref; the stubs into dest/stubs."""
    if not mirror or not os.path.isdir(mirror):
        raise SystemExit(f"--mirror {mirror!r} is not a directory: pass a git mirror of github.com/quandao10/LCT.")
    ref, stubs = os.path.join(dest, "ref"), os.path.join(dest, "stubs")
    os.makedirs(ref)
    archive = subprocess.run(["git", "-C", mirror, "archive", REVISION, "models", "torch_utils", "dnnlib",
                              "train_cm_latent.py"], check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", ref], input=archive, check=True)
    for relative, text in STUBS.items():
        path = os.path.join(stubs, relative)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w") as file:
            file.write(text)
    commit = subprocess.run(["git", "-C", mirror, "rev-parse", REVISION], check=True, capture_output=True, text=True)
    return ref, stubs, commit.stdout.strip()


class _OneProcess:
    """`torch.distributed` as one process sees it: an average over one process is its own value."""

    class ReduceOp:
        AVG = "avg"

    @staticmethod
    def all_reduce(tensor, op=None):
        return None


def loop_helpers(script):
    """From train_cm_latent.py, read with ast and not imported: `update_ema` and `EMA_RATES` (module
    level), and the gradient normalization `gradnorm` that `main` defines and hands to
    `consistency_losses` (its all-reduce over one process)."""
    import collections

    import torch

    with open(script) as file:
        tree = ast.parse(file.read())
    main = next(node for node in tree.body if isinstance(node, ast.FunctionDef) and node.name == "main")
    wanted = {"update_ema", "EMA_RATES", "GradNormFunction", "avg_scalar_over_nodes", "gradnorm"}

    def names(node):
        if isinstance(node, ast.Assign):
            return {getattr(target, "id", None) for target in node.targets}
        return {getattr(node, "name", None)}

    nodes = [node for node in tree.body + main.body if names(node) & wanted]
    found = set().union(*(names(node) for node in nodes)) & wanted
    if found != wanted:
        raise SystemExit(f"train_cm_latent.py at {REVISION}: {sorted(wanted - found)} not found")
    namespace = {"torch": torch, "OrderedDict": collections.OrderedDict, "dist": _OneProcess}
    exec(compile(ast.Module(body=nodes, type_ignores=[]), script, "exec"), namespace)
    return namespace["update_ema"], namespace["EMA_RATES"], namespace["gradnorm"]


def authors_args(opts):
    """train_cm_latent.py's flags as scripts/train_lct_dit.sh sets them, the network sized as ours."""
    return argparse.Namespace(
        model_type="DiT-bench", image_size=32, num_in_channels=4, learn_sigma=False,
        num_classes=CONDITIONAL_CLASSES if opts.conditional else 0,
        # Unconditional: no label table (theirs would hold one learned null-class row; ours has none).
        uncond_network=not opts.conditional,
        use_repa=False, z_dims=768, projector_dim=2048, encoder_depth=4, use_sigmoid_attention=False,
        sigma_min=0.002, sigma_max=80.0, weight_schedule="ict", loss_norm="cauchy", noise_sampler="ict",
        statistic_preconditioning=False, diff_lamb=DIFFUSION_WEIGHT, repa_lamb=0.5,
        target_ema_mode="adaptive", start_ema=0.95, scale_mode="progressive", start_scales=10, end_scales=640,
        ict=True, use_diffloss=True, ot_hard=True, c_by_loss_std=True, c_by_nfe_sigma=False, custom_constant_c=0.0,
        max_grad_norm=MAX_GRAD_NORM, l2_reweight=False, lr=1e-4,
    )


class ReferenceTrainer:
    """The authors' DiT training loop body (train_cm_latent.py at REVISION), on CPU, one process, no DDP."""

    def __init__(self, opts, ema_copies, seed=0):
        import contextlib
        import copy
        import functools
        import io
        import math

        import torch

        from models import network_dit
        from models.optimal_transport import OTPlanSampler
        from models.script_util import create_ema_and_scales_fn
        from models.script_util import create_model_and_diffusion

        self.torch, self.math = torch, math
        torch.manual_seed(seed)
        self.args = args = authors_args(opts)
        config = dit_config(opts)
        network_dit.DiT_models[args.model_type] = functools.partial(
            network_dit.DiT, depth=config["depth"], hidden_size=config["hidden_size"],
            patch_size=config["patch_size"], num_heads=config["num_heads"])
        self.update_ema, script_rates, self.gradnorm = loop_helpers(os.path.join(opts.ref, "train_cm_latent.py"))
        # "script": all of EMA_RATES, as their loop updates; 1: the one decay ours keeps, 0.99993.
        self.ema_rates = dict(script_rates) if ema_copies == "script" else {"ema_0.99993": 0.99993}
        with contextlib.redirect_stdout(io.StringIO()):
            model, diffusion = create_model_and_diffusion(args)
        diffusion.c = torch.tensor(0.00054 * math.sqrt(args.num_in_channels * args.image_size**2))
        self.emas = {name: copy.deepcopy(model) for name in self.ema_rates}
        for ema in self.emas.values():
            self.update_ema(ema, model, decay=0)
            ema.requires_grad_(False)
            ema.eval()
        self.target_model = copy.deepcopy(model)
        self.target_model.requires_grad_(False)
        self.target_model.train()
        self.opt = torch.optim.RAdam(model.parameters(), lr=args.lr, weight_decay=1e-4)
        model.train()
        self.model, self.diffusion = model, diffusion
        self.ema_scale_fn = create_ema_and_scales_fn(
            target_ema_mode=args.target_ema_mode, start_ema=args.start_ema, scale_mode=args.scale_mode,
            start_scales=args.start_scales, end_scales=args.end_scales, total_steps=TOTAL_STEPS, ict=args.ict)
        self.ot_sampler = OTPlanSampler(method="exact", normalize_cost=True)
        self.lamb_dict = {"diff_lamb": args.diff_lamb, "repa_lamb": args.repa_lamb}
        self.train_steps = MID_STEP
        self.nan_count = 0
        self.parameters = sum(p.numel() for p in model.parameters() if p.requires_grad)
        self.fused_attention = bool(getattr(model.blocks[0].attn, "fused_attn", False))

    def step(self, x, y=None, ot=True, timers=None):
        """One loop iteration on batch x (NCHW) with labels y (or None); `timers` gets per-part seconds."""
        torch, args, diffusion, clock = self.torch, self.args, self.diffusion, time.perf_counter
        t0 = clock()
        n = torch.randn_like(x)
        if ot:
            x, n, y, _ = self.ot_sampler.sample_plan_with_labels(x0=x, x1=n, y0=y, y1=None, replace=False)
        ema_rate, num_scales = self.ema_scale_fn(self.train_steps)
        diffusion.update_cur_precond(num_scales=num_scales)
        if args.c_by_loss_std and num_scales > args.start_scales + 1:
            diffusion.c = torch.tensor(self.math.exp(-1.15 * self.math.log(float(num_scales - 1)) - 0.85))
        t1 = clock()
        losses = diffusion.consistency_losses(
            self.model, x, num_scales, target_model=self.target_model, model_kwargs=dict(y=y, is_train=False),
            noise=n, adaptive=None, model_umt=None, ssl_feat=None, lamb_dict=self.lamb_dict, gradnorm=self.gradnorm)
        cm_loss, diff_loss = losses["loss"].mean(), losses["diff_loss"].mean()
        loss = cm_loss + diff_loss  # their diff_lamb weights the diffusion gradient inside gradnorm
        t2 = clock()
        if not torch.isnan(loss):
            self.opt.zero_grad()
            loss.backward()
            t3 = clock()
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), args.max_grad_norm)
            self.opt.step()
            loss.item(), cm_loss.item(), diff_loss.item()  # the loop's running sums
        else:  # no sample drew a low noise level: their loop skips the update
            self.nan_count += 1
            t3 = clock()
        t4 = clock()
        for name, rate in self.ema_rates.items():
            self.update_ema(self.emas[name], self.model, rate)
        t5 = clock()
        self.update_ema(self.target_model, self.model, 0)  # --ict
        t6 = clock()
        self.train_steps += 1
        self.num_scales = num_scales
        if timers is not None:
            for key, value in (("noise + OT + schedule", t1 - t0), ("consistency_losses (2 forwards + loss)", t2 - t1),
                               ("backward", t3 - t2), ("clip + RAdam", t4 - t3),
                               (f"EMA ({len(self.ema_rates)} copies)", t5 - t4), ("target copy", t6 - t5)):
                timers.setdefault(key, []).append(value)


def reference_batches(opts, count):
    import torch

    latents, labels = latents_and_labels(count * opts.batch)
    x = torch.from_numpy(latents.transpose(0, 3, 1, 2).copy()).reshape(count, opts.batch, 4, 32, 32)
    y = torch.from_numpy(labels).reshape(count, opts.batch) if opts.conditional else [None] * count
    return x, y


def worker_authors(opts):
    sys.path[:0] = [opts.ref, opts.stubs, opts.scratch]
    import torch

    torch.set_num_threads(opts.threads)
    out = {"torch": torch.__version__, "threads": torch.get_num_threads(), "runs": []}
    for ema_copies in ("script", "single"):
        trainer = ReferenceTrainer(opts, ema_copies)
        x, y = reference_batches(opts, opts.warmup + opts.steps)
        durations, timers = [], {}
        for index in range(opts.warmup + opts.steps):
            start = time.perf_counter()
            trainer.step(x[index], y[index], ot=True, timers=timers if index >= opts.warmup else None)
            durations.append(time.perf_counter() - start)
        run = summarize(durations[opts.warmup:], opts.batch)
        run.update(variant=f"{len(trainer.ema_rates)} EMA", ema_copies=len(trainer.ema_rates),
                   parameters=trainer.parameters, num_scales=trainer.num_scales, c=float(trainer.diffusion.c),
                   nan_skipped_steps=trainer.nan_count, first_step_s=durations[0], peak_rss_mb=peak_rss_mb(),
                   fused_attention=trainer.fused_attention,
                   segments_median_s={key: statistics.median(value) for key, value in timers.items()})
        out["runs"].append(run)
        del trainer
    return out


# =============================================================================== keras-lct's step
def set_threads(threads):
    """The same intra-op thread count as the authors' torch (jax: XLA's pool, one thread per core)."""
    backend = os.environ.get("KERAS_BACKEND")
    if backend == "torch":
        import torch

        torch.set_num_threads(threads)
        return torch.get_num_threads()
    if backend == "tensorflow":
        import tensorflow as tf

        tf.config.threading.set_intra_op_parallelism_threads(threads)
        return threads
    return os.cpu_count()


def keras_model_and_batches(opts, dataset_class=None):
    """The ConsistencyModel around our DiT at mid-curriculum, and its batches (a `NoisePairedDataset`, OT on)."""
    import keras

    from keras_lct.data import NoisePairedDataset
    from keras_lct.models import DiT
    from keras_lct.models import ConsistencyModel
    from keras_lct.optimizers import RAdam

    keras.utils.set_random_seed(0)
    classes = dict(num_classes=CONDITIONAL_CLASSES, label_dropout=LABEL_DROPOUT) if opts.conditional else {}
    network = DiT(**dit_config(opts), **classes)
    model = ConsistencyModel(network)  # Cauchy, r = 0.25, diffusion weight 5, EMA (0.99993,)
    model.build((None, 32, 32, 4))
    model.compile(optimizer=RAdam(1e-4, weight_decay=1e-4))
    model.training_step.assign(MID_STEP)
    latents, labels = latents_and_labels((opts.warmup + opts.steps) * opts.batch)
    batches = (dataset_class or NoisePairedDataset)(latents, batch_size=opts.batch, ot=True, seed=0,
                                                    labels=labels if opts.conditional else None)
    return model, batches


def curriculum_callbacks():
    from keras_lct.callbacks import AdaptiveC
    from keras_lct.callbacks import ExpCurriculum

    return [ExpCurriculum(TOTAL_STEPS), AdaptiveC()]


def worker_keras(opts):
    threads = set_threads(opts.threads)  # before tensorflow's runtime starts

    import keras
    import numpy as np

    class CycleTimer(keras.callbacks.Callback):
        """`ends`: each batch's end (and the epoch's start); `begins`: each batch's start."""

        def on_epoch_begin(self, epoch, logs=None):
            self.ends, self.begins = [time.perf_counter()], []

        def on_train_batch_begin(self, batch, logs=None):
            self.begins.append(time.perf_counter())

        def on_train_batch_end(self, batch, logs=None):
            self.ends.append(time.perf_counter())
            self.logs = dict(logs or {})

    model, batches = keras_model_and_batches(opts)
    timer = CycleTimer()
    model.fit(batches, epochs=1, verbose=0, callbacks=curriculum_callbacks() + [timer])
    cycles = [end - previous for previous, end in zip(timer.ends[:-1], timer.ends[1:])]
    train_function = [end - begin for begin, end in zip(timer.begins, timer.ends[1:])]
    run = summarize(cycles[opts.warmup:], opts.batch)
    run.update(variant="fit", ema_copies=len(model.ema_decays),
               parameters=int(sum(np.prod(v.shape) for v in model.network.trainable_variables)),
               num_scales=float(timer.logs["num_scales"]), c=float(timer.logs["c"]), first_step_s=cycles[0],
               train_function_median_s=statistics.median(train_function[opts.warmup:]), peak_rss_mb=peak_rss_mb())
    return {"keras": keras.__version__, "threads": threads, "jit_compile": str(model.jit_compile), "runs": [run]}


# =============================================================================== profile (torch)
def profiled(run, steps):
    """`run()` (`steps` training steps) under torch's profiler, then under cProfile: the top ops by
    self time, the wall and the ops' summed self time per step (the rest is Python and framework
    work between ops), and the top Python functions by own time."""
    import cProfile
    import io
    import pstats

    import torch

    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as profiler:
        start = time.perf_counter()
        run()
        wall = time.perf_counter() - start
    averages = profiler.key_averages()
    python_profile = cProfile.Profile()
    python_profile.runcall(run)
    text = io.StringIO()
    pstats.Stats(python_profile, stream=text).sort_stats("tottime").print_stats(15)
    return {"torch_profiler": averages.table(sort_by="self_cpu_time_total", row_limit=15),
            "profiled_wall_s_per_step": wall / steps,
            "ops_self_cpu_s_per_step": sum(event.self_cpu_time_total for event in averages) / 1e6 / steps,
            "cprofile_tottime": text.getvalue()}


def profile_authors(opts):
    sys.path[:0] = [opts.ref, opts.stubs, opts.scratch]
    import torch

    torch.set_num_threads(opts.threads)
    trainer = ReferenceTrainer(opts, "single")
    x, y = reference_batches(opts, 3 * (opts.warmup + opts.steps))
    position = iter(range(len(x)))
    diffusion, denoise, timers, active = trainer.diffusion, trainer.diffusion.denoise, {}, {"on": False}

    def timed_denoise(model, *args, **kwargs):
        start = time.perf_counter()
        result = denoise(model, *args, **kwargs)
        if active["on"]:
            key = "target forward (no_grad)" if model is trainer.target_model else "student forward"
            timers.setdefault(key, []).append(time.perf_counter() - start)
        return result

    diffusion.denoise = timed_denoise

    def step():
        index = next(position)
        trainer.step(x[index], y[index], ot=True, timers=timers if active["on"] else None)

    for index in range(opts.warmup + opts.steps):
        active["on"] = index >= opts.warmup
        start = time.perf_counter()
        step()
        if active["on"]:
            timers.setdefault("step (total)", []).append(time.perf_counter() - start)
    active["on"] = False
    steps = opts.warmup + opts.steps

    def run():
        for _ in range(steps):
            step()

    return dict(profiled(run, steps), components_median_s={key: statistics.median(value) for key, value in
                                                            timers.items()}, profiled=f"{steps} loop iterations")


def profile_keras(opts):
    import keras
    import torch

    from keras_lct.data import NoisePairedDataset

    if keras.backend.backend() != "torch":
        raise SystemExit("--profile profiles the torch backend")
    set_threads(opts.threads)
    timers, active = {}, {"on": False}

    def timed(name, function):
        def wrapper(*args, **kwargs):
            start = time.perf_counter()
            result = function(*args, **kwargs)
            if active["on"]:
                timers.setdefault(name, []).append(time.perf_counter() - start)
            return result

        return wrapper

    class TimedBatches(NoisePairedDataset):
        def __getitem__(self, index):
            return timed("dataset batch (noise + OT)", super().__getitem__)(index)

    model, batches = keras_model_and_batches(opts, TimedBatches)
    denoise_with, calls = model.denoise_with, {"n": 0}

    def timed_denoise(*args, **kwargs):  # the student first, then the stop-gradient target
        start = time.perf_counter()
        result = denoise_with(*args, **kwargs)
        if active["on"]:
            key = "student forward" if calls["n"] % 2 == 0 else "target forward (no gradient)"
            timers.setdefault(key, []).append(time.perf_counter() - start)
            calls["n"] += 1
        return result

    model.denoise_with = timed_denoise
    model.ema.update = timed("EMA update (1 copy)", model.ema.update)
    model.compute_loss = timed("compute_loss (2 forwards + loss)", model.compute_loss)
    model.optimizer.apply = timed("RAdam apply", model.optimizer.apply)
    model.train_step = timed("train_step (total)", model.train_step)
    torch.Tensor.backward = timed("backward", torch.Tensor.backward)

    class Switch(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            active["on"] = batch + 1 >= opts.warmup

    model.fit(batches, epochs=1, verbose=0, callbacks=curriculum_callbacks() + [Switch()])
    active["on"] = False
    components = {key: statistics.median(value) for key, value in timers.items()}
    # Warm fits over the same batches (fit's own start and end included).
    profile = profiled(lambda: model.fit(batches, epochs=1, verbose=0, callbacks=curriculum_callbacks()),
                       opts.warmup + opts.steps)
    return dict(profile, components_median_s=components, profiled=f"one fit of {opts.warmup + opts.steps} steps")


# =============================================================================== driver
def run_worker(opts, kind, implementation, scratch, ref, stubs, log):
    result = os.path.join(scratch, f"{kind}-{implementation}-{time.time_ns()}.json")
    command = [opts.python, os.path.abspath(__file__), "--worker", kind, "--result", result, "--ref", ref,
               "--stubs", stubs, "--scratch", opts.scratch, "--batch", str(opts.batch), "--warmup",
               str(opts.warmup), "--steps", str(opts.steps), "--threads", str(opts.threads), "--depth",
               str(opts.depth), "--hidden-size", str(opts.hidden_size), "--num-heads", str(opts.num_heads),
               "--patch-size", str(opts.patch_size)] + (["--conditional"] if opts.conditional else [])
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [ROOT, os.environ.get("PYTHONPATH")])))
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if implementation == "authors":
        env.pop("KERAS_BACKEND", None)
        # POT would otherwise import jax and tensorflow (there for keras-lct, not in the authors'
        # environment) at `import ot`.
        for framework in ("JAX", "TENSORFLOW", "CUPY"):
            env.setdefault(f"POT_BACKEND_DISABLE_{framework}", "1")
    else:
        env["KERAS_BACKEND"] = implementation
    start = time.time()
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    with open(log, "a") as file:
        file.write(f"\n===== {kind} {implementation} rc={done.returncode} ({time.time() - start:.0f}s)\n"
                   f"{done.stdout[-4000:]}\n--- stderr\n{done.stderr[-6000:]}")
    if done.returncode != 0 or not os.path.exists(result):
        print(f"  FAILED {kind} {implementation} (rc={done.returncode}); see {log}\n{done.stderr[-2000:]}", flush=True)
        return None
    with open(result) as file:
        payload = json.load(file)
    payload["process_wall_s"] = time.time() - start
    return payload


def ratios(rows):
    """Each keras-lct row's samples/s over the authors' (1 EMA and as their script), same round and configuration."""
    for row in rows:
        if row["implementation"] == "authors":
            continue
        for variant, key in (("1 EMA", "ratio_vs_authors_1ema"), ("7 EMA", "ratio_vs_authors_script")):
            authors = [other for other in rows if other["implementation"] == "authors"
                       and other["round"] == row["round"] and other["config"] == row["config"]
                       and other["variant"] == variant]
            row[key] = row["samples_per_s"] / authors[0]["samples_per_s"] if authors else None
    return rows


def summary(rows):
    """Per configuration and implementation: the median over rounds of s/step and of each round's ratio."""
    lines = ["Summary: medians over the rounds (each ratio taken within its round); the per-round rows follow.", "",
             "| config | implementation | rounds | median s/step | samples/s | ratio vs authors (1 EMA) "
             "| per-round range | ratio vs authors (7 EMA) |", "|" + "---|" * 8]
    for config in sorted({row["config"] for row in rows}, key=lambda name: (not name.endswith("unconditional"), name)):
        for implementation in IMPLEMENTATIONS:
            for variant in sorted({row["variant"] for row in rows if row["implementation"] == implementation}):
                chosen = [row for row in rows if row["config"] == config and row["implementation"] == implementation
                          and row["variant"] == variant]
                if not chosen:
                    continue
                step = statistics.median(row["median_s"] for row in chosen)
                ratio_1, ratio_7 = ([row[key] for row in chosen if row.get(key) is not None]
                                    for key in ("ratio_vs_authors_1ema", "ratio_vs_authors_script"))
                name = implementation if implementation == "authors" else f"keras-lct {implementation}"
                lines.append(
                    f"| {config} | {name}, {variant} | {len(chosen)} | {step:.3f} | {chosen[0]['batch'] / step:.1f} "
                    f"| {fmt(statistics.median(ratio_1) if ratio_1 else None, '.2f')} "
                    f"| {f'{min(ratio_1):.2f}-{max(ratio_1):.2f}' if ratio_1 else '-'} "
                    f"| {fmt(statistics.median(ratio_7) if ratio_7 else None, '.2f')} |")
    return lines


def fmt(value, spec):
    return "-" if value is None else format(value, spec)


def markdown(document):
    meta, rows = document["meta"], ratios(document["rows"])
    lines = [f"# DiT training step: keras-lct vs the authors' DiT step ({meta['date']})", "",
             f"Machine: {meta['machine']}. Versions: {meta['versions']}. Authors' code: quandao10/LCT at "
             f"{meta['ref_commit']}. Threads: {meta['threads']}.", "",
             "Median s/step over the timed steps after the warm-up steps, one subprocess per cell, interleaved per "
             "round (authors, jax, torch, tensorflow). keras-lct: `model.fit` over `NoisePairedDataset` (OT on), "
             "batch end to batch end. Authors: one iteration of train_cm_latent.py's loop body (noise, OT, "
             "consistency_losses, backward, clip, RAdam, EMA copies, target copy). Ratio: keras-lct samples/s over "
             "the authors' in the same round and configuration.", "",
             "| round | config | implementation | variant | parameters | median s/step | min-max s | samples/s "
             "| ratio vs authors (1 EMA) | ratio vs authors (7 EMA) | first step s | peak RSS MB |",
             "|" + "---|" * 12]
    order = {name: index for index, name in enumerate(IMPLEMENTATIONS)}
    lines[-2:-2] = summary(rows) + [""]
    for row in sorted(rows, key=lambda r: (not r["config"].endswith("unconditional"), r["round"], r["config"],
                                            order[r["implementation"]], r["variant"])):
        lines.append(
            f"| {row['round']} | {row['config']} | {row['implementation']} | {row['variant']} | {row['parameters']:,} "
            f"| {row['median_s']:.3f} | {row['min_s']:.3f}-{row['max_s']:.3f} | {row['samples_per_s']:.1f} "
            f"| {fmt(row.get('ratio_vs_authors_1ema'), '.2f')} | {fmt(row.get('ratio_vs_authors_script'), '.2f')} "
            f"| {row['first_step_s']:.1f} | {row['peak_rss_mb']:.0f} |")
    lines += ["", "keras-lct's train function alone (batch begin to end, without fetching the batch), median s:", ""]
    for row in rows:
        if row["implementation"] != "authors":
            lines.append(f"- round {row['round']} {row['config']} {row['implementation']} "
                         f"(jit_compile {row['jit_compile']}): {row['train_function_median_s']:.3f}")
    lines += ["", "Authors' loop, median s per part:", ""]
    for row in rows:
        if row["implementation"] == "authors":
            parts = ", ".join(f"{key} {value:.4f}" for key, value in row["segments_median_s"].items())
            lines.append(f"- round {row['round']} {row['config']} {row['variant']} (N = {row['num_scales']}, "
                         f"c = {row['c']:.4f}, NaN-skipped steps {row['nan_skipped_steps']}): {parts}")
    for name, report in document.get("profile", {}).items():
        lines += ["", f"## Profile, torch: {name}", ""]
        lines += [f"- {key}: {value:.4f} s" for key, value in report["components_median_s"].items()]
        lines += ["", f"torch.profiler over {report['profiled']}: {report['profiled_wall_s_per_step']:.3f} s wall per "
                  f"step, of which {report['ops_self_cpu_s_per_step']:.3f} s in torch ops (their summed self time)",
                  "", "```", report["torch_profiler"].rstrip(), "```", "", "cProfile, the same steps again:", "",
                  "```", report["cprofile_tottime"].strip(), "```"]
    return "\n".join(lines) + "\n"


def versions(python):
    code = ("import keras, torch, jax, tensorflow as tf, ot, numpy; "
            "print(f'keras {keras.__version__}, torch {torch.__version__}, jax {jax.__version__}, '"
            "f'tensorflow {tf.__version__}, POT {ot.__version__}, numpy {numpy.__version__}')")
    done = subprocess.run([python, "-c", code], capture_output=True, text=True,
                          env=dict(os.environ, KERAS_BACKEND="numpy", TF_CPP_MIN_LOG_LEVEL="3"))
    return done.stdout.strip().splitlines()[-1] if done.returncode == 0 else "unknown"


def timm_version(scratch):
    for name in os.listdir(scratch) if os.path.isdir(scratch) else ():
        if name.startswith("timm-") and name.endswith(".dist-info"):
            return name[len("timm-"):-len(".dist-info")]
    raise SystemExit(f"No timm in --scratch {scratch!r}: pip install --no-deps --target {scratch} timm einops")


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mirror", default=os.environ.get("LCT_MIRROR", ""), help="git mirror of quandao10/LCT")
    parser.add_argument("--scratch", default=os.environ.get("LCT_SCRATCH", "/tmp/lct-scratch"),
                        help="folder with timm and einops (pip install --no-deps --target)")
    parser.add_argument("--python", default=sys.executable, help="interpreter with keras-lct, torch, jax, tensorflow")
    parser.add_argument("--implementations", nargs="+", choices=IMPLEMENTATIONS, default=list(IMPLEMENTATIONS))
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--round", type=int, help="run just this round number (merging into --output)")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--depth", type=int, default=4)
    parser.add_argument("--hidden-size", type=int, default=256)
    parser.add_argument("--num-heads", type=int, default=4)
    parser.add_argument("--patch-size", type=int, default=2)
    parser.add_argument("--conditional", action="store_true",
                        help=f"{CONDITIONAL_CLASSES} classes, label dropout {LABEL_DROPOUT} on both sides")
    parser.add_argument("--profile", action="store_true", help="profile a torch step on both sides (no timing rows)")
    parser.add_argument("--report-only", action="store_true", help="only rewrite the markdown from --output's JSON")
    parser.add_argument("--output", default=os.path.join(HERE, "results", "dit_step_cpu.json"),
                        help="JSON to write or merge into; the markdown goes beside it")
    parser.add_argument("--worker", choices=["keras", "authors", "profile-keras", "profile-authors"],
                        help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    parser.add_argument("--ref", help=argparse.SUPPRESS)
    parser.add_argument("--stubs", help=argparse.SUPPRESS)
    return parser.parse_args()


def config_name(opts):
    return (f"d{opts.depth} h{opts.hidden_size} {opts.num_heads} heads p{opts.patch_size}, batch {opts.batch}, "
            + ("conditional" if opts.conditional else "unconditional"))


def main():
    opts = parse_args()
    if opts.worker:
        worker = {"keras": worker_keras, "authors": worker_authors, "profile-keras": profile_keras,
                  "profile-authors": profile_authors}[opts.worker]
        with open(opts.result, "w") as file:
            json.dump(worker(opts), file)
        return
    document = {"meta": {}, "rows": [], "profile": {}}
    if os.path.exists(opts.output):
        with open(opts.output) as file:
            document = json.load(file)
    if opts.report_only:
        with open(os.path.splitext(opts.output)[0] + ".md", "w") as file:
            file.write(markdown(document))
        return
    timm = timm_version(opts.scratch)
    os.makedirs(os.path.dirname(os.path.abspath(opts.output)), exist_ok=True)
    scratch = tempfile.mkdtemp(prefix="lct-dit-step-")
    log = os.path.splitext(opts.output)[0] + ".log"
    try:
        ref, stubs, commit = extract_reference(opts.mirror, scratch)
        document["meta"] = dict(
            document["meta"], date=datetime.date.today().isoformat(), ref_commit=commit, threads=opts.threads,
            machine=f"{platform.machine()}, {os.cpu_count()} CPUs, {platform.platform()}", timm=timm,
            versions=versions(opts.python) + f", timm {timm} (authors)", warmup=opts.warmup, steps=opts.steps)
        commands = document["meta"].setdefault("commands", [])
        commands.append(" ".join(sys.argv))
        config = config_name(opts)
        if opts.profile:
            for kind, implementation in (("profile-authors", "authors"), ("profile-keras", "torch")):
                print(f"profile {implementation} {config} ...", flush=True)
                payload = run_worker(opts, kind, implementation, scratch, ref, stubs, log)
                if payload:
                    document["profile"][f"{implementation}, {config}"] = payload
        else:
            for round_index in [opts.round] if opts.round else range(1, opts.rounds + 1):
                for implementation in [name for name in IMPLEMENTATIONS if name in opts.implementations]:
                    print(f"round {round_index}: {implementation} {config} ...", flush=True)
                    kind = "authors" if implementation == "authors" else "keras"
                    payload = run_worker(opts, kind, implementation, scratch, ref, stubs, log)
                    if not payload:
                        continue
                    rows = [dict(run, round=round_index, config=config, batch=opts.batch, implementation=implementation,
                                 threads=payload["threads"], jit_compile=payload.get("jit_compile"),
                                 process_wall_s=payload["process_wall_s"]) for run in payload["runs"]]
                    for row in rows:
                        print(f"    {row['variant']:>6s} {row['parameters']:,} parameters: "
                              f"{row['median_s']:.3f} s/step, {row['samples_per_s']:.1f} samples/s", flush=True)
                    keys = {(row["round"], row["config"], row["implementation"], row["variant"]) for row in rows}
                    document["rows"] = [row for row in document["rows"] if (row["round"], row["config"],
                                        row["implementation"], row["variant"]) not in keys] + rows
                    parameters = {row["parameters"] for row in document["rows"] if row["config"] == config}
                    if len(parameters) > 1:
                        print(f"  WARNING: the two sides' parameter counts differ: {sorted(parameters)}", flush=True)
        with open(opts.output, "w") as file:
            json.dump(document, file, indent=1)
        with open(os.path.splitext(opts.output)[0] + ".md", "w") as file:
            file.write(markdown(document))
        print(f"wrote {opts.output} and its .md", flush=True)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
