"""lpm_rt: a compiled streaming runtime for LPM-class conversational avatars."""

from .errors import ArtifactError, CapacityError, InvalidAudio, InvalidReference, LPMError

__version__ = "0.1.0"
__all__ = ["LPMError", "InvalidAudio", "InvalidReference", "ArtifactError", "CapacityError",
           "__version__"]
