"""Text conditioning: precomputed embeddings ([L, text_dim], e.g. umT5 for Wan checkpoints) or,
for small models, prompts made of tags from a built-in vocabulary, each an embedding row
(``tag_embedding``, trained with the model)."""

from __future__ import annotations

import re

import torch

__all__ = ["TAGS", "tag_ids", "tag_context"]

# Index 0 is the null tag (empty prompt, and the unconditional branch of guidance).
TAGS = ("<null>", "neutral", "calm", "smile", "happy", "sad", "surprised", "angry",
        "talk", "listen", "nod", "laugh", "serious", "excited", "tired", "shy")
_ALIASES = {"surprise": "surprised", "smiling": "smile", "sadness": "sad", "happiness": "happy"}


def tag_ids(prompt: str, num_tags: int) -> list:
    """Known tags of ``prompt`` in order of appearance (unknown words are ignored); [0] if none."""
    vocab = TAGS[:num_tags]
    out = []
    for word in re.findall(r"[a-z<>]+", prompt.lower()):
        word = _ALIASES.get(word, word)
        if word in vocab and vocab.index(word) not in out:
            out.append(vocab.index(word))
    return out or [0]


def tag_context(dit, prompt: str) -> torch.Tensor:
    """Prompt -> text embeddings [1, L, text_dim] through ``dit.tag_embedding``."""
    ids = torch.tensor(tag_ids(prompt, dit.cfg.num_tags), device=dit.tag_embedding.weight.device)
    return dit.tag_embedding(ids).unsqueeze(0)
