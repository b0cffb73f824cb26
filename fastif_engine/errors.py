"""Exceptions named for what went wrong, each with a message that says what to change."""


class FastIFError(Exception):
    """Base class of every error fastif raises on purpose."""


class SettingsError(FastIFError, ValueError):
    """A value fastif checked and refused (also a ValueError, for code that catches those)."""


class LissaDivergenceError(FastIFError):
    """The LiSSA recursion blew up (NaN/inf or a norm far past its fixed point's bound)."""


class SolverSetupError(FastIFError):
    """A solver was asked for something it cannot do (e.g. the exact solver on 10M parameters)."""


class IndexNotBuiltError(FastIFError):
    """A kNN index was searched before it was built or loaded."""


class NonFiniteGradientError(FastIFError):
    """A loss or gradient came out NaN/inf: the model or the data is broken."""
