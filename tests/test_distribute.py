"""Data parallelism on two CPU devices of each backend equals training on one.

jax on two forced host devices, tensorflow on two logical CPUs
(MirroredStrategy), torch as two gloo processes under torchrun: each runs
`tests/distributed_fit.py` (2 epochs, 8 updates on global batches of 16)
from the same initial weights as a one-device run, which it must end equal
to, with every replica's noise levels and noise its own.
"""

import os
import subprocess
import sys

import keras
import numpy as np
import pytest

import keras_lct
from keras_lct import distribute
from keras_lct.backend import distribute as engine
from keras_lct.data import NoisePairedDataset
from test_bad_input import DATA
from test_bad_input import built_model
from test_recipes import ROOT

WORKER = os.path.join(ROOT, "tests", "distributed_fit.py")
# `python -c RUN_ON_TWO_TENSORFLOW_CPUS script args...`: the script, on two logical CPU devices.
RUN_ON_TWO_TENSORFLOW_CPUS = (
    "import os, runpy, sys, tensorflow as tf; "
    "tf.config.set_logical_device_configuration(tf.config.list_physical_devices('CPU')[0], "
    "[tf.config.LogicalDeviceConfiguration()] * 2); "
    "sys.argv = sys.argv[1:]; sys.path[0] = os.path.dirname(sys.argv[0]); "
    "runpy.run_path(sys.argv[0], run_name='__main__')"
)


def run_worker(output, initial, devices=1):
    environment = dict(os.environ, KERAS_BACKEND=keras.backend.backend(), PYTHONUNBUFFERED="1")
    command = [sys.executable, WORKER, "--initial", initial, "--output", output, "--devices", str(devices)]
    if devices > 1 and keras.backend.backend() == "jax":
        environment["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
    if devices > 1 and keras.backend.backend() == "torch":
        environment["OMP_NUM_THREADS"] = "1"  # two processes on two cores
        command[1:1] = ["-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={devices}"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, env=environment, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-4000:]
    return result


def test_data_parallel_on_two_devices_equals_one_device(tmp_path):
    initial = str(tmp_path / "initial.npz")
    run_worker(str(tmp_path / "one.npz"), initial)
    run_worker(str(tmp_path / "two.npz"), initial, devices=2)
    one = np.load(tmp_path / "one.rank0.npz")
    processes = 2 if keras.backend.backend() == "torch" else 1
    for rank in range(processes):
        two = np.load(tmp_path / f"two.rank{rank}.npz")
        assert int(two["training_step"]) == int(one["training_step"]) == 8
        assert int(two["num_scales"]) == int(one["num_scales"]) == 21
        # Each process reads its part of every global batch of 16.
        assert tuple(two["batch_shape"]) == (16 // processes, 8, 8, 4)
        # torch's ranks average their gradients in DistributedDataParallel's backward.
        expected = "DistributedDataParallel" if processes == 2 else one["gradient_pass"][0]
        assert list(two["gradient_pass"]) == [expected] and one["gradient_pass"][0] != "DistributedDataParallel"
        states = [name for name in one.files if name.startswith("s")]
        for name in states:
            np.testing.assert_allclose(two[name], one[name], rtol=1e-4, atol=2e-6, err_msg=name)
    if processes == 1:  # one process sees the whole batch, and the loss over it
        np.testing.assert_allclose(two["loss"], one["loss"], rtol=1e-4)


def test_shards_of_a_batch_are_the_batch_with_its_noise_and_pairing():
    for group in (4, None):  # pairing within each shard, or across the whole batch
        whole = NoisePairedDataset(DATA, batch_size=8, seed=2, ot_group_size=group)
        shards = [NoisePairedDataset(DATA, batch_size=8, seed=2, ot_group_size=group, shard=(i, 2)) for i in range(2)]
        for index in range(len(whole)):
            x, noise = whole[index]
            parts = [shard[index] for shard in shards]
            np.testing.assert_array_equal(np.concatenate([p[0] for p in parts]), x)
            np.testing.assert_array_equal(np.concatenate([p[1] for p in parts]), noise)
            assert not np.array_equal(parts[0][1], parts[1][1])


@pytest.mark.parametrize("shard", [(2, 2), (0, 0), 3, (0, 1, 2)])
def test_bad_shards_are_refused(shard):
    with pytest.raises(ValueError, match="shard"):
        NoisePairedDataset(DATA, batch_size=8, shard=shard)


@pytest.fixture
def three_devices():
    engine.activate(distribute.DataParallel(num_replicas=3))
    yield
    engine.activate(None)


def test_a_global_batch_that_does_not_split_over_the_devices_is_refused_before_training(three_devices):
    model = built_model()
    with pytest.raises(ValueError, match="global batch of 8 samples does not split evenly over 3 devices"):
        model.fit(DATA, batch_size=8, epochs=1, verbose=0)
    with pytest.raises(ValueError, match="global batch of 16 samples does not split evenly over 3 devices"):
        model.fit(NoisePairedDataset(DATA, batch_size=16), epochs=1, verbose=0)
    assert int(model.training_step) == 0


def test_several_processes_need_a_sharded_dataset():
    engine.activate(distribute.DataParallel(num_replicas=2, process_index=0, process_count=2))
    try:
        with pytest.raises(ValueError, match="shard=run.shard"):
            built_model().fit(NoisePairedDataset(DATA, batch_size=8), epochs=1, verbose=0)
    finally:
        engine.activate(None)


def test_data_parallel_describes_its_split():
    run = distribute.DataParallel(num_replicas=8, process_index=1, process_count=2)
    assert not run.is_chief and run.shard == (1, 2)
    assert run.per_replica_batch_size(128) == 16 and run.process_batch_size(128) == 64
    with pytest.raises(ValueError, match="multiple of 8"):
        run.per_replica_batch_size(100)


def test_the_recipe_trains_data_parallel(tmp_path):
    """The smoke run with --distribute: two jax devices, two torch processes, two tensorflow CPUs."""
    backend = keras.backend.backend()
    output = str(tmp_path / "run")
    recipe = [os.path.join(ROOT, "recipes", "celeba.py"), "--smoke", "--output", output, "--verbose", "2", "--distribute"]
    # tensorflow cannot accumulate under a strategy: it runs mixed precision instead.
    recipe += ["--mixed-precision", "mixed_bfloat16"] if backend == "tensorflow" else ["--accumulate", "2"]
    environment = dict(os.environ, KERAS_BACKEND=backend, PYTHONUNBUFFERED="1")
    command = [sys.executable, *recipe]
    if backend == "jax":
        environment["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"
    if backend == "torch":
        environment["OMP_NUM_THREADS"] = "1"
        command[1:1] = ["-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2"]
    if backend == "tensorflow":
        command[1:1] = ["-c", RUN_ON_TWO_TENSORFLOW_CPUS]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, env=environment, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-4000:]
    assert "2 replicas" in result.stdout and result.stdout.count("Done:") == 1  # the chief speaks
    model = keras_lct.saving.load_model(os.path.join(output, "lct.keras"))
    assert int(model.training_step) == 10  # updates, not micro-batches
    assert os.listdir(os.path.join(output, "samples"))
