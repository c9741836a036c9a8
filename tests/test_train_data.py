"""Training data: formats, file:line errors, and the loss mask (only assistant tokens train)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from train_data import write_jsonl

from phibox.device.errors import ConfigError
from phibox.device.prompt import SYSTEM_RULES
from phibox.train.config import TrainConfig, load_config
from phibox.train.data import IGNORE_INDEX, DataError, Example, load_examples, split, tokenize_all, tokenize_example

ROOT = Path(__file__).resolve().parent.parent


def test_three_formats_are_detected_per_line(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "d.jsonl", [
        {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."}]},
        {"question": "Torque?", "answer": "45 Nm."},
        {"question": "E42?", "answer": "Check oil [1].", "context": [{"source": "press.md", "text": "E42: oil low."}]},
    ])
    data = load_examples(path)
    assert [e.kind for e in data.examples] == ["messages", "qa", "rag"]
    rag = data.examples[2]
    assert rag.messages[0] == {"role": "system", "content": SYSTEM_RULES}
    assert "From press.md:\n[1]\nE42: oil low." in rag.messages[1]["content"]
    assert rag.messages[1]["content"].endswith("Question: E42?")
    assert len(data.sha256) == 64


def test_bad_lines_are_named_by_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text("\n".join([
        json.dumps({"question": "ok?", "answer": "yes"}),
        '{"question": "broken", ',
        json.dumps({"question": "no answer"}),
        json.dumps({"question": "empty", "answer": "  "}),
        json.dumps({"messages": [{"role": "user", "content": "q"}]}),
        json.dumps({"question": "q", "answer": "a", "context": [{"source": "x"}]}),
    ]) + "\n")
    with pytest.raises(DataError) as err:
        load_examples(path)
    text = str(err.value)
    assert f"{path}:2: invalid JSON" in text
    assert f'{path}:3: missing or empty "answer"' in text
    assert f'{path}:4: missing or empty "answer"' in text
    assert f"{path}:5: the last message must be a non-empty assistant answer" in text
    assert f'{path}:6: context passage 1 has no "text"' in text
    assert "--skip-invalid" in text


def test_skip_invalid_keeps_the_good_lines_and_reports_the_rest(tmp_path: Path) -> None:
    path = tmp_path / "mixed.jsonl"
    path.write_text(json.dumps({"question": "a?", "answer": "b"}) + "\nnot json\n")
    data = load_examples(path, skip_invalid=True)
    assert len(data.examples) == 1 and data.skipped == [f"{path}:2: invalid JSON (Expecting value at column 1)"]


def test_too_long_examples_are_named(tmp_path: Path, hf_tokenizer) -> None:
    rows = [{"question": "q " * 200, "answer": "a"}, {"question": "q", "answer": "a"}]
    path = write_jsonl(tmp_path / "long.jsonl", rows)
    examples = load_examples(path).examples
    with pytest.raises(DataError, match=rf"{path}:1: \d+ tokens, longer than max_seq_len 64"):
        tokenize_all(hf_tokenizer, examples, 64, path, skip_invalid=False)
    kept, _, problems = tokenize_all(hf_tokenizer, examples, 64, path, skip_invalid=True)
    assert len(kept) == 1 and len(problems) == 1


def test_only_assistant_turns_carry_labels(hf_tokenizer) -> None:
    ex = Example((
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Oil grade?"},
        {"role": "assistant", "content": "ISO VG 46."},
        {"role": "user", "content": "And the volume?"},
        {"role": "assistant", "content": "12 litres."},
    ), 1, "messages")
    tok = tokenize_example(hf_tokenizer, ex)
    trained = [i for i, label in zip(tok.input_ids, tok.labels, strict=True) if label != IGNORE_INDEX]
    assert hf_tokenizer.decode(trained) == "ISO VG 46.<|end|> 12 litres.<|end|>"
    end = hf_tokenizer.convert_tokens_to_ids("<|end|>")
    user = hf_tokenizer.convert_tokens_to_ids("<|user|>")
    pairs = list(zip(tok.input_ids, tok.labels, strict=True))
    assert sum(1 for i, lab in pairs if i == end and lab == IGNORE_INDEX) == 3  # system + 2 users
    assert all(lab == IGNORE_INDEX for i, lab in zip(tok.input_ids, tok.labels, strict=True) if i == user)
    assert all(lab in (IGNORE_INDEX, i) for i, lab in zip(tok.input_ids, tok.labels, strict=True))


def test_split_is_deterministic_and_never_empty(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "d.jsonl", [{"question": f"q{i}?", "answer": f"a{i}"} for i in range(10)])
    examples = load_examples(path).examples
    train1, eval1 = split(examples, 0.2, seed=1)
    _, eval2 = split(examples, 0.2, seed=1)
    assert [e.line for e in eval1] == [e.line for e in eval2] and len(eval1) == 2 and len(train1) == 8
    assert len(split(examples[:2], 0.01, seed=1)[1]) == 1


def test_config_validation_and_toml_overrides(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="lora_rank must be positive"):
        TrainConfig(lora_rank=0)
    toml = tmp_path / "c.toml"
    toml.write_text('lora_rank = 8\ntarget_modules = ["qkv_proj"]\n')
    cfg = load_config(toml, max_steps=5)
    assert (cfg.lora_rank, cfg.target_modules, cfg.max_steps, cfg.batch_size) == (8, ("qkv_proj",), 5, 4)
    toml.write_text("lora_rnak = 8\n")
    with pytest.raises(ConfigError, match=r"unknown train settings \['lora_rnak'\]"):
        load_config(toml)


@pytest.mark.parametrize("path", sorted((ROOT / "train" / "configs").glob("*.toml")), ids=lambda p: p.name)
def test_every_shipped_config_loads(path: Path) -> None:
    assert load_config(path).target_modules


def _feedback_row(question: str, answer: str, reviewed: bool, not_covered: bool = False) -> dict:
    """A line as `phibox feedback export` writes it."""
    return {"question": question, "answer": answer,
            "context": [{"source": "press.md", "heading": "E42", "page": None, "text": "E42: oil low."}],
            "feedback": {"id": 7, "bundle": "plant7", "version": 3, "rating": "not_helpful", "reviewed": reviewed,
                         "not_covered": not_covered, "answer_passages": [1], "created_at": "2025-01-02T03:04:05Z"}}


def test_feedback_lines_load_unchanged_and_several_files_are_counted(tmp_path: Path) -> None:
    from phibox.device.prompt import NOT_COVERED
    from phibox.train.data import load_many
    from phibox.train.report import data_lines

    base = write_jsonl(tmp_path / "base.jsonl", [{"question": "Torque?", "answer": "45 Nm."},
                                                 {"question": "Oil?", "answer": "ISO VG 46."}])
    fb = write_jsonl(tmp_path / "kiosk.jsonl", [
        _feedback_row("E42?", "Check the oil [1].", reviewed=True),
        _feedback_row("Wifi password?", NOT_COVERED, reviewed=True, not_covered=True),
        _feedback_row("E43?", "Check RV-3 [1].", reviewed=False),
    ])
    plain = load_examples(fb)
    assert [e.kind for e in plain.examples] == ["rag"] * 3
    assert all("feedback" not in m["content"] and "bundle" not in m["content"] for e in plain.examples
               for m in e.messages), "provenance is never rendered into the prompt"
    data = load_many([base, fb])
    assert len(data.examples) == 5 and data.examples[0].source == base and data.examples[4].line == 3
    assert data.feedback_counts() == {"examples": 5, "feedback": 3, "feedback_reviewed": 2,
                                      "feedback_unreviewed": 1, "not_covered": 1}
    assert [(f["file"], f["examples"], f["feedback"]) for f in data.files] == [("base.jsonl", 2, 0),
                                                                              ("kiosk.jsonl", 3, 3)]
    assert load_many([base]).sha256 == load_examples(base).sha256, "one file keeps its own hash (runs resume)"
    assert load_many([base, fb]).sha256 == data.sha256 != load_many([fb, base]).sha256, "hash follows file order"
    report = "\n".join(data_lines({"by_file": data.files, "feedback": data.feedback_counts()}))
    assert "| kiosk.jsonl | 3 | 3 | 2 | 1 | 1 | 0 |" in report
    assert "from kiosk feedback: 3 of 5 examples (2 reviewed" in report


def test_malformed_feedback_provenance_is_refused_with_its_line(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "fb.jsonl", [{"question": "Q?", "answer": "A.", "feedback": "yes"}])
    with pytest.raises(DataError, match=r"fb.jsonl:1: \"feedback\" must be an object"):
        load_examples(path)
