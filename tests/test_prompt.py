"""The prompt contract: exact text, and the same text through the tokenizer's chat template."""

from __future__ import annotations

import pytest

from phibox.device.prompt import Passage, build_messages, build_prompt, render_chat, user_message

PASSAGES = [
    Passage(source="press-manual.pdf", heading="Faults > E42", page=12,
            text="E42 means low hydraulic pressure. Check the oil level and the relief valve."),
    Passage(source="compressor.md", text="Drain the condensate daily.  "),
]

EXPECTED = (
    "<|system|>\n"
    "You are the maintenance assistant of this plant. Answer the technician's question using only "
    "the numbered passages from the plant's manuals. Cite every passage you use as [n]. If the "
    "passages do not contain the answer, say plainly that the manuals do not cover it. Answer in "
    "the language of the question, even when the passages are in another language. Keep the "
    "answer short and practical.<|end|>\n"
    "<|user|>\n"
    "Passages:\n"
    "From press-manual.pdf:\n"
    "[1] Faults > E42, page 12\n"
    "E42 means low hydraulic pressure. Check the oil level and the relief valve.\n"
    "\n"
    "From compressor.md:\n"
    "[2]\n"
    "Drain the condensate daily.\n"
    "\n"
    "Question: The press shows E42, what do I check?<|end|>\n"
    "<|assistant|>\n"
)


def test_prompt_text_is_pinned() -> None:
    assert build_prompt("  The press shows E42, what do I check? ", PASSAGES) == EXPECTED


def test_a_documents_name_and_shared_headings_are_written_once() -> None:
    passages = [Passage("press.md", "E42: check the oil level.", "Press HP-200 > Faults > E42"),
                Passage("press.md", "E55: clean the cooler.", "Press HP-200 > Faults > E55"),
                Passage("conveyor.md", "Bolts M10: 45 Nm.", "Conveyor CV-1 > Motor mount", 3)]
    block = user_message("What do I check?", passages)
    assert block == ("Passages:\nFrom press.md > Press HP-200 > Faults:\n[1] E42\nE42: check the oil level.\n\n"
                     "[2] E55\nE55: clean the cooler.\n\n"
                     "From conveyor.md:\n[3] Conveyor CV-1 > Motor mount, page 3\nBolts M10: 45 Nm.\n\n"
                     "Question: What do I check?")
    assert block.count("press.md") == 1 and block.count("Faults") == 1


def test_no_passages_says_so_instead_of_leaving_a_gap() -> None:
    prompt = build_prompt("What is the torque of the labeller's bolts?", [])
    assert "No passages from the manuals matched this question." in prompt
    assert "[1]" not in prompt


def test_empty_question_is_refused() -> None:
    with pytest.raises(ValueError, match="question is empty"):
        build_prompt("   ", PASSAGES)


def test_unknown_role_is_refused() -> None:
    with pytest.raises(ValueError, match="role 'tool'"):
        render_chat([{"role": "tool", "content": "x"}])


def test_generation_prompt_matches_the_tokenizers_chat_template(hf_tokenizer) -> None:
    messages = build_messages("The press shows E42, what do I check?", PASSAGES)
    via_template = hf_tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert via_template == build_prompt("The press shows E42, what do I check?", PASSAGES)


def test_training_text_matches_the_tokenizers_chat_template(hf_tokenizer) -> None:
    messages = [*build_messages("Where is the oil filter?", PASSAGES),
                {"role": "assistant", "content": "Behind the left panel [1]."}]
    via_template = hf_tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=False)
    ours = render_chat(messages, add_generation_prompt=False)
    assert via_template == ours
    assert ours.endswith("Behind the left panel [1].<|end|>\n<|endoftext|>")


def test_prompt_token_ids_round_trip(hf_tokenizer) -> None:
    prompt = build_prompt("The press shows E42, what do I check?", PASSAGES)
    ids = hf_tokenizer(prompt, add_special_tokens=True).input_ids
    assert ids[0] == hf_tokenizer.convert_tokens_to_ids("<|system|>")
    assert ids[-1] == hf_tokenizer.convert_tokens_to_ids("<|assistant|>")
    text = hf_tokenizer.decode(ids, skip_special_tokens=True)
    assert "Question: The press shows E42, what do I check?" in text
    assert "From press-manual.pdf:\n[1] Faults > E42, page 12" in text
