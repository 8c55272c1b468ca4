"""ConsistencyModel: improved latent consistency training under `model.fit`.

The training objective is its own small callable (`keras_lct.objectives`: the
paper's consistency training by default, paper sections 3 and 4.2-4.5,
`docs/reference.md` "One consistency-training step"; or MeanFlow), written
once with `keras.ops`; it runs unchanged under every backend's `fit`.
`compute_loss` asks it for the loss and keeps the bookkeeping around it; the
EMA follows the optimizer's update (`train_step`). The model's
other parts live in modules named for them: the schedules' state
(`schedule_state`), the weight averages (`ema`), the sampler (`sampler`),
the checks of what `fit` receives (`keras_lct.data.checks`) and the
backends' parts (`keras_lct.backend`).
"""

import types

import keras
import numpy as np
from keras import ops

from keras_lct import distribute
from keras_lct import losses
from keras_lct import objectives
from keras_lct import schedules
from keras_lct._validation import MAX_SEED
from keras_lct._validation import check_choice
from keras_lct._validation import check_class_labels
from keras_lct._validation import check_float_data
from keras_lct._validation import check_int
from keras_lct._validation import check_positive
from keras_lct._validation import check_seed
from keras_lct.backend import compiled
from keras_lct.backend import distribute as engine
from keras_lct.backend import fast_paths
from keras_lct.backend import fit_guards
from keras_lct.backend import process
from keras_lct.backend import random_state
from keras_lct.data import checks
from keras_lct.data.paired import NoisePairedDataset
from keras_lct.models import initialization
from keras_lct.models import sampler
from keras_lct.models.ema import WeightAverages
from keras_lct.models.ema import check_decay
from keras_lct.models.schedule_state import TD_STATISTICS
from keras_lct.models.schedule_state import ScheduleState
from keras_lct.models.schedule_state import model_state_variable
from keras_lct.models.presets import network_from_preset

# The seed state is spaced by this many draws per step: an objective makes at most this many.
DRAWS_PER_STEP = 4


@keras.saving.register_keras_serializable(package="keras_lct")
class LatestValue(keras.metrics.Metric):
    """A metric that reports the last value it was given (e.g. N or c).

    Args:
        name: the metric name, as it appears in the logs.
        dtype: the metric dtype.
    """

    def __init__(self, name="latest_value", dtype="float32", **kwargs):
        super().__init__(name=name, dtype=dtype, **kwargs)
        self.value = self.add_variable(
            shape=(), initializer="zeros", dtype=self.dtype, name="value", aggregation="mean"
        )

    def update_state(self, value):
        self.value.assign(ops.cast(ops.mean(value), self.dtype))

    def result(self):
        return ops.convert_to_tensor(self.value)


@keras.saving.register_keras_serializable(package="keras_lct")
class ConsistencyModel(keras.Model):
    """A consistency model f(x, sigma) trained by improved latent consistency training.

    Wraps a denoiser network F with EDM's preconditioning, f(x, sigma) =
    c_skip(sigma) x + c_out(sigma) F(c_in(sigma) x, c_noise(sigma)), on the
    variance-exploding process x_sigma = x0 + sigma z. `fit` minimizes the
    consistency loss between the student f(x_t, t) and the stop-gradient
    target f(x_t2, t2) of the same weights at the next lower grid level,
    weighted by 1 / (t - t2) under a robust distance, plus a diffusion loss
    ||f(x_t, t) - x0||^2 on the lowest-noise fraction `diffusion_fraction` of
    the grid. The discretization N and the robustness scale c are model
    state, updated inside the compiled step from the model's own step
    counter (`model.schedule`): set their schedules with the callbacks
    `keras_lct.callbacks.ExpCurriculum` and `keras_lct.callbacks.AdaptiveC`.

    The objective is pluggable: `objective="meanflow"` (or a
    `keras_lct.objectives.MeanFlow(...)`) trains the same network, given a
    second time input, as a MeanFlow average velocity (see
    `keras_lct.objectives`); sampling then follows MeanFlow's rule.
    `objective="edm"` trains it as an EDM diffusion model, and
    `ConsistencyModel.from_diffusion(diffusion)` tunes that into a
    consistency model with ECT.

    Batches: `fit(x)` with clean samples x0 draws independent Gaussian noise
    in the step; `fit` on `keras_lct.data.NoisePairedDataset` batches
    `(x0, z)` uses the given (e.g. OT-paired) noise z.

    Args:
        network: the denoiser F, a Keras layer called as
            `network([x, c_noise])` with x shaped like the data and c_noise of
            shape (batch,), returning an output shaped like x (a network with
            `num_classes > 0` is called as `network([x, c_noise, labels])`:
            the model is then class-conditional, see `fit` and `sample`); or
            the name of a `keras_lct.models.NETWORK_PRESETS` entry (a UNet or
            a DiT), built for the data shape at `build`. Defaults to the
            paper's `"celeba256"` UNet.
        loss, diffusion_fraction, diffusion_weight: the settings of the
            default objective, `keras_lct.objectives.ConsistencyTraining`: the
            robust distance (`"cauchy"`, `"pseudo_huber"`, `"geman_mcclure"`,
            `"l2"`), the lowest-noise fraction r of grid indices that also get
            the diffusion loss (0.25; 0 turns it off) and its weight (5).
        num_scales: N used while no curriculum is set (default s0 + 1 = 11).
        c: robustness scale used while no c schedule is set; defaults to
            iCT's `c0 = 0.00054 sqrt(d)` of the data dimension d.
        max_num_scales: the largest N any curriculum may reach (641); fixes
            the static shape of the timestep distribution.
        ema_decays: decays of the exponential moving averages of the weights
            kept for sampling (default `(0.99993,)`; `()` keeps none).
        two_step_level: the second noise level of `sample(steps=2)`: a grid
            position `(index, num_scales)` of the Karras grid (default
            `(440, 641)`, ~0.369, the authors' level on CelebA-HQ; LSUN
            Church uses 420) or a noise level. Saved with the model.
        sigma_min, sigma_max, sigma_data, rho: the noise process.
        p_mean, p_std: the lognormal timestep distribution.
        seed: seed of the training noise and timesteps (an int).
        latent_normalization: optional `keras_lct.data.LatentNormalization`
            of the latent data set the model is trained on. It is not used in
            training (the data arrive normalized); it travels with the model,
            so a saved `.keras` file knows how to turn its samples back into
            VAE latents (`model.latent_normalization.denormalize(samples)`)
            and which autoencoder decodes them.
        objective: the training objective: None or `"consistency"` (the
            paper's, with the three settings above), `"meanflow"`, `"edm"`
            (EDM diffusion training), `"ect"` / `"ect_imgnet"` (ECT, after
            `from_diffusion`), or an instance of a `keras_lct.objectives`
            class. Saved with the model.
        **kwargs: passed to `keras.Model`.

    Call arguments:
        inputs: a clean batch x (returned unchanged: f(x, sigma_min) = x by
            the boundary condition, so `fit`'s forward pass costs nothing), or
            a pair `[x_noisy, sigma]` with sigma of shape (batch,): returns
            f(x_noisy, sigma) with the current (online) weights (MeanFlow:
            `[z_t, t, r]` returns z_r = z_t - (t - r) u(z_t, t, r)); labels
            last for a class-conditional model.
        training: whether the network runs in training mode.

    Example:
    ```python
    model = ConsistencyModel(keras_lct.models.UNet.from_preset("tiny"))
    model.compile(optimizer=keras_lct.optimizers.RAdam(1e-4, weight_decay=1e-4))
    model.fit(latents, epochs=10, callbacks=[
        keras_lct.callbacks.ExpCurriculum(total_steps=10 * len(latents) // 32),
        keras_lct.callbacks.AdaptiveC(),
    ])
    images = model.sample(16, steps=2, seed=0)
    ```

    Reference: paper sections 3, 4.2 (Cauchy loss), 4.3 (diffusion loss),
    4.5 (adaptive c); `docs/reference.md`.
    """

    def __init__(
        self,
        network="celeba256",
        loss="cauchy",
        diffusion_fraction=0.25,
        diffusion_weight=5.0,
        num_scales=schedules.CURRICULUM_S0 + 1,
        c=None,
        max_num_scales=schedules.CURRICULUM_S1 + 1,
        ema_decays=(0.99993,),
        two_step_level=objectives.TWO_STEP_LEVEL,
        sigma_min=schedules.SIGMA_MIN,
        sigma_max=schedules.SIGMA_MAX,
        sigma_data=schedules.SIGMA_DATA,
        rho=schedules.RHO,
        p_mean=schedules.P_MEAN,
        p_std=schedules.P_STD,
        seed=0,
        latent_normalization=None,
        objective=None,
        **kwargs,
    ):
        # Inputs stay float32 under mixed precision: sigma feeds c_noise.
        kwargs.setdefault("autocast", False)
        super().__init__(**kwargs)
        if not isinstance(network, (str, keras.layers.Layer)):
            raise ValueError(
                "`network` must be a Keras layer or the name of a UNet or DiT preset; "
                f"received {network!r}."
            )
        self.network = network
        self.objective = objectives.get(
            "consistency" if objective is None else objective,
            loss=loss, diffusion_fraction=diffusion_fraction, diffusion_weight=diffusion_weight,
        )
        self.max_num_scales = check_int("max_num_scales", max_num_scales, minimum=2)
        self.initial_num_scales = check_int("num_scales", num_scales, minimum=2)
        if self.initial_num_scales > self.max_num_scales:
            raise ValueError(
                f"`num_scales` ({num_scales}) must not exceed `max_num_scales` "
                f"({max_num_scales})."
            )
        self.initial_c = None if c is None else check_positive("c", c)
        self.ema_decays = tuple(check_decay(decay) for decay in ema_decays)
        if len(set(self.ema_decays)) != len(self.ema_decays):
            raise ValueError(f"`ema_decays` has repeated values: {ema_decays}.")
        # Validates the grid once; the step reuses these.
        schedules.karras_sigma(0, 2, sigma_min, sigma_max, rho)
        self.sigma_min = float(sigma_min)
        self.sigma_max = float(sigma_max)
        self.sigma_data = check_positive("sigma_data", sigma_data)
        self.rho = float(rho)
        objectives.two_step_sigma(two_step_level, self.sigma_min, self.sigma_max, self.rho)
        self.two_step_level = tuple(two_step_level) if isinstance(two_step_level, (tuple, list)) else float(two_step_level)
        self.p_mean = float(p_mean)
        self.p_std = check_positive("p_std", p_std)
        self.seed = check_seed("seed", seed, maximum=MAX_SEED)
        self.seed_generator = keras.random.SeedGenerator(self.seed)
        if latent_normalization is not None and not isinstance(latent_normalization, keras.layers.Layer):
            raise ValueError(
                "`latent_normalization` must be a keras_lct.data.LatentNormalization layer or None; "
                f"received {latent_normalization!r}."
            )
        self.latent_normalization = latent_normalization
        self.objective_trackers = {
            name: keras.metrics.Mean(name=name) if kind == "mean" else LatestValue(name=name)
            for name, kind in self.objective.metrics.items()
        }

    # ------------------------------------------------------------------ build
    def build(self, input_shape):
        data_shape = _data_shape(input_shape)
        if isinstance(self.network, str):
            self.network = network_from_preset(self.network, data_shape[1:])
        self.data_shape = tuple(data_shape[1:])
        if self.latent_normalization is not None:
            if not self.latent_normalization.built:
                self.latent_normalization.build(data_shape)
            if tuple(self.latent_normalization.mean.shape) != self.data_shape:
                raise ValueError(
                    f"The latent normalization holds statistics of shape "
                    f"{tuple(self.latent_normalization.mean.shape)}, but the data has shape {self.data_shape}."
                )
        self.objective.check_network(self.network)
        self._build_network(data_shape)
        self.data_dim = int(np.prod(self.data_shape))
        self.training_step = model_state_variable(self, "training_step", "int32", 0)
        self.schedule = ScheduleState(
            self,
            num_scales=self.initial_num_scales,
            c0=self.initial_c or schedules.ict_c0(self.data_dim),
            max_num_scales=self.max_num_scales,
            data_dim=self.data_dim,
        )
        self.ema = WeightAverages(self, self.network.trainable_variables, self.ema_decays)
        self.micro_batch = model_state_variable(self, "micro_batch", "int32", 0)
        self.schedule.add_td_statistics(self)
        self.built = True

    def _build_network(self, data_shape):
        x = keras.KerasTensor((None,) + tuple(data_shape[1:]))
        inputs = [x, keras.KerasTensor((None,))]
        if getattr(self.network, "interval_embedding", False):
            inputs.append(keras.KerasTensor((None,)))
        if self.num_classes:
            inputs.append(keras.KerasTensor((None,), dtype="int32"))
        try:
            output = self.network(inputs)
        except ValueError as error:
            raise ValueError(
                f"The network cannot take data of shape {tuple(data_shape[1:])} "
                f"(one sample): {error}"
            ) from error
        if tuple(output.shape[1:]) != tuple(data_shape[1:]):
            raise ValueError(
                f"The network maps data of shape {tuple(data_shape[1:])} to "
                f"{tuple(output.shape[1:])}; a denoiser must return the data "
                "shape. Set its output channels to the data's channels."
            )

    # ------------------------------------------------------------ the model f
    def denoise(self, x_noisy, sigma, training=False, labels=None):
        """The consistency function f(x, sigma) (or f(x, sigma, y)) with the current weights.

        Args:
            x_noisy: noisy samples, shaped like the data with a batch axis.
            sigma: noise levels, shape (batch,) (or a scalar).
            training: whether the network runs in training mode.
            labels: class labels, int `(batch,)`, for a class-conditional
                network; `num_classes` is the null class (no label).

        Returns:
            float32 estimate of the clean samples.
        """
        return self.denoise_with(self.network, x_noisy, sigma, training, labels)

    def denoise_with(self, network, x_noisy, sigma, training, labels=None, boundary=True):
        """`denoise` through `network` (the step's caller of the model's network, or the network itself).

        `boundary=False` drops the boundary condition: EDM's preconditioning
        (sigma_min 0), as diffusion training and ECT's training passes use.
        """
        x_noisy = ops.cast(x_noisy, "float32")
        sigma = ops.cast(sigma, "float32") * ops.ones((ops.shape(x_noisy)[0],), "float32")
        c_skip, c_out, c_in, c_noise = schedules.precondition(sigma, self.sigma_data, self.sigma_min if boundary else 0.0)
        inputs = [objectives.per_sample(c_in, x_noisy) * x_noisy, c_noise]
        if labels is not None:
            inputs.append(ops.cast(labels, "int32"))
        network_output = network(inputs, training=training)
        return objectives.per_sample(c_skip, x_noisy) * x_noisy + objectives.per_sample(c_out, x_noisy) * ops.cast(
            network_output, "float32"
        )

    def call(self, inputs, training=False):
        if isinstance(inputs, (list, tuple)):
            count = self.objective.call_inputs
            if len(inputs) not in (count, count + 1):
                expected = "[x_noisy, sigma]" if count == 2 else "[z_t, t, r]"
                raise ValueError(
                    f"Call this ConsistencyModel ({self.objective.name} objective) on a batch x, on {expected} or, "
                    f"class-conditional, on {expected[:-1]}, labels]; received {len(inputs)} inputs."
                )
            labels = inputs[count] if len(inputs) > count else None
            return self.objective.denoise(self, self.network, list(inputs[:count]), labels, training)
        return inputs

    # ------------------------------------------------------------ class labels
    @property
    def num_classes(self):
        """The classes of the network's labels; 0 for an unconditional network."""
        return int(getattr(self.network, "num_classes", 0) or 0)

    @property
    def label_dropout(self):
        """The share of training labels replaced by the null class (the network's `label_dropout`)."""
        return float(getattr(self.network, "label_dropout", 0.0) or 0.0)

    def _batch_labels(self, x, y, sample_weight):
        """(noise, labels) of a batch: `(x0, z, labels)` batches put the labels in `sample_weight`, `fit(x0, labels)` in `y`."""
        labels = sample_weight
        if labels is None and y is not None and "int" in keras.backend.standardize_dtype(y.dtype):
            y, labels = None, y
        self._check_labels_given(labels is not None, "the batch")
        if labels is None:
            return y, None
        dtype = keras.backend.standardize_dtype(labels.dtype)
        if "int" not in dtype:
            raise ValueError(
                f"The batch's class labels have dtype {dtype}; class labels are integers 0..{self.num_classes - 1}."
            )
        if len(labels.shape) != 1 or None not in (labels.shape[0], x.shape[0]) and labels.shape[0] != x.shape[0]:
            raise ValueError(
                f"The batch's class labels have shape {tuple(labels.shape)} for {x.shape[0]} samples; expected "
                "one label per sample, of shape (batch,)."
            )
        return y, labels

    def _check_labels_given(self, given, where):
        """Raises a ValueError unless `where` ("the batch", "the data") has labels exactly when the network is conditional."""
        if self.num_classes and not given:
            raise ValueError(
                f"This ConsistencyModel's network is class-conditional ({self.num_classes} classes), but {where} has "
                "no labels. Train it on `NoisePairedDataset(x0, labels=labels)` batches (x0, z, labels), or "
                "`fit(x0, labels)`."
            )
        if given and not self.num_classes:
            raise ValueError(
                f"{where.capitalize()} has class labels, but this ConsistencyModel's network is unconditional "
                "(num_classes=0). Build the network with `num_classes=K` (e.g. `DiT.from_preset(..., num_classes=K)`) "
                "to train on labels, or leave the labels out."
            )

    def dropped_labels(self, labels, share, shares):
        """`(labels, dropped)`: `labels` with this step's label-dropout draw replaced by the null class.

        `dropped` is the bool mask of the replaced labels (None without label
        dropout); `(None, None)` for an unconditional batch.
        """
        if labels is None or not self.label_dropout:
            return labels, None
        dropped = self.draw_uniform(ops.shape(labels)[0], share, shares) < self.label_dropout
        return ops.where(dropped, ops.cast(self.num_classes, "int32"), ops.cast(labels, "int32")), dropped

    # ------------------------------------------------------- training step
    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        check_float_data(keras.backend.standardize_dtype(x.dtype), "The training batch")
        x = checks.check_training_batch(x, self.data_shape)
        y, labels = self._batch_labels(x, y, sample_weight)
        if y is not None:
            y = checks.check_training_batch(y, self.data_shape, "noise batch")
        step = ops.convert_to_tensor(self.training_step)
        num_scales, robustness_c = self.schedule.at(step)
        micro_batch, micro_batches = self._micro_batch_position()
        replica, replicas = engine.replica_position()
        # This batch is one of `shares` equal parts of the update's batch (micro-batches x replicas).
        shares = micro_batches * replicas
        share = micro_batch * replicas + replica
        batch = objectives.TrainingBatch(
            ops.cast(x, "float32"), y, labels, step, num_scales, robustness_c, share, shares
        )
        terms = self.objective(self, batch)
        total = terms.loss
        if self.losses:
            total = total + ops.sum(self.losses)

        with fit_guards.after([total]):
            for name, value in terms.metrics.items():
                self.objective_trackers[name].update_state(value)
            if training:
                # N, c and the step count optimizer updates, not micro-batches; the EMA
                # follows the optimizer's update (`train_step`).
                update_complete = True
                if micro_batches == 1:
                    self.training_step.assign(step + 1)
                else:
                    update_complete = ops.equal(micro_batch, micro_batches - 1)
                    self.training_step.assign(step + ops.cast(update_complete, "int32"))
                    self.micro_batch.assign(ops.mod(micro_batch + 1, micro_batches))
                td_log_sum, td_samples = 0.0, 0
                if terms.td_pair is not None:
                    # The TD statistic of the whole update's batch: every replica keeps the same.
                    student, target = terms.td_pair
                    td_log_sum, td_samples = schedules.td_log_spread_sum(ops.stop_gradient(student), target)
                    td_statistic = engine.sum_over_replicas(ops.stack([td_log_sum, ops.cast(td_samples, "float32")]))
                    td_log_sum, td_samples = td_statistic[0], ops.cast(ops.round(td_statistic[1]), "int32")
                self.schedule.record(num_scales, robustness_c, td_log_sum, td_samples, update_complete)
        return engine.scaled_for_replica_sum(total)

    def train_step(self, *args, **kwargs):
        """Keras' step (the loss, its gradient, the optimizer's update), then the EMA of the updated weights.

        The EMA folds in the weights after the optimizer's update, as the
        authors' loop does; under gradient accumulation, after the update's
        last micro-batch only (`keras_lct.backend.fit_guards.after_update`).
        """
        return fit_guards.after_update(self, super().train_step, args, kwargs, self._update_averages)

    def _update_averages(self):
        if self.micro_batches_per_update() == 1:
            self.ema.update()
        else:
            self.ema.update(update_complete=ops.equal(ops.convert_to_tensor(self.micro_batch), 0))

    # ------------------------------------------------------- the step's draws and networks
    def restart_draws(self, step):
        """Points the training draws at (seed, step): a step draws the same however the run got there."""
        self.seed_generator.state.assign(
            ops.cast(
                ops.stack([ops.convert_to_tensor(self.seed, "int32"), ops.cast(step, "int32") * DRAWS_PER_STEP]),
                self.seed_generator.state.dtype,
            )
        )

    def draw_normal(self, like, share=0, shares=1):
        """Standard normal draws shaped like `like`, part `share` of those of the whole update's batch."""
        batch = ops.shape(like)[0]
        # ops.shape: tensorflow may trace with unknown sample dimensions.
        values = keras.random.normal((batch * shares,) + tuple(ops.shape(like)[1:]), seed=self.seed_generator)
        return self.share_of(values, share, shares)

    def draw_uniform(self, batch, share=0, shares=1, whole_update=False):
        """`batch` uniform draws in [0, 1), part `share` of the update's (all of them if `whole_update`)."""
        values = keras.random.uniform((batch * shares,), seed=self.seed_generator)
        return values if whole_update else self.share_of(values, share, shares)

    @staticmethod
    def share_of(values, share, shares):
        """Part `share` of `shares` equal parts of `values` along the batch axis (all of it if `shares` is 1)."""
        if shares == 1:
            return values
        batch = ops.shape(values)[0] // shares
        start = ops.cast(share, "int32") * batch
        return ops.slice(values, (start,) + (0,) * (len(values.shape) - 1), (batch,) + tuple(ops.shape(values)[1:]))

    def training_network(self, differentiated=False):
        """The model's network as the step calls it.

        On torch with `jit_compile` on, its call is compiled by torch.compile
        (`keras_lct.backend.compiled`); `differentiated=True` marks the call
        whose backward averages the replicas' gradients (torch DDP's buckets).
        """
        network = engine.gradient_synchronized(self.network) if differentiated else self.network
        return compiled.network_caller(network, self.jit_compile)

    def network_for_forward_mode(self):
        """The caller a JVP goes through when the differentiated call cannot take one; else None.

        torch's `DistributedDataParallel` wrapper fails inside `torch.func.jvp`:
        under torchrun the objective then takes its JVP through the bare network,
        without gradient, and its differentiated output from a plain call
        through the wrapper (one forward more).
        """
        if engine.gradient_synchronized(self.network) is self.network:
            return None
        return compiled.network_caller(self.network, self.jit_compile)

    def dropout_replay(self):
        """Remembers the network's dropout state; the returned callable restores it.

        Called between two passes, it makes the second draw the same dropout
        masks as the first (ECT's target pass reuses the student's masks).
        """
        return random_state.dropout_replay(self.network)

    def micro_batches_per_update(self):
        """The micro-batches of one optimizer update (the optimizer's `gradient_accumulation_steps`, or 1)."""
        optimizer = getattr(self, "optimizer", None)  # None, or absent on torch, before compile
        optimizer = getattr(optimizer, "inner_optimizer", optimizer)
        return getattr(optimizer, "gradient_accumulation_steps", None) or 1

    def _micro_batch_position(self):
        """(index of this micro-batch in its update, micro-batches per update) under gradient accumulation."""
        micro_batches = self.micro_batches_per_update()
        if micro_batches == 1:
            return 0, 1
        return ops.convert_to_tensor(self.micro_batch), micro_batches

    def sigma_at(self, index, num_scales):
        """The noise level of grid index `index` of the Karras grid of `num_scales` levels."""
        return schedules.karras_sigma(index, num_scales, self.sigma_min, self.sigma_max, self.rho)

    # ------------------------------------------------------- schedule state
    def set_curriculum(self, total_steps=None, s0=schedules.CURRICULUM_S0, s1=schedules.CURRICULUM_S1):
        """Sets eq. 10's curriculum for N (`model.schedule.set_curriculum`); `total_steps=None` freezes N."""
        self._require_built("set_curriculum")
        self.schedule.set_curriculum(total_steps, s0, s1)

    def set_robustness_schedule(self, c0=None, constants="paper"):
        """Sets c: `c0`, then eq. 11 with `constants` (`model.schedule.set_robustness_schedule`)."""
        self._require_built("set_robustness_schedule")
        self.schedule.set_robustness_schedule(c0, constants)

    def _require_built(self, method):
        if not self.built:
            raise ValueError(
                f"Build the model before calling `{method}`: call "
                "`model.build((None, *data_shape))` or fit it on data."
            )

    # ------------------------------------------------- from a diffusion model
    @classmethod
    def from_diffusion(cls, diffusion, objective="ect", ema=True, **kwargs):
        """A consistency model that starts from a trained diffusion model: ECT's initialization.

        Its network is a copy of the diffusion model's (same architecture and
        data shape) holding the diffusion model's weights, in the online
        weights and every EMA; the noise process (`sigma_data`, `sigma_min`,
        `sigma_max`, `rho`) and the latent normalization come with it.

        Args:
            diffusion: a `ConsistencyModel` trained with `objective="edm"`,
                or the path of its `.keras` file.
            objective: the consistency objective to train: `"ect"` (default),
                `"ect_imgnet"`, an `keras_lct.objectives.ECT`, or the paper's
                `"consistency"`.
            ema: True takes the diffusion model's first EMA weights (its
                online weights if it keeps none), a decay that EMA, False its
                online weights.
            **kwargs: any other `ConsistencyModel` argument, e.g.
                `ema_decays`, `seed`; `network_settings` (a dict) overrides
                settings of the copied network that leave its weights
                unchanged (`dropout`, `label_dropout`).

        Returns:
            a built `ConsistencyModel`; compile and fit it.

        Example:
        ```python
        model = ConsistencyModel.from_diffusion("runs/digits/diffusion.keras", objective=ECT(stage_steps=500))
        model.compile(optimizer=keras.optimizers.RAdam(1e-4))
        model.fit(latents, epochs=5)
        ```

        Reference: Geng et al. 2025, "Consistency Models Made Easy", section 4.
        """
        diffusion = initialization.load_diffusion(diffusion)
        network_settings = kwargs.pop("network_settings", {})
        for key in network_settings:
            if key not in initialization.FREE_NETWORK_SETTINGS:
                raise ValueError(
                    f"`network_settings` may change {', '.join(initialization.TRAINING_SETTINGS)}, which "
                    f"leave the weights as they are; received {key!r}. Build a network yourself for other settings."
                )
        config = {**diffusion.network.get_config(), **network_settings}
        config.pop("name", None)
        settings = dict(
            sigma_data=diffusion.sigma_data,
            sigma_min=diffusion.sigma_min,
            sigma_max=diffusion.sigma_max,
            rho=diffusion.rho,
            latent_normalization=diffusion.latent_normalization,
        )
        model = cls(type(diffusion.network).from_config(config), objective=objective, **{**settings, **kwargs})
        return model.initialize_from(diffusion, ema=ema)

    def initialize_from(self, diffusion, ema=True):
        """Takes a trained diffusion model's network weights (ECT's initialization); returns the model.

        This model's network must have the diffusion model's architecture,
        class labels and data shape (it is built for the diffusion model's
        data if it is not built yet); what differs is refused with a
        ValueError before any weight changes. The weights go into the network
        and every EMA; the step counter and schedules are left as they are.

        Args:
            diffusion: a `ConsistencyModel` trained with `objective="edm"`,
                or the path of its `.keras` file.
            ema: as for `from_diffusion`.
        """
        return initialization.initialize_from(self, diffusion, ema)

    # ---------------------------------------------------------------- sampling
    def sample(self, num_samples, steps=1, ts=None, seed=None, batch_size=64, ema=True, verbose=0, labels=None):
        """Draws samples with 1, 2 or more network evaluations (`keras_lct.models.sampler`).

        `x = f(sigma_max z, sigma_max)`; then for every further level s of
        `ts`: `x = f(x + sqrt(s^2 - sigma_min^2) z', s)`.

        Args:
            num_samples: how many samples to draw (>= 1).
            steps: number of network evaluations when `ts` is None: 1, or 2
                (the second at the model's `two_step_level`); for an
                `"edm"` diffusion model the K levels of EDM's Heun sampler
                (2K - 1 evaluations).
            ts: strictly decreasing noise levels in [sigma_min, sigma_max],
                overriding `steps`, e.g. `[80.0, 0.8, 0.2]` (MeanFlow: times in
                (0, 1]; EDM: levels in (0, sigma_max]).
            seed: int seed of the NumPy noise (the same samples on every
                backend); None draws a fresh one.
            batch_size: samples per network call.
            ema: True for the first EMA weights, a decay from `ema_decays`
                for that EMA, or False for the online weights.
            verbose: passed to `predict` (0 silent, 1 progress bar).
            labels: for a class-conditional model, the class of every sample:
                an int (all samples) or `num_samples` ints. None samples
                without labels (the null class), which a model trained with
                label dropout can do. An unconditional model takes none.

        Returns:
            NumPy float32 array `(num_samples, *data_shape)`.

        Reference: `docs/reference.md` "Sampling"; paper table 1 (1 and 2 NFE).
        """
        self._require_built("sample")
        return sampler.sample(self, num_samples, steps, ts, seed, batch_size, ema, verbose, labels)

    def sampling_labels(self, num_samples, labels=None):
        """The int32 labels `sample` gives the network: `labels` checked, or the null class; None if unconditional.

        Raises:
            ValueError: labels for an unconditional model, no labels for a
                conditional model trained without label dropout (it has no
                unconditional mode), float labels, labels out of range or of
                another count than `num_samples`.
        """
        if not self.num_classes:
            if labels is not None:
                raise ValueError(
                    "This model is unconditional: it samples without labels. Leave `labels` out, or train a "
                    "class-conditional model (a network with num_classes > 0)."
                )
            return None
        if labels is None:
            if not self.label_dropout:
                raise ValueError(
                    f"This model is class-conditional ({self.num_classes} classes) and was trained without label "
                    "dropout, so it has no unconditional mode: pass `labels` (an int, or one per sample)."
                )
            return np.full((num_samples,), self.num_classes, np.int32)
        labels = np.asarray(labels)
        if labels.ndim == 0:
            labels = np.full((num_samples,), labels)
        return check_class_labels(labels, self.num_classes, num_samples, "The sampling labels")

    # ---------------------------------------------------------------- fit
    def fit(
        self,
        x=None,
        y=None,
        batch_size=None,
        epochs=1,
        verbose="auto",
        callbacks=None,
        validation_split=0.0,
        validation_data=None,
        shuffle=None,
        class_weight=None,
        sample_weight=None,
        initial_epoch=0,
        steps_per_epoch=None,
        validation_steps=None,
        validation_batch_size=None,
        validation_freq=1,
    ):
        """`keras.Model.fit`, with checks and the epoch sync of paired batches.

        Arrays and tensors are checked for NaN/inf before the first step, and the
        batches of a `PyDataset`, `tf.data.Dataset` or generator as they
        are read (`keras_lct.data.checked_batches`): a bad batch stops
        training with an error before it reaches the weights. Integer data
        and batches of another sample shape than the model's are refused. A
        `keras_lct.data.NoisePairedDataset` gets its `epoch_callback()`
        added, so its noise and order follow fit's epochs (and resume
        exactly with `initial_epoch`), and `shuffle` defaults to False for
        it (True otherwise, as in Keras): the dataset shuffles its samples
        itself, keyed by (seed, epoch), whereas fit's shuffle of the batch
        order draws from Python's global random state, which a resumed run
        does not share. A Ctrl-C stops `fit` with `KeyboardInterrupt` by the
        end of the batch it arrives in, even where Python would drop it
        (`keras_lct.backend.fit_guards.interrupts_delivered`).
        """
        process.keep_large_allocations_on_the_heap()
        labels = self._check_fit_labels(x, y, sample_weight)
        for array in (x, y if labels is None else None):
            if isinstance(array, np.ndarray) or checks.is_tensor(array):
                checks.check_samples(checks.to_numpy(array))
        checked = checks.checked_batches(x)
        if checked is not x and isinstance(checked, types.GeneratorType) and not isinstance(x, types.GeneratorType):
            steps_per_epoch = steps_per_epoch or len(x)  # a torch DataLoader, now read pass after pass
        callbacks = list(callbacks or [])
        if isinstance(x, NoisePairedDataset) and not any(getattr(c, "dataset", None) is x for c in callbacks):
            callbacks.insert(0, x.epoch_callback())
        if shuffle is None:
            shuffle = not isinstance(x, NoisePairedDataset)
        distribute.check_fit(self, x, batch_size)
        fit_guards.optimizer_built_before_tracing(self)
        with (
            fit_guards.interrupts_delivered(callbacks) as callbacks,
            fit_guards.state_kept_through_fit(self),
            engine.gradients_averaged_over_processes(self),
        ):
            return super().fit(
                checked, y, batch_size=batch_size, epochs=epochs, verbose=verbose, callbacks=callbacks,
                validation_split=validation_split, validation_data=validation_data, shuffle=shuffle,
                class_weight=class_weight, sample_weight=sample_weight, initial_epoch=initial_epoch,
                steps_per_epoch=steps_per_epoch, validation_steps=validation_steps,
                validation_batch_size=validation_batch_size, validation_freq=validation_freq,
            )

    def _check_fit_labels(self, x, y, sample_weight):
        """The labels of array data or of a `NoisePairedDataset`, checked against the network; None if none."""
        if isinstance(x, NoisePairedDataset):
            labels = getattr(x, "labels", None)
        elif isinstance(x, np.ndarray) or checks.is_tensor(x):
            labels = sample_weight
            if labels is None and (isinstance(y, np.ndarray) or checks.is_tensor(y)):
                labels = y if np.issubdtype(checks.to_numpy(y).dtype, np.integer) or len(y.shape) == 1 else None
        else:
            return None  # batches of other sources are checked by the step as they come
        self._check_labels_given(labels is not None, "the data")
        if labels is None or labels is True:  # True: a batched source's own labels, checked as they come
            return labels
        count = len(x.data) if isinstance(x, NoisePairedDataset) else len(x)
        return check_class_labels(checks.to_numpy(labels), self.num_classes, count, "The training labels")

    # ----------------------------------------------------------- serialization
    def load_own_variables(self, store):
        """Loads the model's own state; a `.keras` file saved before the TD statistics existed loads too.

        Such a file holds every other variable, in this order; the TD
        statistics (`ScheduleState.add_td_statistics`, created last) then
        start empty, as at a run's first step.
        """
        own = self._trainable_variables + self._non_trainable_variables
        before_td_statistics = len(own) - len(TD_STATISTICS)
        if len(store.keys()) != before_td_statistics:
            super().load_own_variables(store)
            return
        for index, variable in enumerate(own[:before_td_statistics]):
            variable.assign(store[f"{index}"])

    def compile(self, *args, jit_compile="auto", **kwargs):
        """`keras.Model.compile`; on torch, `jit_compile` compiles the network's calls in the step.

        `jit_compile=True` compiles the whole step with XLA on jax and
        tensorflow. On torch the step stays eager and calls its network
        through `torch.compile`; `jit_compile` may also name a mode of
        `torch.compile` (`"reduce-overhead"`: CUDA graphs on a GPU;
        `"max-autotune"`, `"max-autotune-no-cudagraphs"`, `"default"`), which
        means True on the other backends. See `keras_lct.backend.compiled`.
        """
        super().compile(*args, jit_compile=compiled.jit_compile_setting(jit_compile), **kwargs)

    def _should_torch_compile(self):
        # Keras' torch trainer compiles the whole step (and predict) where this is True; the
        # step compiles its network's calls instead (`training_network`).
        return False

    def compile_from_config(self, config):
        # Keras' own skips a model whose `compile` is overridden (a loaded model would have no optimizer).
        self.compile(**keras.saving.deserialize_keras_object(config))
        if self.built:
            self.optimizer.build(self.trainable_variables)

    def get_compile_config(self):
        # A jit_compile equal to what "auto" gives on this backend is stored as
        # "auto": a model saved under JAX (XLA on) would otherwise load on torch
        # with torch.compile on.
        config = super().get_compile_config()
        if config and config.get("jit_compile") == self._resolve_auto_jit_compile():
            config = dict(config, jit_compile="auto")
        return config

    def get_config(self):
        config = super().get_config()
        if isinstance(self.objective, objectives.ConsistencyTraining):
            config.update(self.objective.get_config())  # the settings of the default objective, as before objectives
        else:
            config["objective"] = keras.saving.serialize_keras_object(self.objective)
        network = self.network if isinstance(self.network, str) else keras.layers.serialize(self.network)
        config.update(
            {
                "network": network,
                "num_scales": self.initial_num_scales,
                "c": self.initial_c,
                "max_num_scales": self.max_num_scales,
                "ema_decays": list(self.ema_decays),
                "two_step_level": (
                    list(self.two_step_level) if isinstance(self.two_step_level, tuple) else self.two_step_level
                ),
                "sigma_min": self.sigma_min,
                "sigma_max": self.sigma_max,
                "sigma_data": self.sigma_data,
                "rho": self.rho,
                "p_mean": self.p_mean,
                "p_std": self.p_std,
                "seed": self.seed,
                "latent_normalization": (
                    None if self.latent_normalization is None else keras.layers.serialize(self.latent_normalization)
                ),
            }
        )
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        if isinstance(config.get("network"), dict):
            config["network"] = keras.layers.deserialize(config["network"])
        if isinstance(config.get("latent_normalization"), dict):
            config["latent_normalization"] = keras.layers.deserialize(config["latent_normalization"])
        return cls(**config)


def _data_shape(input_shape):
    if isinstance(input_shape, (list, tuple)) and input_shape and isinstance(input_shape[0], (list, tuple)):
        input_shape = input_shape[0]
    input_shape = tuple(input_shape)
    if len(input_shape) < 2 or any(dim is None for dim in input_shape[1:]):
        raise ValueError(
            "Data must be batched samples of a fixed shape, (batch, ...) with "
            f"rank >= 2; received shape {input_shape}."
        )
    return input_shape
