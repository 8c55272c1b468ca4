"""The random state of a network's dropout, to draw the same masks twice (ECT's shared masks).

Keras' dropout draws from its layer's `SeedGenerator` state on jax and
tensorflow. On torch, a Dropout without a seed (the library's layers set none)
takes torch's global generator instead (Keras' unseeded fast path,
`torch.nn.functional.dropout`), so there the state to restore is torch's
(and the current CUDA device's) generator state; ECT's official code restores
the same (`torch.cuda.get_rng_state`).
"""

import keras
from keras import ops


def dropout_replay(network):
    """Remembers the state `network`'s dropout draws from; the returned callable restores it."""
    states = [generator.state for layer in network._flatten_layers() for generator in layer._seed_generators]
    saved = [ops.copy(state.value) for state in states]
    restore_torch = _torch_generators() if keras.backend.backend() == "torch" and states else None

    def replay():
        for state, value in zip(states, saved):
            state.assign(value)
        if restore_torch is not None:
            restore_torch()

    return replay


def _torch_generators():
    import torch

    cpu = torch.get_rng_state()
    cuda = torch.cuda.get_rng_state() if torch.cuda.is_available() else None

    def restore():
        torch.set_rng_state(cpu)
        if cuda is not None:
            torch.cuda.set_rng_state(cuda)

    return restore
