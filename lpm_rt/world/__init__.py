"""The synthetic dyadic-conversation world: seeded characters, conversations with per-frame
labels, renders, a dataset writer/reader (:mod:`.dataset`), and LPM-Bench-mini (:mod:`.bench`).

    ch = Character.random(0)
    img = render_reference(ch, view="three_quarter_left", expression="smile", size=128)
    conv = Conversation.generate(seed=1, seconds=10.0, mode="conversation", prompt="smile")
    video = conv.render(128)        # [T, 128, 128, 3] uint8; conv.labels: per-frame labels
"""

from .character import EXPRESSIONS, MOUTH_SHAPES, VIEWS, Character
from .conversation import FPS, SR, TAGS, Conversation
from .render import FaceState, Scene, render_reference, render_video

__all__ = ["Character", "Conversation", "Scene", "FaceState", "render_reference", "render_video",
           "VIEWS", "EXPRESSIONS", "MOUTH_SHAPES", "TAGS", "FPS", "SR"]
