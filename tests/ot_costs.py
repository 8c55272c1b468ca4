"""The cost of a data-noise pairing, and its optimum by the Hungarian algorithm or by trying every permutation."""

import itertools

import numpy as np
from scipy.optimize import linear_sum_assignment


def pairing_cost(x0, noise):
    """sum_i ||x0_i - noise_i||^2 in float64."""
    difference = x0.reshape(len(x0), -1).astype("float64") - noise.reshape(len(noise), -1)
    return float(np.sum(difference**2))


def optimal_pairing_cost(x0, noise):
    """The optimum found independently, by the Hungarian algorithm."""
    flat_x0 = x0.reshape(len(x0), -1).astype("float64")
    flat_noise = noise.reshape(len(noise), -1).astype("float64")
    cost = ((flat_x0[:, None] - flat_noise[None]) ** 2).sum(-1)
    rows, cols = linear_sum_assignment(cost)
    return float(cost[rows, cols].sum())


def brute_force_permutation(x0, noise):
    """The `perm` of least `pairing_cost(x0, noise[perm])`, found by trying them all (a few rows only)."""
    orders = itertools.permutations(range(len(x0)))
    return np.asarray(min(orders, key=lambda order: pairing_cost(x0, noise[list(order)])))
