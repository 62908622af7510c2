"""The generator's prompts: the worked examples of the same kind come first, and name the prompts' version."""

from tfrec.copywriter import generator as generator_module
from tfrec.copywriter.generator import EXAMPLES, PROMPT_VERSION, Generator, instruction, load_causal_lm
from tfrec.copywriter.guard import invented


def test_a_prompt_shows_the_examples_of_its_kind_before_the_product(tiny_preset, monkeypatch):
    causal_lm, is_chat = load_causal_lm(str(tiny_preset))
    generator = Generator(causal_lm, is_chat)
    plain = generator.prompt(instruction("RED MUG"))
    personal = generator.prompt(instruction("RED MUG", "BLUE TEAPOT"))
    for _title, because, pitch in EXAMPLES:
        assert (pitch in personal) == bool(because) and (pitch in plain) == (not because)
    assert plain.endswith("<|im_start|>user\nProduct: Red Mug\nWrite a one-sentence product description."
                          "<|im_end|>\n<|im_start|>assistant\n")
    assert plain.count("<|im_start|>assistant\n") == 1 + sum(not because for _, because, _ in EXAMPLES)
    assert generator.title_context().endswith("<|im_start|>user\nProduct: ")
    before = generator.fingerprint
    monkeypatch.setattr(generator_module, "PROMPT_VERSION", PROMPT_VERSION + 1)
    assert generator.fingerprint != before  # cached pitches of other prompts are not reused


def test_the_examples_pass_the_guard_of_their_own_inputs():
    for title, because, pitch in EXAMPLES:
        assert invented(pitch, [title] + ([because] if because else [])) == []
