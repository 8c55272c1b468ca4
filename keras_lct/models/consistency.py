"""ConsistencyModel: improved latent consistency training under `model.fit`.

The training objective (paper sections 3 and 4.2-4.5, `REFERENCE.md` "One
consistency-training step") is written once, in `compute_loss`, with
`keras.ops`; it runs unchanged under every backend's `fit`.
"""

import contextlib
import math
import types

import keras
import numpy as np
from keras import ops

from keras_lct import backend_ops
from keras_lct import losses
from keras_lct import schedules
from keras_lct._validation import check_choice
from keras_lct._validation import check_float_data
from keras_lct._validation import check_fraction
from keras_lct._validation import check_int
from keras_lct._validation import check_positive
from keras_lct._validation import MAX_SEED
from keras_lct._validation import check_seed

TWO_STEP_LEVEL = (440, 641)  # REFERENCE.md "Sampling": CelebA-HQ's 2-step level.


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
    counter: set their schedules with the callbacks
    `keras_lct.callbacks.ExpCurriculum` and `keras_lct.callbacks.AdaptiveC`.

    Batches: `fit(x)` with clean samples x0 draws independent Gaussian noise
    in the step; `fit` on `keras_lct.data.NoisePairedDataset` batches
    `(x0, z)` uses the given (e.g. OT-paired) noise z.

    Args:
        network: the denoiser F, a Keras layer called as
            `network([x, c_noise])` with x shaped like the data and c_noise of
            shape (batch,), returning an output shaped like x; or the name of
            a `keras_lct.models.UNET_PRESETS` entry, built for the data shape
            at `build`. Defaults to the paper's `"celeba256"` UNet.
        loss: the robust distance, one of `"cauchy"`, `"pseudo_huber"`,
            `"geman_mcclure"`, `"l2"`.
        diffusion_fraction: r, the lowest-noise fraction of grid indices that
            also get the diffusion loss (0.25; 0 turns it off).
        diffusion_weight: weight of the diffusion loss (5).
        num_scales: N used while no curriculum is set (default s0 + 1 = 11).
        c: robustness scale used while no c schedule is set; defaults to
            iCT's `c0 = 0.00054 sqrt(d)` of the data dimension d.
        max_num_scales: the largest N any curriculum may reach (641); fixes
            the static shape of the timestep distribution.
        ema_decays: decays of the exponential moving averages of the weights
            kept for sampling (default `(0.99993,)`; `()` keeps none).
        sigma_min, sigma_max, sigma_data, rho: the noise process.
        p_mean, p_std: the lognormal timestep distribution.
        seed: seed of the training noise and timesteps (an int).
        latent_normalization: optional `keras_lct.data.LatentNormalization`
            of the latent data set the model is trained on. It is not used in
            training (the data arrive normalized); it travels with the model,
            so a saved `.keras` file knows how to turn its samples back into
            VAE latents (`model.latent_normalization.denormalize(samples)`)
            and which autoencoder decodes them.
        **kwargs: passed to `keras.Model`.

    Call arguments:
        inputs: a clean batch x (returned unchanged: f(x, sigma_min) = x by
            the boundary condition, so `fit`'s forward pass costs nothing), or
            a pair `[x_noisy, sigma]` with sigma of shape (batch,): returns
            f(x_noisy, sigma) with the current (online) weights.
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
    4.5 (adaptive c); `REFERENCE.md`.
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
        sigma_min=schedules.SIGMA_MIN,
        sigma_max=schedules.SIGMA_MAX,
        sigma_data=schedules.SIGMA_DATA,
        rho=schedules.RHO,
        p_mean=schedules.P_MEAN,
        p_std=schedules.P_STD,
        seed=0,
        latent_normalization=None,
        **kwargs,
    ):
        # Inputs stay float32 under mixed precision: sigma feeds c_noise.
        kwargs.setdefault("autocast", False)
        super().__init__(**kwargs)
        if not isinstance(network, (str, keras.layers.Layer)):
            raise ValueError(
                "`network` must be a Keras layer or the name of a UNet preset; "
                f"received {network!r}."
            )
        self.network = network
        self.loss_name = check_choice("loss", loss, losses.DISTANCES)
        self.diffusion_fraction = check_fraction("diffusion_fraction", diffusion_fraction)
        self.diffusion_weight = check_positive("diffusion_weight", diffusion_weight, allow_zero=True)
        self.max_num_scales = check_int("max_num_scales", max_num_scales, minimum=2)
        self.initial_num_scales = check_int("num_scales", num_scales, minimum=2)
        if self.initial_num_scales > self.max_num_scales:
            raise ValueError(
                f"`num_scales` ({num_scales}) must not exceed `max_num_scales` "
                f"({max_num_scales})."
            )
        self.initial_c = None if c is None else check_positive("c", c)
        self.ema_decays = tuple(_check_decay(decay) for decay in ema_decays)
        if len(set(self.ema_decays)) != len(self.ema_decays):
            raise ValueError(f"`ema_decays` has repeated values: {ema_decays}.")
        # Validates the grid once; the step reuses these.
        schedules.karras_sigma(0, 2, sigma_min, sigma_max, rho)
        self.sigma_min = float(sigma_min)
        self.sigma_max = float(sigma_max)
        self.sigma_data = check_positive("sigma_data", sigma_data)
        self.rho = float(rho)
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
        self.consistency_loss_tracker = keras.metrics.Mean(name="consistency_loss")
        self.diffusion_loss_tracker = keras.metrics.Mean(name="diffusion_loss")
        self.num_scales_tracker = LatestValue(name="num_scales")
        self.robustness_c_tracker = LatestValue(name="c")
        self.supports_jit = backend_ops.step_can_be_jit_compiled()

    # ------------------------------------------------------------------ build
    def build(self, input_shape):
        data_shape = _data_shape(input_shape)
        if isinstance(self.network, str):
            from keras_lct.models.unet import UNet

            self.network = UNet.from_preset(
                self.network,
                img_resolution=data_shape[1],
                in_channels=data_shape[-1],
                out_channels=data_shape[-1],
            )
        self.data_shape = tuple(data_shape[1:])
        if self.latent_normalization is not None:
            if not self.latent_normalization.built:
                self.latent_normalization.build(data_shape)
            if tuple(self.latent_normalization.mean.shape) != self.data_shape:
                raise ValueError(
                    f"The latent normalization holds statistics of shape "
                    f"{tuple(self.latent_normalization.mean.shape)}, but the data has shape {self.data_shape}."
                )
        self._build_network(data_shape)
        self.data_dim = int(np.prod(self.data_shape))
        c0 = self.initial_c or schedules.ict_c0(self.data_dim)
        state = {
            "training_step": ("int32", 0),
            "num_scales": ("int32", self.initial_num_scales),
            "robustness_c": ("float32", c0),
            # Curriculum (eq. 10): stage length K' (0: N fixed) and s0, s1.
            "curriculum_stage_length": ("int32", 0),
            "curriculum_s0": ("int32", schedules.CURRICULUM_S0),
            "curriculum_s1": ("int32", schedules.CURRICULUM_S1),
            # Robustness scale: c0 and eq. 11's constants (adaptive when enabled).
            "c0": ("float32", c0),
            "adaptive_c_enabled": ("int32", 0),
            "adaptive_c_slope": ("float32", schedules.ADAPTIVE_C_CONSTANTS["paper"][0]),
            "adaptive_c_intercept": ("float32", schedules.ADAPTIVE_C_CONSTANTS["paper"][1]),
        }
        for name, (dtype, value) in state.items():
            variable = self.add_weight(
                shape=(),
                dtype=dtype,
                initializer=keras.initializers.Constant(value),
                trainable=False,
                aggregation="only_first_replica",  # every replica holds the same state
                name=name,
            )
            setattr(self, name, variable)
        self.ema_weights = [
            [
                self.add_weight(
                    shape=variable.shape,
                    dtype=variable.dtype,
                    initializer=keras.initializers.Constant(ops.convert_to_numpy(variable)),
                    trainable=False,
                    aggregation="only_first_replica",
                    name=f"ema_{_decay_label(decay)}_{index}",
                )
                for index, variable in enumerate(self.network.trainable_variables)
            ]
            for decay in self.ema_decays
        ]
        for averages in self.ema_weights:
            backend_ops.share_memory_layout(averages, self.network.trainable_variables)
        # Last, so that files saved before it existed still load (`load_own_variables`).
        self.micro_batch = self.add_weight(
            shape=(), dtype="int32", initializer="zeros", trainable=False, aggregation="only_first_replica",
            name="micro_batch",
        )
        self.built = True

    def load_own_variables(self, store):
        if len(store.keys()) == len(self._trainable_variables + self._non_trainable_variables) - 1:
            store = dict({key: store[key] for key in store.keys()}, **{str(len(store.keys())): np.int32(0)})
        super().load_own_variables(store)

    def _build_network(self, data_shape):
        x = keras.KerasTensor((None,) + tuple(data_shape[1:]))
        noise_labels = keras.KerasTensor((None,))
        try:
            output = self.network([x, noise_labels])
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
    def denoise(self, x_noisy, sigma, training=False):
        """The consistency function f(x, sigma) with the current weights.

        Args:
            x_noisy: noisy samples, shaped like the data with a batch axis.
            sigma: noise levels, shape (batch,) (or a scalar).
            training: whether the network runs in training mode.

        Returns:
            float32 estimate of the clean samples.
        """
        x_noisy = ops.cast(x_noisy, "float32")
        sigma = ops.cast(sigma, "float32") * ops.ones((ops.shape(x_noisy)[0],), "float32")
        c_skip, c_out, c_in, c_noise = schedules.precondition(sigma, self.sigma_data, self.sigma_min)
        network_output = self.network([_per_sample(c_in, x_noisy) * x_noisy, c_noise], training=training)
        return _per_sample(c_skip, x_noisy) * x_noisy + _per_sample(c_out, x_noisy) * ops.cast(
            network_output, "float32"
        )

    def call(self, inputs, training=False):
        if isinstance(inputs, (list, tuple)):
            if len(inputs) != 2:
                raise ValueError(
                    "Call a ConsistencyModel on a batch x or on a pair [x_noisy, sigma]; "
                    f"received {len(inputs)} inputs."
                )
            return self.denoise(inputs[0], inputs[1], training=training)
        return inputs

    # ------------------------------------------------------- training step
    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        x, y = self._check_batch(x, y)
        clean = ops.cast(x, "float32")
        step = ops.convert_to_tensor(self.training_step)
        num_scales, robustness_c = self._schedule(step)
        micro_batch, micro_batches = self._micro_batch_position()
        replica, replicas = backend_ops.replica_position()
        # This batch is one of `shares` equal parts of the update's batch (micro-batches x replicas).
        shares = micro_batches * replicas
        share = micro_batch * replicas + replica
        noise, index, update_index = self._training_draws(clean, y, step, num_scales, share, shares)
        t = self._sigma(index, num_scales)
        next_t = self._sigma(index + 1, num_scales)

        student = self.denoise(clean + _per_sample(t, clean) * noise, t, training=True)
        with backend_ops.no_gradient():
            target = ops.stop_gradient(self.denoise(clean + _per_sample(next_t, clean) * noise, next_t, training=True))
        distance = losses.DISTANCES[self.loss_name](student, target, robustness_c)
        consistency_loss = ops.mean(schedules.consistency_weight(t, next_t) * distance)

        # Normalized by the low-noise count of the whole update, so that the mean over its
        # shares is the loss of one step on the whole batch.
        update_low_noise_count = ops.sum(self._low_noise(update_index, num_scales))
        diffusion_weighting = 1.0 / ops.square(t) + 1.0 / self.sigma_data**2
        diffusion_per_sample = losses.mean_squared_residual(student, clean) * diffusion_weighting
        diffusion_loss = (
            ops.sum(self._low_noise(index, num_scales) * diffusion_per_sample)
            * shares
            / ops.maximum(update_low_noise_count, 1.0)
        )

        total = consistency_loss + self.diffusion_weight * diffusion_loss
        if self.losses:
            total = total + ops.sum(self.losses)

        with backend_ops.after([total]):
            self.consistency_loss_tracker.update_state(consistency_loss)
            self.diffusion_loss_tracker.update_state(diffusion_loss)
            self.num_scales_tracker.update_state(num_scales)
            self.robustness_c_tracker.update_state(robustness_c)
            if training:
                # N, c, the EMA and the step count optimizer updates, not micro-batches.
                if micro_batches == 1:
                    self._update_ema()
                    self.training_step.assign(step + 1)
                else:
                    self._update_ema(first_micro_batch=ops.equal(micro_batch, 0))
                    self.training_step.assign(step + ops.cast(ops.equal(micro_batch, micro_batches - 1), "int32"))
                    self.micro_batch.assign(ops.mod(micro_batch + 1, micro_batches))
                self.num_scales.assign(num_scales)
                self.robustness_c.assign(robustness_c)
        return backend_ops.scaled_for_replica_sum(total)

    def _check_batch(self, x, noise):
        """Shape and dtype checks of a training batch, when the step is traced (or run eagerly)."""
        check_float_data(keras.backend.standardize_dtype(x.dtype), "The training batch")
        checked = []
        for name, batch in (("batch", x), ("noise batch", noise)):
            checked.append(batch)
            if batch is None:
                continue
            message = (
                f"This ConsistencyModel was built for samples of shape {self.data_shape}; the {name} "
                f"has samples of shape {tuple(batch.shape[1:])} (batch shape {tuple(batch.shape)}). "
                "Pass data of the built shape, or build a new model for this one."
            )
            shape = tuple(batch.shape[1:])
            if len(shape) != len(self.data_shape) or any(
                size is not None and size != expected for size, expected in zip(shape, self.data_shape)
            ):
                raise ValueError(message)
            if None in shape:  # known only when the step runs
                checked[-1] = backend_ops.check_sample_shape(batch, self.data_shape, message)
        return tuple(checked)

    def _training_draws(self, clean, noise, step, num_scales, share=0, shares=1):
        """The noise z (unless given) and grid indices i of training step `step`.

        Returns `(noise, indices, update_indices)`. The draws are made for the
        whole batch of the update, `shares` batches like `clean`, and this
        batch takes part `share` of them: every replica and micro-batch gets
        its own noise and indices, and together they are those of one step on
        the whole batch on one device.
        """
        # Draws depend on (seed, step) only, so a resumed run draws the same.
        self.seed_generator.state.assign(
            ops.cast(ops.stack([ops.convert_to_tensor(self.seed, "int32"), ops.cast(step, "int32") * 4]), self.seed_generator.state.dtype)
        )
        batch = ops.shape(clean)[0]

        def this_share(values):
            if shares == 1:
                return values
            start = ops.cast(share, "int32") * batch
            return ops.slice(values, (start,) + (0,) * (len(values.shape) - 1), (batch,) + tuple(ops.shape(values)[1:]))

        if noise is None:
            # ops.shape: tensorflow may trace with unknown sample dimensions.
            noise = this_share(keras.random.normal((batch * shares,) + tuple(ops.shape(clean)[1:]), seed=self.seed_generator))
        probabilities = schedules.lognormal_index_probabilities(
            num_scales, self.max_num_scales - 1, self.p_mean, self.p_std, self.sigma_min, self.sigma_max, self.rho
        )
        uniform = keras.random.uniform((batch * shares,), seed=self.seed_generator)
        update_indices = schedules.sample_from_probabilities(probabilities, uniform)
        return ops.cast(noise, "float32"), this_share(update_indices), update_indices

    def _low_noise(self, index, num_scales):
        """1.0 where grid index `index` is among the lowest `diffusion_fraction` of the noise levels."""
        threshold = ops.floor((1.0 - self.diffusion_fraction) * ops.cast(num_scales, "float32"))
        return ops.cast(ops.cast(index, "float32") >= threshold, "float32")

    def _micro_batch_position(self):
        """(index of this micro-batch in its update, micro-batches per update) under gradient accumulation."""
        optimizer = getattr(self, "optimizer", None)  # None, or absent on torch, before compile
        optimizer = getattr(optimizer, "inner_optimizer", optimizer)
        micro_batches = getattr(optimizer, "gradient_accumulation_steps", None)
        if not micro_batches:
            return 0, 1
        return ops.convert_to_tensor(self.micro_batch), micro_batches

    def _sigma(self, index, num_scales):
        return schedules.karras_sigma(index, num_scales, self.sigma_min, self.sigma_max, self.rho)

    def _schedule(self, step):
        """N and c at `step`, from the schedule state set by the callbacks."""
        stage_length = ops.convert_to_tensor(self.curriculum_stage_length)
        s0 = ops.convert_to_tensor(self.curriculum_s0)
        curriculum_n = schedules.curriculum_num_scales(step, stage_length, s0, self.curriculum_s1.value)
        num_scales = ops.where(stage_length > 0, curriculum_n, self.num_scales.value)
        num_scales = ops.minimum(num_scales, self.max_num_scales)
        c0 = ops.convert_to_tensor(self.c0)
        adaptive = schedules.robustness_c(
            num_scales, c0, s0, (self.adaptive_c_slope.value, self.adaptive_c_intercept.value)
        )
        robustness_c = ops.where(self.adaptive_c_enabled.value > 0, adaptive, c0)
        return num_scales, robustness_c

    def _update_ema(self, first_micro_batch=None):
        # At the start of step k the EMA folds in the weights step k starts from:
        # under gradient accumulation, at its first micro-batch (a decay of 1 elsewhere).
        for decay, averages in zip(self.ema_decays, self.ema_weights):
            if first_micro_batch is not None:
                decay = ops.where(first_micro_batch, decay, 1.0)
            if backend_ops.exponential_moving_average(averages, self.network.trainable_variables, decay):
                continue
            for average, variable in zip(averages, self.network.trainable_variables):
                average.assign(decay * average + (1.0 - decay) * ops.stop_gradient(ops.convert_to_tensor(variable)))

    # ------------------------------------------------------- schedule state
    def set_curriculum(self, total_steps=None, s0=schedules.CURRICULUM_S0, s1=schedules.CURRICULUM_S1):
        """Sets eq. 10's curriculum for N; `total_steps=None` freezes N.

        Args:
            total_steps: K, the planned number of training steps, or None to
                keep N at its current value.
            s0, s1: the initial and final number of intervals.
        """
        self._require_built("set_curriculum")
        if total_steps is None:
            self.curriculum_stage_length.assign(0)
            return
        stage_length = schedules.curriculum_stage_length(total_steps, s0, s1)
        if s1 + 1 > self.max_num_scales:
            raise ValueError(
                f"`s1` + 1 = {s1 + 1} exceeds the model's `max_num_scales` "
                f"({self.max_num_scales}); build the model with a larger max_num_scales."
            )
        self.curriculum_stage_length.assign(stage_length)
        self.curriculum_s0.assign(s0)
        self.curriculum_s1.assign(s1)

    def set_robustness_schedule(self, c0=None, constants="paper"):
        """Sets c: `c0` until N > s0 + 1, then eq. 11 with `constants`.

        Args:
            c0: the initial scale; None for iCT's 0.00054 sqrt(d).
            constants: `"paper"`, `"authors_code"`, a (slope, intercept) pair,
                or None to keep c = c0 throughout (iCT).
        """
        self._require_built("set_robustness_schedule")
        c0 = schedules.ict_c0(self.data_dim) if c0 is None else check_positive("c0", c0)
        self.c0.assign(c0)
        self.robustness_c.assign(c0)
        if constants is None:
            self.adaptive_c_enabled.assign(0)
            return
        slope, intercept = schedules._adaptive_c_constants(constants)
        self.adaptive_c_slope.assign(float(slope))
        self.adaptive_c_intercept.assign(float(intercept))
        self.adaptive_c_enabled.assign(1)

    def _require_built(self, method):
        if not self.built:
            raise ValueError(
                f"Build the model before calling `{method}`: call "
                "`model.build((None, *data_shape))` or fit it on data."
            )

    # ------------------------------------------------------------ EMA weights
    @contextlib.contextmanager
    def ema_weights_in_network(self, decay=None):
        """Context in which the network holds the EMA weights of `decay`.

        Args:
            decay: one of `ema_decays`; None for the first one.
        """
        self._require_built("ema_weights_in_network")
        averages = self.ema_weights[self._ema_index(decay)]
        variables = self.network.trainable_variables
        # Copies, not shared buffers: JAX donates every variable to the step.
        online = [ops.copy(variable.value) for variable in variables]
        for variable, average in zip(variables, averages):
            variable.assign(ops.copy(average.value))
        try:
            yield self.network
        finally:
            for variable, value in zip(variables, online):
                variable.assign(value)

    def _ema_index(self, decay):
        if not self.ema_decays:
            raise ValueError("This model keeps no EMA weights (`ema_decays=()`); sample with `ema=False`.")
        if decay is None:
            return 0
        if decay not in self.ema_decays:
            raise ValueError(f"No EMA with decay {decay!r}; the model keeps {list(self.ema_decays)}.")
        return self.ema_decays.index(decay)

    # ---------------------------------------------------------------- sampling
    def sample(self, num_samples, steps=1, ts=None, seed=None, batch_size=64, ema=True, verbose=0):
        """Draws samples with 1, 2 or more network evaluations.

        `x = f(sigma_max z, sigma_max)`; then for every further level s of
        `ts`: `x = f(x + sqrt(s^2 - sigma_min^2) z', s)`.

        Args:
            num_samples: how many samples to draw (>= 1).
            steps: number of network evaluations when `ts` is None: 1, or 2
                (second level: level 440 of a 641-level grid, ~0.369, as the
                authors use on CelebA-HQ).
            ts: strictly decreasing noise levels in [sigma_min, sigma_max],
                overriding `steps`, e.g. `[80.0, 0.8, 0.2]`.
            seed: int seed of the NumPy noise (the same samples on every
                backend); None draws a fresh one.
            batch_size: samples per network call.
            ema: True for the first EMA weights, a decay from `ema_decays`
                for that EMA, or False for the online weights.
            verbose: passed to `predict` (0 silent, 1 progress bar).

        Returns:
            NumPy float32 array `(num_samples, *data_shape)`.

        Reference: `REFERENCE.md` "Sampling"; paper table 1 (1 and 2 NFE).
        """
        self._require_built("sample")
        num_samples = check_int("num_samples", num_samples, minimum=1)
        batch_size = check_int("batch_size", batch_size, minimum=1)
        levels = self._sampling_levels(steps, ts)
        rng = np.random.default_rng(check_seed("seed", seed, allow_none=True))
        shape = (num_samples,) + self.data_shape
        if ema is False or (ema is True and not self.ema_decays):
            weights = contextlib.nullcontext()
        else:
            weights = self.ema_weights_in_network(None if ema is True else ema)
        with weights:
            x = levels[0] * rng.standard_normal(shape, dtype=np.float32)
            x = self._denoise_numpy(x, levels[0], batch_size, verbose)
            for level in levels[1:]:
                x = x + math.sqrt(level**2 - self.sigma_min**2) * rng.standard_normal(shape, dtype=np.float32)
                x = self._denoise_numpy(x, level, batch_size, verbose)
        return x

    def _denoise_numpy(self, x, sigma, batch_size, verbose):
        sigmas = np.full((x.shape[0],), sigma, dtype=np.float32)
        return np.asarray(self.predict([x, sigmas], batch_size=batch_size, verbose=verbose), dtype=np.float32)

    def _sampling_levels(self, steps, ts):
        if ts is None:
            steps = check_int("steps", steps, minimum=1)
            if steps == 1:
                return [self.sigma_max]
            if steps == 2:
                return [self.sigma_max, float(self._sigma(*TWO_STEP_LEVEL))]
            raise ValueError(
                f"`steps` must be 1 or 2 when `ts` is not given; received {steps}. "
                "Pass the noise levels as `ts` for more steps."
            )
        levels = [float(level) for level in np.asarray(ts, dtype=np.float64).reshape(-1)]
        if not levels:
            raise ValueError("`ts` must hold at least one noise level.")
        if any(not np.isfinite(level) or not self.sigma_min <= level <= self.sigma_max for level in levels):
            raise ValueError(
                f"`ts` must lie in [sigma_min, sigma_max] = [{self.sigma_min}, {self.sigma_max}]; received {levels}."
            )
        if any(later >= earlier for earlier, later in zip(levels, levels[1:])):
            raise ValueError(f"`ts` must be strictly decreasing; received {levels}.")
        return levels

    # ---------------------------------------------------------- input checks
    def fit(self, x=None, y=None, *args, **kwargs):
        """`keras.Model.fit`, with checks and the epoch sync of paired batches.

        Arrays and tensors are checked for NaN/inf before the first step, and the
        batches of a `PyDataset`, `tf.data.Dataset` or generator as they
        are read (`keras_lct.data.checked_batches`): a bad batch stops
        training with an error before it reaches the weights. Integer data
        and batches of another sample shape than the model's are refused. A
        `keras_lct.data.NoisePairedDataset` gets its `epoch_callback()`
        added, so its noise and order follow fit's epochs (and resume
        exactly with `initial_epoch`), and `shuffle` defaults to False: the
        dataset shuffles its samples itself, keyed by (seed, epoch), whereas
        fit's shuffle of the batch order draws from Python's global random
        state, which a resumed run does not share. A Ctrl-C stops `fit` with
        `KeyboardInterrupt` by the end of the batch it arrives in, even where
        Python would drop it (`backend_ops.interrupts_delivered`).
        """
        from keras_lct.data.paired import NoisePairedDataset
        from keras_lct.data.paired import check_samples
        from keras_lct.data.paired import checked_batches
        from keras_lct.data.paired import is_tensor
        from keras_lct.data.paired import to_numpy

        for array in (x, y):
            if isinstance(array, np.ndarray) or is_tensor(array):
                check_samples(to_numpy(array))
        checked = checked_batches(x)
        if checked is not x and isinstance(checked, types.GeneratorType) and not isinstance(x, types.GeneratorType):
            kwargs.setdefault("steps_per_epoch", len(x))  # a torch DataLoader, now read pass after pass
        x = checked
        args = list(args)
        callbacks = list((args[3] if len(args) > 3 else kwargs.get("callbacks")) or [])  # after batch_size, epochs, verbose
        _check_distributed_fit(self, x, args[0] if args else kwargs.get("batch_size"))
        if isinstance(x, NoisePairedDataset):
            if not any(getattr(callback, "dataset", None) is x for callback in callbacks):
                callbacks.insert(0, x.epoch_callback())
            if len(args) < 7:  # `shuffle` is the 7th argument after x and y
                kwargs.setdefault("shuffle", False)
        with backend_ops.interrupts_delivered(callbacks) as callbacks:
            if len(args) > 3:
                args[3] = callbacks
            else:
                kwargs["callbacks"] = callbacks
            with backend_ops.state_kept_through_fit(self), backend_ops.gradients_averaged_over_processes(self):
                return super().fit(x, y, *args, **kwargs)

    # ----------------------------------------------------------- serialization
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
        network = self.network if isinstance(self.network, str) else keras.layers.serialize(self.network)
        config.update(
            {
                "network": network,
                "loss": self.loss_name,
                "diffusion_fraction": self.diffusion_fraction,
                "diffusion_weight": self.diffusion_weight,
                "num_scales": self.initial_num_scales,
                "c": self.initial_c,
                "max_num_scales": self.max_num_scales,
                "ema_decays": list(self.ema_decays),
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


def _check_distributed_fit(model, x, batch_size):
    """Errors before training for what data parallelism cannot run: uneven batches, unsharded data, ..."""
    from keras_lct import distribute
    from keras_lct.data.paired import NoisePairedDataset

    if model._micro_batch_position()[1] > 1 and backend_ops.under_tf_distribute_strategy(model):
        raise ValueError(
            "Keras cannot accumulate gradients under a tf.distribute strategy (its optimizer's conditional "
            "update crosses the replicas). Drop `gradient_accumulation_steps`, or train on the jax or torch "
            "backend, where accumulation and data parallelism combine."
        )
    run = distribute.current()
    if run is None:
        return
    if isinstance(x, NoisePairedDataset):
        if x.shard[1] != run.process_count:
            raise ValueError(
                f"Training runs in {run.process_count} processes, but the NoisePairedDataset is split into "
                f"{x.shard[1]}: each process must read its own part of every batch. Pass "
                "`shard=run.shard` (from keras_lct.distribute.data_parallel()) to NoisePairedDataset."
            )
        if x.batch_size is not None:
            run.per_replica_batch_size(x.batch_size)  # its batch size is the global batch
    elif isinstance(x, np.ndarray):
        run.per_replica_batch_size((32 if batch_size is None else batch_size) * run.process_count)


def _per_sample(values, like):
    """Reshapes a (batch,) vector to broadcast against `like`."""
    return ops.reshape(values, (-1,) + (1,) * (len(like.shape) - 1))


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


def _check_decay(decay):
    if not isinstance(decay, (int, float)) or not 0.0 <= decay < 1.0:
        raise ValueError(f"Every EMA decay must be a number in [0, 1); received {decay!r} in `ema_decays`.")
    return float(decay)


def _decay_label(decay):
    return f"{decay:.10f}".rstrip("0").replace(".", "p")
