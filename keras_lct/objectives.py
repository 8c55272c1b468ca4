"""Training objectives of a `ConsistencyModel`: the paper's consistency training, MeanFlow, EDM, ECT.

An objective is a small callable, as EDM's loss is: given the model and one
training batch, it makes its draws and returns the loss with what it logs.
The model keeps the bookkeeping around it: the step counter, N and c, label
dropout, the TD statistics, and the EMA after the optimizer's update
(`ConsistencyModel.compute_loss`, `train_step`). An objective also says how
the model's call maps a batch (`denoise`) and how the model samples.

| objective | training | sampling |
|---|---|---|
| `ConsistencyTraining` (default) | paper sections 3, 4.2-4.5: the robust distance between f(x_t, t) and the stop-gradient f(x_t2, t2), plus the diffusion loss | `x = f(sigma_max z)`, then re-noise and denoise at each further level |
| `MeanFlow` | Geng et al. 2025: the average velocity u(z, t, r) against u_tgt = v - (t - r) du/dt, du/dt by a Jacobian-vector product | `z_r = z_t - (t - r) u(z_t, t, r)` from t = 1 to 0 in 1 or 2 steps |
| `EDMDiffusion` | Karras et al. 2022: the denoiser D(x0 + sigma n, sigma) against x0, EDM's weighting | EDM's Heun sampler over K levels |
| `ECT` | Geng et al. 2025 (ECT): f(x0 + t e, t) against the stop-gradient f(x0 + r e, r), r -> t in stages, from a diffusion model | as `ConsistencyTraining` |

Pass an instance, or its name, as `ConsistencyModel(objective=...)`.

Reference: `docs/reference.md` "One consistency-training step", "MeanFlow",
"EDM diffusion training" and "ECT"; `docs/objectives.md`.
"""

import collections
import functools
import math

import keras
import numpy as np
from keras import ops

from keras_lct import losses
from keras_lct import schedules
from keras_lct._validation import check_choice
from keras_lct._validation import check_fraction
from keras_lct._validation import check_int
from keras_lct._validation import check_positive
from keras_lct.backend import fast_paths
from keras_lct.backend import forward_mode

TrainingBatch = collections.namedtuple(
    "TrainingBatch", "clean noise labels step num_scales robustness_c share shares"
)
TrainingBatch.__doc__ = """One batch of a training step, as the model hands it to its objective.

`clean` x0 (float32); `noise` the batch's paired noise or None (the objective
draws it); `labels` int32 class labels or None; `step` the optimizer step;
`num_scales`, `robustness_c` N and c of this step (`model.schedule.at`);
`share`, `shares`: this batch is part `share` of `shares` equal parts of the
update's batch (micro-batches x replicas)."""

ObjectiveTerms = collections.namedtuple("ObjectiveTerms", "loss metrics td_pair")
ObjectiveTerms.__doc__ = """What an objective returns: the scalar `loss`, the `metrics` it logs
(name -> scalar, each declared in its `metrics`), and `td_pair`, the
(student, target) whose spread the measured c reads, or None."""


class Objective:
    """Base class of the training objectives.

    A subclass sets `name`, `metrics` (log name -> "mean" or "latest") and
    `call_inputs` (how many inputs the model's call takes before the labels),
    and implements `__call__`, `denoise`, `sampling_levels` and `sample`.
    """

    name = None
    metrics = {}
    call_inputs = 2

    def __call__(self, model, batch):
        """The `ObjectiveTerms` of one `TrainingBatch` for `model`."""
        raise NotImplementedError

    def check_network(self, network):
        """Raises a ValueError if this objective cannot train `network`."""

    def denoise(self, model, network, inputs, labels, training):
        """The model's call on `inputs` (the first `call_inputs` inputs) with `network`."""
        raise NotImplementedError

    def sampling_levels(self, model, steps, ts):
        """The levels `model.sample` visits for `steps` or the given `ts`."""
        raise NotImplementedError

    def sample(self, model, levels, rng, shape, predict):
        """Samples of `shape` through `levels`; `predict(inputs)` batches the model's call."""
        raise NotImplementedError

    def get_config(self):
        return {}

    @classmethod
    def from_config(cls, config):
        return cls(**config)


# The authors' 2-step level on CelebA-HQ and FFHQ: grid level 440 of the 641-level grid (~0.369).
TWO_STEP_LEVEL = (440, schedules.FINAL_NUM_SCALES)


def two_step_sigma(level, sigma_min=schedules.SIGMA_MIN, sigma_max=schedules.SIGMA_MAX, rho=schedules.RHO):
    """The noise level of a `two_step_level`: a float, or `(index, num_scales)` on the Karras grid."""
    if isinstance(level, (int, float)) and not isinstance(level, bool):
        sigma = float(level)
    elif isinstance(level, (tuple, list)) and len(level) == 2 and all(isinstance(v, int) for v in level):
        index, num_scales = level
        if not 0 < index < num_scales - 1:
            raise ValueError(
                f"`two_step_level` {tuple(level)} names grid level {index} of {num_scales}; the second "
                f"step needs a level strictly between 0 and {num_scales - 1} (the grid's ends)."
            )
        sigma = float(schedules.karras_sigma(index, num_scales, sigma_min, sigma_max, rho))
    else:
        raise ValueError(
            "`two_step_level` must be a noise level (a float) or a grid position (index, num_scales) "
            f"such as {TWO_STEP_LEVEL}; received {level!r}."
        )
    if not (np.isfinite(sigma) and sigma_min < sigma < sigma_max):
        raise ValueError(f"`two_step_level` {level!r} is sigma = {sigma}, outside ({sigma_min}, {sigma_max}).")
    return sigma


class ConsistencyFunction(Objective):
    """Base of the objectives that train a consistency function f(x, sigma) (the paper's, ECT).

    The model's call is f with the boundary condition f(x, sigma_min) = x;
    it samples `x = f(sigma_max z)`, then re-noises and denoises at each
    further level (`steps` 1 or 2, the second at `model.two_step_level`, or
    the levels `ts`).
    """

    def denoise(self, model, network, inputs, labels, training):
        x_noisy, sigma = inputs
        return model.denoise_with(network, x_noisy, sigma, training, labels)

    def sampling_levels(self, model, steps, ts):
        """The noise levels `model` samples at: `ts` if given, else those of `steps` (1 or 2)."""
        if ts is None:
            steps = check_int("steps", steps, minimum=1)
            if steps == 1:
                return [model.sigma_max]
            if steps == 2:
                return [model.sigma_max, two_step_sigma(model.two_step_level, model.sigma_min, model.sigma_max, model.rho)]
            raise ValueError(
                f"`steps` must be 1 or 2 when `ts` is not given; received {steps}. "
                "Pass the noise levels as `ts` for more steps."
            )
        return _checked_levels(
            ts, model.sigma_min, model.sigma_max, f"`ts` must lie in [sigma_min, sigma_max] = [{model.sigma_min}, {model.sigma_max}]"
        )

    def sample(self, model, levels, rng, shape, predict):
        x = predict([levels[0] * rng.standard_normal(shape, dtype=np.float32), _full(shape, levels[0])])
        for level in levels[1:]:
            x = x + math.sqrt(level**2 - model.sigma_min**2) * rng.standard_normal(shape, dtype=np.float32)
            x = predict([x, _full(shape, level)])
        return x


@keras.saving.register_keras_serializable(package="keras_lct")
class ConsistencyTraining(ConsistencyFunction):
    """The paper's improved latent consistency training (the default objective).

    The student f(x0 + t z, t) against the stop-gradient target
    f(x0 + t2 z, t2) of the same weights at the next lower level of the
    Karras grid of N levels, weighted by 1 / (t - t2) under a robust
    distance, plus the diffusion loss on the lowest-noise fraction of the
    grid. Indices are drawn from the lognormal index distribution.

    Args:
        loss: the robust distance, a `keras_lct.losses.DISTANCES` name
            (`"cauchy"`, `"pseudo_huber"`, `"geman_mcclure"`, `"l2"`).
        diffusion_fraction: r, the lowest-noise fraction of grid indices that
            also get the diffusion loss (0.25; 0 turns it off).
        diffusion_weight: weight of the diffusion loss (5).

    Example:
    ```python
    model = ConsistencyModel("DiT-S/2", objective=ConsistencyTraining(loss="pseudo_huber"))  # iLCT
    ```

    Reference: paper sections 3, 4.2 (Cauchy loss), 4.3 (diffusion loss);
    `docs/reference.md` "One consistency-training step".
    """

    name = "consistency"
    metrics = {"consistency_loss": "mean", "diffusion_loss": "mean", "num_scales": "latest", "c": "latest"}

    def __init__(self, loss="cauchy", diffusion_fraction=0.25, diffusion_weight=5.0):
        self.loss = check_choice("loss", loss, losses.DISTANCES)
        self.diffusion_fraction = check_fraction("diffusion_fraction", diffusion_fraction)
        self.diffusion_weight = check_positive("diffusion_weight", diffusion_weight, allow_zero=True)

    def draws(self, model, clean, noise, step, num_scales, share=0, shares=1):
        """The noise z (unless given) and grid indices i of training step `step`.

        Returns `(noise, indices, update_indices)`: this batch's and those of
        the whole update's batch (`shares` batches like `clean`), drawn from
        (seed, step) only, so a resumed run draws the same.
        """
        model.restart_draws(step)
        if noise is None:
            noise = model.draw_normal(clean, share, shares)
        probabilities = schedules.lognormal_index_probabilities(
            num_scales, model.max_num_scales - 1, model.p_mean, model.p_std, model.sigma_min, model.sigma_max, model.rho
        )
        update_uniform = model.draw_uniform(ops.shape(clean)[0], share, shares, whole_update=True)
        update_indices = schedules.sample_from_probabilities(probabilities, update_uniform)
        return ops.cast(noise, "float32"), model.share_of(update_indices, share, shares), update_indices

    def __call__(self, model, batch):
        clean = batch.clean
        noise, index, update_index = self.draws(
            model, clean, batch.noise, batch.step, batch.num_scales, batch.share, batch.shares
        )
        labels = model.dropped_labels(batch.labels, batch.share, batch.shares)[0]
        t = model.sigma_at(index, batch.num_scales)
        next_t = model.sigma_at(index + 1, batch.num_scales)
        student = model.denoise_with(
            model.training_network(differentiated=True), clean + per_sample(t, clean) * noise, t, True, labels
        )
        with fast_paths.no_gradient():
            target = ops.stop_gradient(
                model.denoise_with(
                    model.training_network(), clean + per_sample(next_t, clean) * noise, next_t, True, labels
                )
            )
        distance = losses.DISTANCES[self.loss](student, target, batch.robustness_c)
        consistency_loss = ops.mean(schedules.consistency_weight(t, next_t) * distance)
        # Normalized by the low-noise count of the whole update, so that the mean over its
        # shares is the loss of one step on the whole batch.
        diffusion_loss = batch.shares * losses.diffusion_loss(
            student, clean, t, model.sigma_data,
            low_noise=self._low_noise(index, batch.num_scales),
            low_noise_count=ops.sum(self._low_noise(update_index, batch.num_scales)),
        )
        metrics = {
            "consistency_loss": consistency_loss,
            "diffusion_loss": diffusion_loss,
            "num_scales": batch.num_scales,
            "c": batch.robustness_c,
        }
        return ObjectiveTerms(consistency_loss + self.diffusion_weight * diffusion_loss, metrics, (student, target))

    def _low_noise(self, index, num_scales):
        """1.0 where grid index `index` is among the lowest `diffusion_fraction` of the noise levels."""
        threshold = ops.floor((1.0 - self.diffusion_fraction) * ops.cast(num_scales, "float32"))
        return ops.cast(ops.cast(index, "float32") >= threshold, "float32")

    def get_config(self):
        return {"loss": self.loss, "diffusion_fraction": self.diffusion_fraction, "diffusion_weight": self.diffusion_weight}


MEANFLOW_DISTANCES = ("squared_norm",) + tuple(losses.DISTANCES)


@keras.saving.register_keras_serializable(package="keras_lct")
class MeanFlow(Objective):
    """MeanFlow: the average velocity u(z, t, r), trained on its own time derivative.

    On the flow z_t = (1 - t) x0 + t e (t in [0, 1], velocity v = e - x0),
    the network is the average velocity over [r, t], u(z_t, t, r) =
    F(z_t, t, t - r[, y]), and satisfies u = v - (t - r) du/dt. The target
    u_tgt = stop_gradient(v_g - clip(t - r, 0, 1) du/dt), with du/dt =
    (dz/dt, dt/dt, dr/dt) . grad u = (v_g, 1, 0) . grad u, a Jacobian-vector
    product (`keras.ops.linalg.jvp`). v_g is v, or with class labels the
    guided velocity built into training: v_g = omega v + (1 - omega - kappa)
    u(z_t, t, t | null) + kappa u(z_t, t, t | y) for t in [t_start, t_end]
    (omega 1 and kappa 0 outside), v for the samples whose label is dropped.
    The per-sample distance d(u, u_tgt) is divided by the stop-gradient
    weight (d + norm_eps)^norm_p. (t, r) are two logit-normal draws, ordered;
    r = t for the share `data_proportion` of the samples.

    The network needs a second time input (`interval_embedding=True`: the
    UNet, the DiT and the MLP denoiser take it) and gets t and t - r
    unscaled, as the official code feeds its DiT. The data and noise are not
    preconditioned.

    Args:
        p_mean, p_std: the logit-normal distribution of t and r,
            sigmoid(p_mean + p_std n) (-0.4, 1.0).
        data_proportion: the share of samples with r = t, trained as flow
            matching (0.75).
        omega, kappa: the guidance scales built into training (1.0, 0.5);
            `omega=1, kappa=0` is no guidance. Need class labels.
        t_start, t_end: the times at which guidance applies ([0, 1]).
        norm_p, norm_eps: the adaptive weighting 1 / (d + norm_eps)^norm_p
            (1.0, 0.01; `norm_p=0` turns it off).
        distance: `"squared_norm"`, the official ||u - u_tgt||^2 summed over
            the features, or a robust distance of `keras_lct.losses.DISTANCES`
            (the paper's `"cauchy"`, ...) on their mean squared residual.
        c: the robust distance's scale; None takes the model's c (its
            schedule, `model.schedule`, so `AdaptiveC` applies).
        two_step_time: the intermediate time of `sample(steps=2)` (0.5).
        time_scale: the network gets `time_scale t` and `time_scale (t - r)`
            (1: unscaled, as the official code; a network whose time
            embedding expects another range, e.g. the MLP denoiser's EDM
            noise labels, takes e.g. 250).

    Example:
    ```python
    network = keras_lct.models.DiT.from_preset("DiT-S/2", num_classes=1000, label_dropout=0.1, interval_embedding=True)
    model = ConsistencyModel(network, objective=MeanFlow(distance="cauchy"))
    ```

    Reference: Geng et al. 2025, "Mean Flows for One-step Generative
    Modeling", eq. 6-10 and section 4.2 (guidance); `docs/reference.md`
    "MeanFlow".
    """

    name = "meanflow"
    call_inputs = 3

    def __init__(
        self,
        p_mean=-0.4,
        p_std=1.0,
        data_proportion=0.75,
        omega=1.0,
        kappa=0.5,
        t_start=0.0,
        t_end=1.0,
        norm_p=1.0,
        norm_eps=0.01,
        distance="squared_norm",
        c=None,
        two_step_time=0.5,
        time_scale=1.0,
    ):
        self.p_mean = float(p_mean)
        self.p_std = check_positive("p_std", p_std)
        self.data_proportion = check_fraction("data_proportion", data_proportion)
        self.omega = float(omega)
        self.kappa = float(kappa)
        self.t_start = check_fraction("t_start", t_start)
        self.t_end = check_fraction("t_end", t_end)
        if self.t_start > self.t_end:
            raise ValueError(f"MeanFlow: `t_start` ({t_start}) must not exceed `t_end` ({t_end}).")
        self.norm_p = check_positive("norm_p", norm_p, allow_zero=True)
        self.norm_eps = check_positive("norm_eps", norm_eps, allow_zero=True)
        self.distance = check_choice("distance", distance, MEANFLOW_DISTANCES)
        self.c = None if c is None else check_positive("c", c)
        self.two_step_time = float(two_step_time)
        if not 0.0 < self.two_step_time < 1.0:
            raise ValueError(f"MeanFlow: `two_step_time` must lie strictly between 0 and 1; received {two_step_time!r}.")
        self.time_scale = check_positive("time_scale", time_scale)

    @property
    def metrics(self):
        names = {"meanflow_loss": "mean", "velocity_loss": "mean"}
        if self.distance != "squared_norm":
            names["c"] = "latest"
        return names

    @property
    def guided(self):
        """Whether training builds guidance into the target (omega != 1 or kappa != 0)."""
        return self.omega != 1.0 or self.kappa != 0.0

    def check_network(self, network):
        if not getattr(network, "interval_embedding", False):
            raise ValueError(
                "MeanFlow trains the average velocity u(z, t, r), whose network takes a second time input: "
                "build it with `interval_embedding=True` (e.g. `DiT.from_preset(..., interval_embedding=True)`, "
                "`UNet.from_preset(..., interval_embedding=True)`)."
            )

    def draws(self, model, clean, noise, step, share=0, shares=1):
        """The noise e (unless given) and times (t, r) of training step `step`, from (seed, step) only."""
        model.restart_draws(step)
        if noise is None:
            noise = model.draw_normal(clean, share, shares)
        batch = ops.shape(clean)[0]
        times = ops.sigmoid(self.p_mean + self.p_std * model.draw_normal(ops.zeros((batch, 2)), share, shares))
        t, r = ops.max(times, axis=1), ops.min(times, axis=1)
        r = ops.where(model.draw_uniform(batch, share, shares) < self.data_proportion, t, r)
        return ops.cast(noise, "float32"), t, r

    def __call__(self, model, batch):
        noise, t, r = self.draws(model, batch.clean, batch.noise, batch.step, batch.share, batch.shares)
        labels, dropped = model.dropped_labels(batch.labels, batch.share, batch.shares)
        c = batch.robustness_c if self.c is None else self.c
        terms = self.loss_terms(
            model.training_network(differentiated=True), batch.clean, noise, t, r, labels, dropped,
            training=True, c=c, null_class=model.num_classes, jvp_network=model.network_for_forward_mode(),
        )
        metrics = {"meanflow_loss": terms["loss"], "velocity_loss": terms["velocity_loss"]}
        if self.distance != "squared_norm":
            metrics["c"] = c
        return ObjectiveTerms(terms["loss"], metrics, None)

    def loss_terms(
        self, network, clean, noise, t, r, labels=None, dropped=None, training=True, c=None, null_class=None,
        jvp_network=None,
    ):
        """MeanFlow's loss on given draws, with its intermediate terms.

        Args:
            network: the average-velocity network F (`interval_embedding=True`).
            clean, noise: x0 and e, float32 of the same shape.
            t, r: the times, shape (batch,), r <= t.
            labels: int class labels (batch,), with the dropped ones already
                replaced by the null class, or None (unconditional).
            dropped: bool (batch,), the samples whose label was dropped (their
                target uses v, not the guided velocity); None: none.
            training: the network's training mode for u.
            c: the robust distance's scale (used unless `distance` is
                `"squared_norm"`).
            null_class: the network's null class (its `num_classes`); read
                from the network when None.
            jvp_network: None: u and du/dt come from one JVP through
                `network`. Else u from a plain call of `network` and du/dt
                from a JVP through `jvp_network` (the same weights) without
                gradient: for a `network` that cannot run inside a JVP
                (`ConsistencyModel.network_for_forward_mode`).

        Returns:
            dict of `u`, `du_dt`, `target` (u_tgt), `guided_velocity` (v_g),
            `distance` (per sample, before the adaptive weighting), `loss`
            (the weighted mean) and `velocity_loss` (mean ||u - v||^2, a
            diagnostic of the official code).
        """
        clean = ops.cast(clean, "float32")
        noise = ops.cast(noise, "float32")
        z = per_sample(1.0 - t, clean) * clean + per_sample(t, clean) * noise
        velocity = noise - clean
        if null_class is None:
            null_class = int(getattr(network, "num_classes", 0) or 0)
        guided_velocity = self._guided_velocity(network, velocity, z, t, labels, dropped, null_class)

        def average_velocity(through):
            return lambda z, t, r: ops.cast(through(self._network_inputs(z, t, t - r, labels), training=training), "float32")

        primals, tangents = (z, t, r), (guided_velocity, ops.ones_like(t), ops.zeros_like(r))
        if jvp_network is None:
            u, du_dt = forward_mode.jvp(average_velocity(network), primals, tangents)
        else:
            u = average_velocity(network)(*primals)
            with fast_paths.no_gradient():
                du_dt = forward_mode.jvp(average_velocity(jvp_network), primals, tangents)[1]
        target = ops.stop_gradient(guided_velocity - per_sample(ops.clip(t - r, 0.0, 1.0), u) * du_dt)
        if self.distance == "squared_norm":
            distance = _squared_norm(u - target)
        else:
            distance = losses.DISTANCES[self.distance](u, target, c)
        weight = ops.stop_gradient(ops.power(distance + self.norm_eps, self.norm_p))
        return {
            "u": u,
            "du_dt": du_dt,
            "target": target,
            "guided_velocity": guided_velocity,
            "distance": distance,
            "loss": ops.mean(distance / weight),
            "velocity_loss": ops.mean(_squared_norm(ops.stop_gradient(u) - velocity)),
        }

    def _guided_velocity(self, network, velocity, z, t, labels, dropped, null_class):
        """v_g: the velocity with guidance built in (v where there are no labels, or the label was dropped)."""
        if labels is None or not self.guided:
            return velocity
        with fast_paths.no_gradient():
            no_interval = ops.zeros_like(t)
            null_labels = ops.full(ops.shape(t), null_class, dtype="int32")
            unconditional = ops.cast(network(self._network_inputs(z, t, no_interval, null_labels), training=False), "float32")
            in_window = ops.logical_and(t >= self.t_start, t <= self.t_end)
            omega = per_sample(ops.where(in_window, self.omega, 1.0), z)
            guided = omega * velocity + (1.0 - omega) * unconditional
            if self.kappa:
                conditional = ops.cast(network(self._network_inputs(z, t, no_interval, labels), training=False), "float32")
                kappa = per_sample(ops.where(in_window, self.kappa, 0.0), z)
                guided = guided + kappa * (conditional - unconditional)
            guided = ops.stop_gradient(guided)
        if dropped is None:
            return guided
        return ops.where(per_sample(dropped, z), velocity, guided)

    def _network_inputs(self, z, t, interval, labels):
        inputs = [z, self.time_scale * t, self.time_scale * interval]
        return inputs + ([] if labels is None else [ops.cast(labels, "int32")])

    def denoise(self, model, network, inputs, labels, training):
        """`z_r = z_t - (t - r) u(z_t, t, r)` for inputs `[z_t, t, r]`."""
        z, t, r = (ops.cast(value, "float32") for value in inputs)
        ones = ops.ones((ops.shape(z)[0],), "float32")
        t, r = t * ones, r * ones
        u = ops.cast(network(self._network_inputs(z, t, t - r, labels), training=training), "float32")
        return z - per_sample(t - r, z) * u

    def sampling_levels(self, model, steps, ts):
        """Times from 1 down: `[1]`, `[1, two_step_time]` or the given `ts` in (0, 1], decreasing; 0 ends each."""
        if ts is None:
            steps = check_int("steps", steps, minimum=1)
            if steps > 2:
                raise ValueError(
                    f"`steps` must be 1 or 2 when `ts` is not given; received {steps}. "
                    "Pass the times as `ts` for more steps."
                )
            return [1.0] if steps == 1 else [1.0, self.two_step_time]
        return _checked_levels(ts, 0.0, 1.0, "A MeanFlow model samples at times `ts` in (0, 1]", include_low=False)

    def sample(self, model, levels, rng, shape, predict):
        x = rng.standard_normal(shape, dtype=np.float32)
        for t, r in zip(levels, levels[1:] + [0.0]):
            x = predict([x, _full(shape, t), _full(shape, r)])
        return x

    def get_config(self):
        return {
            "p_mean": self.p_mean,
            "p_std": self.p_std,
            "data_proportion": self.data_proportion,
            "omega": self.omega,
            "kappa": self.kappa,
            "t_start": self.t_start,
            "t_end": self.t_end,
            "norm_p": self.norm_p,
            "norm_eps": self.norm_eps,
            "distance": self.distance,
            "c": self.c,
            "two_step_time": self.two_step_time,
            "time_scale": self.time_scale,
        }


def lognormal_draws(model, clean, noise, step, p_mean, p_std, share=0, shares=1):
    """The noise (unless given) and lognormal noise levels exp(p_mean + p_std n) of step `step`, from (seed, step) only."""
    model.restart_draws(step)
    if noise is None:
        noise = model.draw_normal(clean, share, shares)
    normal = model.draw_normal(ops.zeros((ops.shape(clean)[0],)), share, shares)
    return ops.cast(noise, "float32"), ops.exp(p_mean + p_std * normal)


@keras.saving.register_keras_serializable(package="keras_lct")
class EDMDiffusion(Objective):
    """EDM diffusion training: the denoiser D(x0 + sigma n, sigma) against the data x0.

    sigma is lognormal, ln sigma ~ N(p_mean, p_std^2); the loss is the batch
    mean of lambda(sigma) ||D(x0 + sigma n, sigma) - x0||^2 summed over the
    features, with EDM's weighting lambda(sigma) = 1 / sigma^2 + 1 /
    sigma_data^2 (`keras_lct.losses.edm_weight`). D is EDM's preconditioning
    of the network, c_skip x + c_out F(c_in x, c_noise), without the
    consistency models' boundary condition (`keras_lct.schedules.precondition`
    with `sigma_min=0`). Any of the networks trains, conditional or not
    (labels are dropped at the network's `label_dropout`).

    `model.sample(steps=K)` runs EDM's deterministic Heun sampler over the K
    Karras levels from sigma_max to sigma_min, then an Euler step to 0 (2K -
    1 network calls); `steps=1` is the single Euler step D(sigma_max z,
    sigma_max). `ts` gives the levels instead. A model trained so is the
    starting point of `ECT` (`ConsistencyModel.from_diffusion`).

    Args:
        p_mean, p_std: the lognormal distribution of the training noise
            levels (-1.2, 1.2).

    Example:
    ```python
    diffusion = ConsistencyModel(UNet.from_preset("tiny"), objective="edm")
    diffusion.compile(optimizer=keras.optimizers.Adam(1e-3))
    diffusion.fit(latents, epochs=10)
    samples = diffusion.sample(16, steps=18)  # 35 network calls
    ```

    Reference: Karras et al. 2022, "Elucidating the Design Space of
    Diffusion-Based Generative Models", table 1 and algorithm 1 (the
    sampler); `docs/reference.md` "EDM diffusion training".
    """

    name = "edm"
    metrics = {"diffusion_loss": "mean"}

    def __init__(self, p_mean=-1.2, p_std=1.2):
        self.p_mean = float(p_mean)
        self.p_std = check_positive("p_std", p_std)

    def __call__(self, model, batch):
        noise, sigma = lognormal_draws(
            model, batch.clean, batch.noise, batch.step, self.p_mean, self.p_std, batch.share, batch.shares
        )
        labels = model.dropped_labels(batch.labels, batch.share, batch.shares)[0]
        terms = self.loss_terms(model, model.training_network(differentiated=True), batch.clean, noise, sigma, labels)
        return ObjectiveTerms(terms["loss"], {"diffusion_loss": terms["loss"]}, None)

    def loss_terms(self, model, network, clean, noise, sigma, labels=None, training=True):
        """EDM's loss on given draws: dict of `denoised`, `per_sample_loss` and `loss` (their batch mean).

        `clean`, `noise`: x0 and n, float32 of the same shape; `sigma`
        (batch,); `labels`: int class labels with the dropped ones already
        replaced by the null class, or None.
        """
        clean = ops.cast(clean, "float32")
        denoised = model.denoise_with(
            network, clean + per_sample(sigma, clean) * ops.cast(noise, "float32"), sigma, training, labels, boundary=False
        )
        per_sample_loss = losses.edm_weight(sigma, model.sigma_data) * _squared_norm(denoised - clean)
        return {"denoised": denoised, "per_sample_loss": per_sample_loss, "loss": ops.mean(per_sample_loss)}

    def denoise(self, model, network, inputs, labels, training):
        x_noisy, sigma = inputs
        return model.denoise_with(network, x_noisy, sigma, training, labels, boundary=False)

    def sampling_levels(self, model, steps, ts):
        """`ts` if given (decreasing, in (0, sigma_max]), else the `steps` Karras levels from sigma_max to sigma_min."""
        if ts is not None:
            return _checked_levels(
                ts, 0.0, model.sigma_max, f"`ts` must lie in (0, sigma_max] = (0, {model.sigma_max}]", include_low=False
            )
        steps = check_int("steps", steps, minimum=1)
        if steps == 1:
            return [model.sigma_max]
        sigmas = schedules.karras_sigmas(steps, model.sigma_min, model.sigma_max, model.rho)
        return [float(sigma) for sigma in ops.convert_to_numpy(sigmas)]

    def sample(self, model, levels, rng, shape, predict):
        """EDM's deterministic Heun sampler (algorithm 1, no churn) through `levels`, then to 0."""
        # In float64 between the network's calls, as EDM's: x - D(x) cancels at large sigma.
        x = levels[0] * rng.standard_normal(shape, dtype=np.float32).astype(np.float64)

        def slope(x, level):
            return (x - predict([x.astype(np.float32), _full(shape, level)])) / level

        for level, next_level in zip(levels, levels[1:] + [0.0]):
            current = slope(x, level)
            x_next = x + (next_level - level) * current
            if next_level > 0:
                x_next = x + (next_level - level) * 0.5 * (current + slope(x_next, next_level))
            x = x_next
        return x.astype(np.float32)

    def get_config(self):
        return {"p_mean": self.p_mean, "p_std": self.p_std}


ECT_DISTANCES = ("pseudo_huber_norm",) + tuple(losses.DISTANCES)


@keras.saving.register_keras_serializable(package="keras_lct")
class ECT(ConsistencyFunction):
    """Easy Consistency Tuning: from a diffusion model to a consistency model, in stages.

    The student f(x0 + t e, t) against the stop-gradient target f(x0 + r e, r)
    of the same weights, with the same noise e and the same dropout masks
    (`model.dropout_replay`); where r = 0 the target is the data x0 itself.
    t is lognormal, ln t ~ N(p_mean, p_std^2), and r = max(t (1 - d), 0):
    `mapping="constant"` takes d = q^-(stage + 1) and `"sigmoid"` d =
    q^-(stage + 1) (1 + k sigmoid(-b t)). The stage is `step //
    stage_steps` of the model's step counter, so the gap t - r shrinks by q
    every `stage_steps` steps, exactly on resume too. Both passes use EDM's
    preconditioning in training mode (no boundary condition); the model's
    call and `sample` have it, as ECT's network in evaluation mode.

    The per-sample loss is `distance(f_t, f_r) * weight`:
    - `distance="pseudo_huber_norm"` (the official): sqrt(||f_t - f_r||^2 +
      c^2) - c over all features; `c=0` is the L2 norm (not its square); or
      a `keras_lct.losses.DISTANCES` name on the mean squared residual, e.g.
      the paper's `"cauchy"`, with `c=None` taking the model's c (its
      schedule, so `AdaptiveC` applies);
    - `weighting="interval"`: 1 / (t - r) (ECT's `main` branch) or `"edm"`:
      EDM's (t^2 + sigma_data^2) / (t sigma_data)^2 (its `imgnet` branch).

    `ECT()` has the `main` branch's settings, `ECT.from_branch("imgnet")`
    (`objective="ect_imgnet"`) the `imgnet` branch's: q 4, c 0.06, EDM's
    weighting. Start from a diffusion model with
    `ConsistencyModel.from_diffusion`; minibatch OT (a `NoisePairedDataset`'s
    noise is e) and NsLN (`norm="nsln"` networks) apply as for the paper's
    objective.

    Args:
        p_mean, p_std: the lognormal distribution of t (-1.1, 2.0).
        q: the factor the gap t - r shrinks by at each stage (2).
        stage_steps: the optimizer steps of one stage (1000).
        mapping: `"sigmoid"` (default) or `"constant"`, the t -> r mapping.
        k, b: the sigmoid mapping's constants (8, 1).
        weighting: `"interval"` (default) or `"edm"`.
        distance: `"pseudo_huber_norm"` (default) or a
            `keras_lct.losses.DISTANCES` name.
        c: the distance's scale: for `"pseudo_huber_norm"` c >= 0 (None:
            0, the L2 norm); for the others c > 0 or None (the model's c).

    Example:
    ```python
    diffusion = keras.saving.load_model("diffusion.keras")  # objective="edm"
    model = ConsistencyModel.from_diffusion(diffusion, objective=ECT(stage_steps=2000, distance="cauchy"))
    ```

    Reference: Geng et al. 2025, "Consistency Models Made Easy" (ICLR),
    sections 3-4; `docs/reference.md` "ECT".
    """

    name = "ect"
    BRANCHES = {"main": {}, "imgnet": {"q": 4.0, "c": 0.06, "weighting": "edm"}}

    def __init__(
        self,
        p_mean=-1.1,
        p_std=2.0,
        q=2.0,
        stage_steps=1000,
        mapping="sigmoid",
        k=8.0,
        b=1.0,
        weighting="interval",
        distance="pseudo_huber_norm",
        c=None,
    ):
        self.p_mean = float(p_mean)
        self.p_std = check_positive("p_std", p_std)
        self.q = float(q)
        if not self.q > 1.0:
            raise ValueError(f"ECT: `q` must be greater than 1 (the gap t - r shrinks by q each stage); received {q!r}.")
        self.stage_steps = check_int("stage_steps", stage_steps, minimum=1)
        self.mapping = check_choice("mapping", mapping, ("sigmoid", "constant"))
        self.k = float(k)
        self.b = float(b)
        self.weighting = check_choice("weighting", weighting, ("interval", "edm"))
        self.distance = check_choice("distance", distance, ECT_DISTANCES)
        robust = self.distance != "pseudo_huber_norm"
        self.c = None if c is None else check_positive("c", c, allow_zero=not robust)

    @classmethod
    def from_branch(cls, branch, **overrides):
        """ECT with the settings of the official code's `branch` (`"main"` or `"imgnet"`), any overridden."""
        return cls(**{**cls.BRANCHES[check_choice("branch", branch, cls.BRANCHES)], **overrides})

    @property
    def metrics(self):
        names = {"ect_loss": "mean", "stage": "latest"}
        if self.distance != "pseudo_huber_norm":
            names["c"] = "latest"
        return names

    def stage_at(self, step):
        """The stage of optimizer step `step`: `step // stage_steps` (int32)."""
        return ops.floor_divide(ops.cast(step, "int32"), self.stage_steps)

    def interval_end(self, t, stage):
        """r of t at `stage`: max(t (1 - d), 0), d the mapping's decay."""
        t = ops.cast(t, "float32")
        decay = 1.0 / ops.power(self.q, ops.cast(stage, "float32") + 1.0)
        if self.mapping == "sigmoid":
            decay = decay * (1.0 + self.k * ops.sigmoid(-self.b * t))
        return ops.maximum(t * (1.0 - decay), 0.0)

    def __call__(self, model, batch):
        noise, t = lognormal_draws(
            model, batch.clean, batch.noise, batch.step, self.p_mean, self.p_std, batch.share, batch.shares
        )
        labels = model.dropped_labels(batch.labels, batch.share, batch.shares)[0]
        if self.distance == "pseudo_huber_norm":
            c = self.c or 0.0
        else:
            c = batch.robustness_c if self.c is None else self.c
        stage = self.stage_at(batch.step)
        terms = self.loss_terms(model, model.training_network(differentiated=True), batch.clean, noise, t, stage, labels, c)
        metrics = {"ect_loss": terms["loss"], "stage": stage}
        if self.distance != "pseudo_huber_norm":
            metrics["c"] = c
        return ObjectiveTerms(terms["loss"], metrics, (terms["student"], terms["target"]))

    def loss_terms(self, model, network, clean, noise, t, stage, labels=None, c=None, training=True):
        """ECT's loss on given draws, with its intermediate terms.

        Args:
            model: the `ConsistencyModel` (its preconditioning and dropout).
            network: its network or the step's caller of it (the student's;
                the target runs through `model.training_network()`).
            clean, noise: x0 and e, float32 of the same shape.
            t: the student's noise levels (batch,).
            stage: the stage (an int or int32 scalar).
            labels: int class labels with the dropped ones already replaced
                by the null class, or None.
            c: the distance's scale (None: 0 for `"pseudo_huber_norm"`).
            training: the network's training mode (both passes).

        Returns:
            dict of `r`, `student` f(x_t, t), `target` (f(x_r, r), or x0
            where r = 0), `distance` (per sample, before the weighting),
            `per_sample_loss` and `loss` (their batch mean).
        """
        clean = ops.cast(clean, "float32")
        noise = ops.cast(noise, "float32")
        t = ops.cast(t, "float32")
        r = self.interval_end(t, stage)
        replay_dropout = model.dropout_replay()
        student = model.denoise_with(network, clean + per_sample(t, clean) * noise, t, training, labels, boundary=False)
        replay_dropout()
        with fast_paths.no_gradient():
            target = model.denoise_with(
                model.training_network(), clean + per_sample(r, clean) * noise, r, training, labels, boundary=False
            )
        target = ops.stop_gradient(ops.where(per_sample(r > 0.0, clean), ops.nan_to_num(target), clean))
        if self.distance == "pseudo_huber_norm":
            distance = _pseudo_huber_norm(student - target, 0.0 if c is None else c)
        else:
            distance = losses.DISTANCES[self.distance](student, target, c)
        if self.weighting == "interval":
            weight = schedules.consistency_weight(t, r)
        else:
            weight = losses.edm_weight(t, model.sigma_data)
        per_sample_loss = distance * weight
        return {
            "r": r,
            "student": student,
            "target": target,
            "distance": distance,
            "per_sample_loss": per_sample_loss,
            "loss": ops.mean(per_sample_loss),
        }

    def get_config(self):
        return {
            "p_mean": self.p_mean,
            "p_std": self.p_std,
            "q": self.q,
            "stage_steps": self.stage_steps,
            "mapping": self.mapping,
            "k": self.k,
            "b": self.b,
            "weighting": self.weighting,
            "distance": self.distance,
            "c": self.c,
        }


OBJECTIVES = {
    "consistency": ConsistencyTraining,
    "meanflow": MeanFlow,
    "edm": EDMDiffusion,
    "ect": ECT,
    "ect_imgnet": functools.partial(ECT.from_branch, "imgnet"),
}


def get(objective, **consistency_settings):
    """An `Objective` from an instance, a name of `OBJECTIVES` or a serialized config.

    `consistency_settings` (loss, diffusion_fraction, diffusion_weight) build
    the default `"consistency"` objective.
    """
    if isinstance(objective, Objective):
        return objective
    if isinstance(objective, dict):
        return keras.saving.deserialize_keras_object(objective)
    name = check_choice("objective", objective, OBJECTIVES)
    return ConsistencyTraining(**consistency_settings) if name == "consistency" else OBJECTIVES[name]()


def per_sample(values, like):
    """Reshapes a (batch,) vector to broadcast against `like`."""
    return ops.reshape(values, (-1,) + (1,) * (len(like.shape) - 1))


def _squared_norm(residual):
    """Per-sample sum of squares over all non-batch axes."""
    return ops.sum(ops.square(residual), axis=tuple(range(1, len(residual.shape))))


def _pseudo_huber_norm(residual, c):
    """Per-sample sqrt(||residual||^2 + c^2) - c over all non-batch axes; c = 0 gives the L2 norm."""
    squared_norm = _squared_norm(residual)
    if isinstance(c, (int, float)) and c == 0:
        return ops.sqrt(squared_norm)
    return squared_norm / (ops.sqrt(squared_norm + ops.square(c)) + c)


def _checked_levels(ts, low, high, range_message, include_low=True):
    """`ts` as a list of floats, checked to be strictly decreasing and within [low, high] ((low, high] if not `include_low`)."""
    levels = [float(level) for level in np.asarray(ts, dtype=np.float64).reshape(-1)]
    if not levels:
        raise ValueError("`ts` must hold at least one level.")
    if any(not np.isfinite(level) or not (low <= level if include_low else low < level) or level > high for level in levels):
        raise ValueError(f"{range_message}; received {levels}.")
    if any(later >= earlier for earlier, later in zip(levels, levels[1:])):
        raise ValueError(f"`ts` must be strictly decreasing; received {levels}.")
    return levels


def _full(shape, value):
    return np.full((shape[0],), value, dtype=np.float32)
