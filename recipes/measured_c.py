"""The measured robustness scale c against the paper's eq. 11, predicted on Gaussian data.

    KERAS_BACKEND=jax python recipes/measured_c.py --output runs/measured_c
    KERAS_BACKEND=jax python recipes/measured_c.py --dims 4096 --steps-per-stage 20 --output /tmp/c

`AdaptiveC("measured")` sets c = c0 in the curriculum's first stage and then c0 times the ratio of
the current stage's TD spread to the first stage's, where the spread is the geometric mean over
samples of each sample's TD RMS, TD = f(x0 + t z, t) - f(x0 + t2 z, t2). This recipe predicts that
schedule without a network: on Gaussian data x0 ~ N(0, 0.5^2 I) the consistency function is exact,

    f(x_t, t) = x_t sqrt(0.5^2 + sigma_min^2) / sqrt(0.5^2 + t^2),

so the TD values are those of a model that has learned its data. Each step of eq. 10's curriculum
(s0 = 10, s1 = 640: N = 11, 21, ..., 641, --steps-per-stage steps each) draws --batch-size samples
and their grid levels from the lognormal table, as the training step does.

It runs at d = 4096 (the paper's 32x32x4 CelebA-HQ latents, where eq. 11 was fitted) and at the
quickstart's d = 64 (4x4x4 latents), prints per stage the measured c, eq. 11's c and their ratio,
and the log-log slope of the measured c against N - 1 (eq. 11's: -1.18).

Writes <output>/measured_c.png (c against N, log-log) and <output>/measured_c.json (the numbers);
docs/callbacks.md "The measured c" shows and discusses them.

Reference: paper section 4.5, eq. 10 and 11.
"""

import argparse
import os

# Eq. 10 with s0 = 10 and s1 = 640 has log2(640 / 10) + 1 = 7 stages.
CURRICULUM_STAGES = 7


def positive_int(text):
    """argparse type: an integer >= 1."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be an integer >= 1, not {text}")
    return value


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dims", type=positive_int, nargs="+", default=[4096, 64],
                        help="data sizes d to predict the schedule for (default: %(default)s)")
    parser.add_argument("--steps-per-stage", type=positive_int, default=100,
                        help="steps of each curriculum stage, K' of eq. 10 (default: %(default)s)")
    parser.add_argument("--batch-size", type=positive_int, default=128, help="samples per step (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the draws (default: %(default)s)")
    parser.add_argument("--output", default="runs/measured_c", help="folder for the PNG and JSON (default: %(default)s)")
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)

    import keras

    import keras_lct
    from keras_lct import analysis
    from keras_lct.saving import write_json_atomic

    from common import hold_run_folder  # recipes/common.py: what only the recipes share

    hold_run_folder(args.output)  # refused while another live run writes there
    total_steps = CURRICULUM_STAGES * args.steps_per_stage
    print(f"keras-lct {keras_lct.__version__} on {keras.backend.backend()}: {total_steps} steps "
          f"({args.steps_per_stage} a stage) of {args.batch_size} Gaussian samples.")

    # ## The prediction: one curriculum run per data size.
    results = []
    for dim in args.dims:
        result = analysis.measured_c_on_gaussian_data(dim, total_steps, batch_size=args.batch_size, seed=args.seed)
        results.append(result)
        print(f"\nd = {dim} (c0 = {result['c0']:.4g}):")
        print(f"{'N':>5}{'measured c':>13}{'eq. 11 c':>12}{'ratio':>8}{'eq. 11 x sqrt(d/4096)':>23}{'ratio':>8}")
        for stage in result["stages"]:
            print(f"{stage['num_scales']:>5}{stage['measured_c']:>13.4g}{stage['eq11_c']:>12.4g}{stage['ratio']:>8.2f}"
                  f"{stage['eq11_dim_scaled_c']:>23.4g}{stage['measured_c'] / stage['eq11_dim_scaled_c']:>8.2f}")
        if result["slope"] is not None:
            print(f"log-log slope of the measured c against N - 1: {result['slope']:.3f} (eq. 11: -1.18)")

    # ## The outputs: the figure and the numbers.
    png = os.path.join(args.output, "measured_c.png")
    json_path = os.path.join(args.output, "measured_c.json")
    analysis.plot_measured_c(results, png)
    write_json_atomic(json_path, {"backend": keras.backend.backend(), "steps_per_stage": args.steps_per_stage,
                                  "results": results})
    print(f"\nWrote {png} and {json_path}.")


if __name__ == "__main__":
    main()
