"""The one error type a user can cause: `PromptKDError`, whose message is one sentence.

Every error that a user can fix (a job file, a model spec, a dataset layout, an artifact, an image,
a checkpoint of another run) inherits from `PromptKDError`; the CLI catches it once and prints
`error: <sentence>` with exit status 2, never a traceback. The subclasses also inherit the built-in
type they used to be (`ValueError`, `FileNotFoundError`), so library callers that catch those keep
working. This module imports nothing: every layer may use it.

Errors raised inside Ray tasks and Train workers reach the driver wrapped (RayTaskError, Ray Train's
WorkerGroupError); `orchestration.cluster.user_error_in` finds the PromptKDError inside them.
"""


class PromptKDError(Exception):
    """An error the user can fix; its message is one sentence that says what was expected and
    what was found."""


class ConfigError(PromptKDError, ValueError):
    """A job or search-space file that cannot be used as written (names the file and the key)."""


class ArtifactError(PromptKDError, ValueError):
    """A missing or inconsistent student / teacher artifact."""


class ClassVectorsError(PromptKDError, ValueError):
    """A class-vectors artifact that is missing, tampered with, or does not fit its use."""


class ModelSpecError(PromptKDError, ValueError):
    """A model spec that cannot be resolved (unknown name, missing file, weights that don't fit)."""


class DatasetLayoutError(PromptKDError, ValueError):
    """A dataset whose files are not laid out as expected."""


class StorageError(PromptKDError, OSError):
    """A path or URI that cannot be read or written (missing file, unknown scheme)."""


class BadImageError(PromptKDError, ValueError):
    """A file that is not a readable image, where the job or command asked to fail on one."""


class CheckpointMismatchError(ConfigError):
    """A run's checkpoint that was made by another job (other model, data or class vectors)."""


class CheckpointCorruptError(PromptKDError, ValueError):
    """A run's checkpoint whose files are missing, truncated or do not match their manifest."""


class UsageError(PromptKDError, ValueError):
    """A command line that cannot be run as given (missing or conflicting options)."""


class DivergedError(PromptKDError, FloatingPointError):
    """A training loss that became NaN or infinite: the student diverged, so the run stops rather than
    train on at chance. `loss` and `terms` (its parts, as text) let a caller say the same with where."""

    loss: float = float("nan")
    terms: str = ""
