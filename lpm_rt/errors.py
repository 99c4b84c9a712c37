"""Typed errors of the public API. All derive from :class:`LPMError`."""

__all__ = ["LPMError", "InvalidAudio", "InvalidReference", "ArtifactError", "CapacityError"]


class LPMError(Exception):
    """Base class of every error lpm_rt raises on purpose."""


class InvalidAudio(LPMError, ValueError):
    """Audio rejected: NaN/inf, wrong shape or dtype, sample rate out of range, unknown track."""


class InvalidReference(LPMError, ValueError):
    """A reference image could not be used: unreadable, wrong shape/dtype, too many, bad kind."""


class ArtifactError(LPMError):
    """A model directory or compiled artifact failed verification (hash, version, target...)."""


class CapacityError(LPMError):
    """Not enough KV pages (or session slots) to admit a new session."""
