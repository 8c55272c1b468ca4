"""The cost of one step of another objective (MeanFlow, EDM diffusion, ECT) against the paper's step.

The models wrap the same UNet (MeanFlow's with its interval embedding, two small dense layers
more) and train on the same batches through `fit`; rounds alternate between them, so that the
machine's drift falls on all, and each round's first steps (tracing, compiling) are left out.
The MeanFlow step is a forward and a JVP through the network plus the backward of the forward;
with class labels, guidance adds one or two forwards without gradient (kappa > 0: two). EDM's
step is one forward and its backward; ECT's, as the paper's, two forwards (one without gradient)
and one backward.

    KERAS_BACKEND=jax python bench/objective_step.py                  # the digits UNet and the tiny preset
    KERAS_BACKEND=torch python bench/objective_step.py --presets tiny --batch-size 16 --rounds 5
    KERAS_BACKEND=tensorflow python bench/objective_step.py --objectives edm ect --output bench/results/objective_step_ect_tensorflow.json

Writes bench/results/objective_step_<backend>.json and prints the median seconds per step of each
objective and their ratios to the paper's (`ratio`: the first objective's).
"""

import argparse
import json
import os
import statistics
import time

import keras
import numpy as np

from harness import StepTimer
from harness import network_and_data_shape
from keras_lct.models import ConsistencyModel
from keras_lct.models import UNet
from keras_lct import objectives as lct_objectives
from keras_lct.optimizers import RAdam

NUM_CLASSES = 10


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--presets", nargs="+", default=["digits", "tiny"], help="UNets: 'digits' or UNet presets")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=12, help="timed steps per round and model (default: %(default)s)")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds (default: %(default)s)")
    parser.add_argument("--objectives", nargs="+", default=["meanflow"], choices=["meanflow", "edm", "ect"],
                        help="objectives timed against the paper's (default: %(default)s)")
    parser.add_argument("--output", default=None, help="JSON path (default: bench/results/objective_step_<backend>.json)")
    return parser.parse_args()


def model_of(preset, objective, conditional):
    network, data_shape = network_and_data_shape(preset)
    config = dict(network.get_config(), interval_embedding=isinstance(objective, lct_objectives.MeanFlow),
                  num_classes=NUM_CLASSES if conditional else 0, label_dropout=0.1 if conditional else 0.0)
    model = ConsistencyModel(UNet.from_config(config), objective=objective)
    model.build((None,) + data_shape)
    model.compile(optimizer=RAdam(1e-4))
    return model, data_shape


def measure(preset, conditional, args):
    objectives = {"paper": None}
    for name in args.objectives:
        objectives[name] = lct_objectives.MeanFlow(kappa=0.5 if conditional else 0.0) if name == "meanflow" else name
    models = {name: model_of(preset, objective, conditional) for name, objective in objectives.items()}
    data_shape = models["paper"][1]
    rng = np.random.default_rng(0)
    count = args.batch_size * (args.steps + 2)
    x = rng.standard_normal((count,) + data_shape).astype("float32")
    labels = rng.integers(0, NUM_CLASSES, count).astype("int32") if conditional else None
    seconds = {name: [] for name in models}
    for _ in range(args.rounds):
        for name, (model, _) in models.items():
            timer = StepTimer()
            model.fit(x, labels, batch_size=args.batch_size, epochs=1, verbose=0, shuffle=False, callbacks=[timer])
            seconds[name] += timer.durations[2:]  # the first steps trace and compile
    medians = {name: statistics.median(values) for name, values in seconds.items()}
    ratios = {name: medians[name] / medians["paper"] for name in args.objectives}
    return {"preset": preset, "conditional": conditional, "batch_size": args.batch_size,
            "median_seconds": medians, "ratio": ratios[args.objectives[0]], "ratios": ratios,
            "steps_timed": {name: len(values) for name, values in seconds.items()}}


def main():
    args = parse_args()
    backend = keras.backend.backend()
    results = []
    for preset in args.presets:
        for conditional in (False, True):
            result = measure(preset, conditional, args)
            results.append(result)
            others = ", ".join(f"{name} {1000 * result['median_seconds'][name]:.1f} ms (ratio {ratio:.2f})"
                               for name, ratio in result["ratios"].items())
            print(f"{backend} {preset} {'conditional (guidance, kappa 0.5)' if conditional else 'unconditional'} "
                  f"batch {args.batch_size}: paper {1000 * result['median_seconds']['paper']:.1f} ms, {others}",
                  flush=True)
    output = args.output or os.path.join(os.path.dirname(__file__), "results", f"objective_step_{backend}.json")
    with open(output, "w") as file:
        json.dump({"backend": backend, "date": time.strftime("%Y-%m-%d"), "results": results}, file, indent=1)
    print(f"wrote {output}")


if __name__ == "__main__":
    main()
