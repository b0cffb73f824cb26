"""Every exception fastif raises on purpose, named for what went wrong, each with a message that says what
to change. Bad input (file, column, rows), settings, models, solvers and the stage cache."""


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


class ConfigError(FastIFError):
    """A config file or flag that cannot be used."""


class ModelLoadError(FastIFError):
    """A model name that is unknown, does not fit the data, or a user factory that fails."""


class DataError(FastIFError):
    """Input data that cannot be used, with the file, column and rows at fault."""


class CacheError(FastIFError):
    """A stage-cache file that fastif did not write (or that is damaged): refused, never executed."""
