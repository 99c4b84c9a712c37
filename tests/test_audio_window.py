"""Audio-window slot embeddings (``ModelConfig.audio_window_pos``, ``audio_encoder.window``).

Audio cross-attention is un-rotated and ``audio_encoder.pos`` only says which token of its frame
a token is: without the slot embedding, a frame's window [previous frame | own frame] is a bag,
and nothing downstream can tell the two frames apart. These tests pin that down, check that the
embedding breaks it where it should, and that a zero embedding leaves a model as it was."""

import pytest
import torch

from lpm_rt.config import preset
from lpm_rt.model.audio import MEL_HOP, MEL_WIN, log_mel
from lpm_rt.model.dit import LPMDiT, lpm_only_keys
from lpm_rt.model.online import OnlineLPM

from _util import rel_err
from test_stream_equivalence import _stream_and_dense


def _nets(seed=0):
    cfg = preset("tiny").model
    plain = LPMDiT(cfg).init_weights(seed).eval()
    slotted = LPMDiT(cfg.replace(audio_window_pos=True)).init_weights(seed).eval()
    return cfg, plain, slotted


def _mel(cfg, frames, seed=1):
    g = torch.Generator().manual_seed(seed)
    spl = cfg.vae_temporal * 1000
    audio = torch.randn(1, (MEL_WIN - MEL_HOP) + (cfg.audio_context + frames) * spl, generator=g) * 0.1
    return log_mel(audio, cfg.n_mels)


def test_slot_embedding_is_an_lpm_parameter_that_starts_at_zero():
    cfg, plain, slotted = _nets()
    extra = set(slotted.state_dict()) - set(plain.state_dict())
    assert extra == {"audio_encoder.window"} and set(plain.state_dict()) <= set(slotted.state_dict())
    assert lpm_only_keys(extra) == ["audio_encoder.window"]          # not a Wan key
    assert slotted.audio_encoder.window.shape == (cfg.audio_context + 1, cfg.audio_dim)
    assert not slotted.audio_encoder.window.any()
    slotted.load_state_dict({**slotted.state_dict(), **plain.state_dict()})
    mel = _mel(cfg, 3)
    with torch.no_grad():
        assert torch.equal(slotted.encode_audio(mel), plain.encode_audio(mel))


def test_without_slots_the_window_is_a_bag():
    """The frame's own tokens and its previous frame's swapped: without the slot embedding the
    audio cross-attention cannot tell (same output); with it, it can."""
    cfg, plain, slotted = _nets()
    assert cfg.audio_context == 1
    A = cfg.audio_tokens_per_frame
    with torch.no_grad():
        slotted.audio_encoder.window.copy_(torch.randn(slotted.audio_encoder.window.shape,
                                                       generator=torch.Generator().manual_seed(2)))
        x = torch.randn(1, 8, cfg.dim, generator=torch.Generator().manual_seed(3))
        mel = _mel(cfg, 1)
        for net, same in ((plain, True), (slotted, False)):
            tok = net.audio_encoder(mel)                                        # [1, 2, A, Da]
            slot = getattr(net.audio_encoder, "window", torch.zeros(2, cfg.audio_dim))[:, None]
            win, swapped = ((t + slot).flatten(1, 2) for t in (tok, tok.flip(1)))   # the slots stay put
            assert torch.equal(win, net.encode_audio(mel)[:, 0])
            attn = net.blocks[0].audio_attn
            a, b = attn.cross(x, win), attn.cross(x, swapped)
            assert torch.allclose(a, b, atol=1e-6) == same, net.cfg.audio_window_pos


def test_slots_are_oldest_first():
    """window[-1] is added to the frame's own tokens, window[0] to the oldest context frame's."""
    cfg, _, slotted = _nets()
    A = cfg.audio_tokens_per_frame
    mel = _mel(cfg, 3)
    with torch.no_grad():
        tokens = slotted.audio_encoder(mel)                                     # [1, ctx + F, A, Da]
        slotted.audio_encoder.window.copy_(torch.arange(cfg.audio_context + 1.0)[:, None] + 10.0)
        win = slotted.encode_audio(mel)
    for f in range(3):
        assert torch.allclose(win[0, f, A:], tokens[0, f + 1] + 11.0)          # own frame
        assert torch.allclose(win[0, f, :A], tokens[0, f] + 10.0)              # previous frame


def test_stream_with_slots_equals_the_block_causal_forward():
    """The runtime's chunk step reads the slots exactly as the training form does."""
    cfg = preset("tiny")
    cfg = cfg.replace(model=cfg.model.replace(audio_window_pos=True),
                      stream=cfg.stream.replace(history_frames=3),
                      runtime=cfg.runtime.replace(max_sessions=2))
    model = OnlineLPM(cfg).init_weights(3).eval()
    with torch.no_grad():
        for net in (model.backbone, model.refiner):
            net.audio_encoder.window.normal_(generator=torch.Generator().manual_seed(4))
    v_stream, v_dense = _stream_and_dense(model, n_chunks=3)
    assert rel_err(v_stream, v_dense) < 1e-5
    with torch.no_grad():                               # and the slots are really read
        model.backbone.audio_encoder.window.zero_()
    v_zero, _ = _stream_and_dense(model, n_chunks=3)
    assert rel_err(v_stream, v_zero) > 1e-4


def test_speaker_window_is_the_newest_frames_of_the_listeners():
    """``speaker_audio_context``: the speaker's track reads the newest frames of the (wider)
    window the listener's reads, with the newest slots -- exactly what a model built with that
    narrower window reads from the same audio; the listener's window is untouched."""
    cfg = preset("tiny").model.replace(audio_window_pos=True, audio_context=4)
    split = LPMDiT(cfg.replace(speaker_audio_context=1)).init_weights(0).eval()
    wide = LPMDiT(cfg).init_weights(0).eval()
    narrow = LPMDiT(cfg.replace(audio_context=1)).init_weights(0).eval()
    with torch.no_grad():
        split.audio_encoder.window.normal_(generator=torch.Generator().manual_seed(2))
        for net in (wide, narrow):
            sd = {k: v for k, v in split.state_dict().items() if k != "audio_encoder.window"}
            net.load_state_dict(sd, strict=False)
        wide.audio_encoder.window.copy_(split.audio_encoder.window)
        narrow.audio_encoder.window.copy_(split.audio_encoder.window[-2:])
        mel = _mel(cfg, 3)
        spk, lis = split.encode_audio_tracks((mel, mel))
        k = 3 * split.audio_encoder.mel_per_frame                  # the 3 context frames it drops
        assert spk.shape[2] == 2 * cfg.audio_tokens_per_frame and lis.shape[2] == 5 * cfg.audio_tokens_per_frame
        assert torch.equal(spk, narrow.encode_audio(mel[:, k:]))
        assert torch.equal(lis, wide.encode_audio(mel))
        assert torch.equal(wide.encode_audio_tracks((mel, mel))[0], lis)       # unset: one window for both
    with pytest.raises(ValueError, match="speaker_audio_context"):
        cfg.replace(speaker_audio_context=5)


def test_stream_with_a_narrower_speaker_window_equals_the_block_causal_forward():
    cfg = preset("tiny")
    cfg = cfg.replace(model=cfg.model.replace(audio_window_pos=True, audio_context=3, speaker_audio_context=1),
                      stream=cfg.stream.replace(history_frames=3, speaker_guidance=2.0),
                      runtime=cfg.runtime.replace(max_sessions=2))
    model = OnlineLPM(cfg).init_weights(3).eval()
    with torch.no_grad():
        for net in (model.backbone, model.refiner):
            net.audio_encoder.window.normal_(generator=torch.Generator().manual_seed(4))
    model.cfg = model.cfg.replace(stream=cfg.stream.replace(speaker_guidance=1.0))   # the dense form has none
    v_stream, v_dense = _stream_and_dense(model, n_chunks=3)
    assert rel_err(v_stream, v_dense) < 1e-5
    model.cfg = cfg                                                # guided: runs, silence's windows match
    v_guided, _ = _stream_and_dense(model, n_chunks=3)
    assert torch.isfinite(v_guided).all() and rel_err(v_guided, v_stream) > 1e-4


@pytest.mark.parametrize("bad", [0.0, -1.0])
def test_audio_lr_mult_must_be_positive(bad, tmp_path):
    from lpm_rt.train import main
    with pytest.raises(SystemExit):
        main(["distill", "--teacher", str(tmp_path), "--steps", "1", "--audio-lr-mult", str(bad),
              "--out", str(tmp_path / "x")])
