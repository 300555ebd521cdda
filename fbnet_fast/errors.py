"""The one exception family users see.

Every error a user can cause (a bad file, a bad option, a bad folder) is an
:class:`FBNetError` whose message names the file, field, layer or tensor at fault
and what was expected. Subclasses also derive from the builtin a caller would
naturally catch (``ValueError``, ``FileNotFoundError``) so generic handlers work.
"""

from __future__ import annotations


class FBNetError(Exception):
    """Base class of every user-facing error raised by fbnet-fast."""


class SpaceError(FBNetError, ValueError):
    """A search space, block name or architecture is malformed."""


class LUTError(FBNetError, ValueError):
    """A latency look-up table is malformed, incomplete or for another space."""


class CheckpointError(FBNetError, ValueError):
    """A checkpoint is corrupt, truncated or belongs to another space."""


class DataError(FBNetError, ValueError):
    """A data set folder or file cannot be used."""


class ConfigError(FBNetError, ValueError):
    """An option value is out of range or inconsistent with another."""


class RunDirError(FBNetError):
    """An output folder would overwrite another run."""


class ExtensionError(FBNetError, ImportError):
    """The compiled extension is missing or was built for another version."""


class TrainingError(FBNetError, RuntimeError):
    """Training cannot go on (e.g. the loss became NaN); the last good checkpoint is kept."""
