"""Argument checks shared by the public functions and classes.

Checks run only on Python and NumPy values: a tensor reaching these functions
inside a compiled step has no concrete value to check.
"""

import numbers

import numpy as np


def is_concrete(value):
    """Whether `value` is a Python or NumPy number (checkable now)."""
    return isinstance(value, (numbers.Number, np.number)) and not isinstance(
        value, bool
    )


def check_int(name, value, minimum=None):
    """Raises ValueError unless `value` is an integer >= `minimum`."""
    if isinstance(value, bool) or not isinstance(value, (numbers.Integral, np.integer)):
        raise ValueError(
            f"`{name}` must be an integer{_range_text(minimum)}; "
            f"received {value!r} of type {type(value).__name__}."
        )
    if minimum is not None and value < minimum:
        raise ValueError(
            f"`{name}` must be an integer{_range_text(minimum)}; received {value}."
        )
    return int(value)


def check_positive(name, value, allow_zero=False):
    """Raises ValueError unless `value` is a finite number > 0 (or >= 0)."""
    accepted = "a finite number >= 0" if allow_zero else "a finite number > 0"
    if not is_concrete(value):
        raise ValueError(
            f"`{name}` must be {accepted}; received {value!r} of type "
            f"{type(value).__name__}."
        )
    if not np.isfinite(value) or value < 0 or (value == 0 and not allow_zero):
        raise ValueError(f"`{name}` must be {accepted}; received {value}.")
    return float(value)


def check_fraction(name, value):
    """Raises ValueError unless `value` is a number in [0, 1]."""
    if not is_concrete(value) or not 0.0 <= value <= 1.0:
        raise ValueError(f"`{name}` must be a number in [0, 1]; received {value!r}.")
    return float(value)


def check_choice(name, value, choices):
    """Raises ValueError unless `value` is one of `choices` (a mapping or list)."""
    if not isinstance(value, str) or value not in choices:
        raise ValueError(
            f"Unknown `{name}`: {value!r}. Accepted values: "
            f"{', '.join(repr(choice) for choice in choices)}."
        )
    return value


def _range_text(minimum):
    return "" if minimum is None else f" >= {minimum}"


def is_real_dtype(dtype):
    """Whether `dtype` holds real numbers (integers or floats, not bool)."""
    return np.issubdtype(dtype, np.integer) or np.issubdtype(dtype, np.floating)
