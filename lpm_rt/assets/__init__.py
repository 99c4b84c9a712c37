"""Built-in assets, drawn from the synthetic world (nothing binary ships but the demo weights):
the default character and the demo's conversation audio."""

from __future__ import annotations

import numpy as np

__all__ = ["DEFAULT_CHARACTER_SEED", "default_character", "builtin_conversation"]

DEFAULT_CHARACTER_SEED = 7


def default_character(height: int, width: int) -> list:
    """References of the default character: a front `global` view plus a three-quarter
    `body_view` and a smiling `face_expression`, as HxWx3 uint8 images with their kinds."""
    from ..session import Reference
    from ..world import Character, render_reference

    ch = Character.random(DEFAULT_CHARACTER_SEED)
    size = (height, width)
    return [Reference(render_reference(ch, "front", "neutral", size), "global"),
            Reference(render_reference(ch, "three_quarter_left", "neutral", size), "body_view"),
            Reference(render_reference(ch, "front", "smile", size), "face_expression")]


def builtin_conversation(seconds: float, seed: int = 0):
    """A conversation with the default character: (speaker, listener), each (float32 PCM, rate).
    The avatar (speaker track) and a partner (listener track) take turns, with pauses and
    backchannels, so the demo shows the avatar both talking and listening. The avatar opens:
    the first conversation from ``seed`` on whose first phrase is the avatar's is taken."""
    from ..world import Character, Conversation

    ch = Character.random(DEFAULT_CHARACTER_SEED)
    for s in range(seed, seed + 64):
        conv = Conversation.generate(s, seconds, mode="conversation", prompt="calm", character=ch)
        if conv.segments and conv.segments[0][0] == 0:
            break
    return (conv.self_audio.astype(np.float32), conv.sample_rate), \
           (conv.partner_audio.astype(np.float32), conv.sample_rate)
