"""The demo's word-level tokenizer and tiny UMT5 encoder inside a stock WanPipeline."""

import torch
from diffusers import WanPipeline

from dcm.models.wan import tiny_wan_components
from dcm_demo.text import MAX_SEQUENCE_LENGTH, text_encoder, vocabulary, word_tokenizer
from dcm_demo.world import COLOURS, SHAPES


def test_every_caption_word_has_its_own_id_and_unknown_words_map_to_unk():
    tok = word_tokenizer()
    ids = tok("A Small yellow TRIANGLE moving right slowly").input_ids
    assert len(ids) == 7 and tok.unk_token_id not in ids
    assert tok.convert_ids_to_tokens(ids) == ["a", "small", "yellow", "triangle", "moving", "right", "slowly"]
    assert tok("a zebra").input_ids == [vocabulary().index("a"), tok.unk_token_id]
    assert len({tok(c).input_ids[0] for c in [*COLOURS, *SHAPES]}) == len(COLOURS) + len(SHAPES)
    assert tok.pad_token_id == 0


def test_pipeline_with_the_demo_text_side_saves_reloads_and_encodes_the_same(tmp_path):
    tok = word_tokenizer()
    encoder = text_encoder(tok, dim=32, layers=2)
    parts = tiny_wan_components()
    pipe = WanPipeline(transformer=parts["transformer"], vae=parts["vae"], text_encoder=encoder, tokenizer=tok,
                       scheduler=parts["scheduler"])  # fmt: skip
    pipe.save_pretrained(tmp_path)
    reloaded = WanPipeline.from_pretrained(tmp_path)
    prompts = ["a red circle moving left", "a blue circle moving left", ""]
    with torch.no_grad():
        before, _ = pipe.encode_prompt(prompts, do_classifier_free_guidance=False,
                                       max_sequence_length=MAX_SEQUENCE_LENGTH)  # fmt: skip
        after, _ = reloaded.encode_prompt(prompts, do_classifier_free_guidance=False,
                                          max_sequence_length=MAX_SEQUENCE_LENGTH)  # fmt: skip
    assert before.shape == (3, MAX_SEQUENCE_LENGTH, 32)
    torch.testing.assert_close(before, after)
    assert (before[0] - before[1]).abs().mean() > 0.01  # one colour word apart
    assert before[2].abs().max() == 0  # the empty prompt: all padding, zero embedding
