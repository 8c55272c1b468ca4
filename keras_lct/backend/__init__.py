"""Everything in keras-lct that depends on the backend, one module per concern.

The rest of the library is written once with `keras.ops` and calls the plain
functions here, which do the backend's part or nothing:

- `keras_lct.backend.fast_paths`: torch kernels, memory layouts and direct
  nested layer calls of the training step (`use_fast_paths(False)` turns
  them off; the plain `keras.ops` code is the reference);
- `keras_lct.backend.compiled`: `jit_compile` on torch, the network's calls
  compiled by `torch.compile` (XLA compiles the whole step elsewhere);
- `keras_lct.backend.forward_mode`: `jvp`, `keras.ops.linalg.jvp` through the
  networks (the fast paths without a forward-mode rule step aside);
- `keras_lct.backend.fit_guards`: what keeps `fit` reliable per backend
  (state through a failed first step, Ctrl-C, state updates after the loss,
  run-time shape checks, the optimizer built before tracing);
- `keras_lct.backend.distribute`: each backend's data-parallel engine and what
  the step asks of it (replica position, loss scaling, gradient averaging);
- `keras_lct.backend.process`: process-wide settings, applied only when asked
  (tensorflow's malloc thresholds at the first `fit`, jax's compilation cache).

Importing keras-lct applies no setting.
"""

from keras_lct.backend import compiled
from keras_lct.backend import distribute
from keras_lct.backend import fast_paths
from keras_lct.backend import fit_guards
from keras_lct.backend import forward_mode
from keras_lct.backend import process
from keras_lct.backend.fast_paths import fast_paths_enabled
from keras_lct.backend.fast_paths import use_fast_paths
from keras_lct.backend.process import keep_compiled_steps
