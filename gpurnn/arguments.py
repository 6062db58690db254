"""argparse types for the commands' options: a bad value is argparse's one-line error naming the option."""
import argparse
import math


def csv(kind, choices):
    def parse(value):
        items = [v.strip() for v in value.split(",") if v.strip()]
        bad = [v for v in items if v not in choices]
        if not items or bad:
            raise argparse.ArgumentTypeError(f"expected a comma-separated subset of {','.join(choices)}, "
                                             f"got {value!r}")
        return items
    parse.__name__ = kind
    return parse


def integer_at_least(low, high=None, why=""):
    def parse(value):
        n = int(value)
        if n < low or high is not None and n > high:
            bound = f">= {low}" if high is None else f"in [{low}, {high}]{why}"
            raise argparse.ArgumentTypeError(f"expected an integer {bound}, got {value}")
        return n
    parse.__name__ = "int"   # argparse's word for a value that is no integer at all
    return parse


positive, non_negative = integer_at_least(1), integer_at_least(0)
SEED = integer_at_least(0, 2 ** 32 - 1)   # NumPy's seeds (torch's go to 2^64 - 1)


def positive_float(value):
    """A float > 0, inf included (a clip norm of 0 zeroes every gradient, a negative one flips their sign)."""
    x = float(value)
    if not x > 0:
        raise argparse.ArgumentTypeError(f"expected a number > 0, got {value}")
    return x


def positive_finite(value):
    """A float > 0 and finite (a learning rate of inf makes every weight NaN)."""
    x = positive_float(value)
    if x == math.inf:
        raise argparse.ArgumentTypeError(f"expected a finite number > 0, got {value}")
    return x
