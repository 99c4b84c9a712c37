"""lpm_rt: a compiled streaming runtime for LPM-class conversational avatars.

    import lpm_rt
    avatar = lpm_rt.load("demo")
    with avatar.open_session(references=[img], prompt="smile") as sess:
        sess.push_audio(pcm, 16000, track="speaker")
        sess.flush()
        for frame in sess.frames(): ...
"""

from .errors import ArtifactError, CapacityError, InvalidAudio, InvalidReference, LPMError
from .loader import load
from .session import Avatar, Frame, OutputSpec, Reference, Session

__version__ = "0.1.0"
__all__ = ["load", "Avatar", "Session", "Frame", "OutputSpec", "Reference",
           "LPMError", "InvalidAudio", "InvalidReference", "ArtifactError", "CapacityError",
           "__version__"]
