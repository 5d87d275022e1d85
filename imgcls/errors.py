"""Errors raised by imgcls. Each message says what happened and what to do next."""
from __future__ import annotations


class ImgclsError(Exception):
    """Base class: the message is meant for a person running a workshop."""


class NotFound(ImgclsError):
    """A workshop, label, image or run that does not exist."""


class InvalidInput(ImgclsError):
    """A name, label, parameter or file that cannot be accepted."""


class NotReady(ImgclsError):
    """The workshop is not in a state where this can be done yet (too few images, no model...)."""


class ConflictError(ImgclsError):
    """The change clashes with the current state (already exists, changed since, ...)."""


class TrainingFailed(ImgclsError):
    """A training job ended without a model."""


class JobCancelled(TrainingFailed):
    """The job was cancelled before it finished."""


class JobTimedOut(TrainingFailed):
    """The job ran past its wall-clock limit."""


class ModelRefused(ImgclsError):
    """A model file that is missing, changed since export, or not one of ours."""


class SearchUnavailable(ImgclsError):
    """An image search provider refused or failed (rate limit, auth, server error); the next source takes over."""
