"""Errors a user can cause end in one sentence; these are the exception types that carry one."""

from __future__ import annotations


def user_error_types() -> tuple[type, ...]:
    from .classvectors import ClassVectorsError
    from .models.loading import ModelSpecError

    types: list[type] = [ClassVectorsError, ModelSpecError, FileNotFoundError]
    try:
        from .config import ConfigError

        types.append(ConfigError)
    except ImportError:
        pass
    try:
        from .data.benchmarks import DatasetLayoutError

        types.append(DatasetLayoutError)
    except ImportError:
        pass
    return tuple(types)


def is_user_error(exc: BaseException) -> bool:
    return isinstance(exc, user_error_types())
