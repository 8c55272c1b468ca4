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


# The largest seed of the draws inside a compiled step, which hold it as int32 on every backend.
MAX_SEED = 2**31 - 1


def check_seed(name, value, allow_none=False, maximum=None):
    """Raises ValueError unless `value` is an integer seed >= 0 (and <= `maximum`), or None if allowed."""
    if value is None and allow_none:
        return None
    accepted = "an integer >= 0" if maximum is None else f"an integer in [0, {maximum}]"
    accepted += " or None" if allow_none else ""
    if (
        isinstance(value, bool)
        or not isinstance(value, (numbers.Integral, np.integer))
        or value < 0
        or (maximum is not None and value > maximum)
    ):
        raise ValueError(f"`{name}` must be {accepted}; received {value!r}.")
    return int(value)


def check_float_data(dtype, what):
    """Raises ValueError unless `dtype` is a float dtype; says how to scale integer images."""
    try:
        name = np.dtype(dtype).name
    except TypeError:
        name = str(dtype)
    if "float" in name:  # bfloat16 and float8 types included, which NumPy does not name
        return
    if name.startswith(("int", "uint")):
        raise ValueError(
            f"{what} has integer dtype {name}. Training on it would use its raw values "
            "(0-255 for 8-bit images), not the [-1, 1] images or normalized latents the model expects. "
            "Scale 8-bit images with `keras_lct.data.images_to_unit_range(x)` (x / 127.5 - 1) or "
            "encode them to latents first; cast other data with `x.astype('float32')`."
        )
    raise ValueError(f"{what} has dtype {name}; expected float numbers, e.g. `x.astype('float32')`.")


def finite_samples(array):
    """Per sample (first axis) of a NumPy array: whether all its values are finite."""
    return np.isfinite(array.reshape(len(array), -1)).all(axis=1)


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


def check_class_labels(labels, num_classes=None, count=None, what="The labels"):
    """`labels` as an int32 NumPy array of class indices, or a ValueError that says what is wrong.

    Class labels are integers in [0, num_classes), one per sample: shape
    `(count,)`. `num_classes=None` checks only that they are >= 0.
    """
    array = np.asarray(labels)
    if array.dtype == bool or not np.issubdtype(array.dtype, np.integer):
        advice = (
            "Pass integer class indices 0..K-1 (`labels.astype('int32')` if they hold whole numbers)"
            if np.issubdtype(array.dtype, np.floating)
            else "Map each class to an integer index 0..K-1 first"
        )
        raise ValueError(f"{what} have dtype {array.dtype}; class labels are integers. {advice}.")
    if array.ndim != 1:
        raise ValueError(f"{what} have shape {array.shape}; expected one integer per sample, of shape (num_samples,).")
    if count is not None and len(array) != count:
        raise ValueError(f"{what} hold {len(array)} labels for {count} samples; give exactly one label per sample.")
    if array.size and array.min() < 0:
        raise ValueError(f"{what} hold the negative label {int(array.min())}; class labels are 0..K-1.")
    if num_classes is not None and array.size and array.max() >= num_classes:
        raise ValueError(
            f"{what} hold class {int(array.max())}, out of range for a model of {num_classes} classes "
            f"(labels 0..{num_classes - 1}). Build the network with num_classes >= {int(array.max()) + 1}, "
            "or remap the labels."
        )
    return array.astype(np.int32)
