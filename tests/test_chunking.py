"""Markdown read by a real CommonMark parser and chunks that follow it, measured with MiniLM's own
tokenizer (the embedder's; no model is run)."""

from __future__ import annotations

import re
from collections.abc import Callable
from itertools import pairwise
from pathlib import Path

import pytest

from phibox.device.rag.chunking import chunk_sections
from phibox.device.rag.readers import Section, read_document, read_markdown

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def count(minilm_dir: Path) -> Callable[[str], int]:
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(minilm_dir / "tokenizer.json"))
    tokenizer.no_truncation()
    tokenizer.no_padding()
    return lambda text: len(tokenizer.encode(text, add_special_tokens=False).ids)


def overlap_of(previous: str, following: str) -> str:
    """The longest end of previous, from a word start, that the following chunk opens with."""
    for match in re.finditer(r"(?:^|(?<=\s))\S", previous):
        if following.startswith(previous[match.start():]):
            return previous[match.start():]
    return ""


def headings(markdown: str) -> list[str]:
    return [s.heading for s in read_markdown(markdown, Path("m.md")).sections]


def test_hash_lines_in_code_blocks_are_code_and_setext_headings_are_headings() -> None:
    markdown = ("# Pump P-7\n\nBleed the pump:\n\n```sh\n# comment: run as root\nbleed --all\n```\n\n"
                "Or the old way:\n\n    # indented comment\n    bleed -a\n\n"
                "Faults\n======\n\nE1 dry run.\n\nSeal kit\n--------\n\nPart 77-1.\n")
    doc = read_markdown(markdown, Path("pump.md"))
    assert [s.heading for s in doc.sections] == ["Pump P-7", "Faults", "Faults > Seal kit"]
    assert doc.title == "Pump P-7"
    first = doc.sections[0].text
    assert "```sh\n# comment: run as root\nbleed --all\n```" in first
    assert "    # indented comment\n    bleed -a" in first


def test_front_matter_and_html_comments_are_not_manual_text() -> None:
    markdown = ("---\ntitle: Pump P-7 manual\nrevision: 3\n---\n\n<!-- draft: check torque -->\n\n"
                "Intro.\n\n## Faults\n\n<div class=\"note\">Wear gloves &amp; goggles.</div>\n")
    doc = read_markdown(markdown, Path("pump.md"))
    assert doc.title == "Pump P-7 manual"
    assert [(s.heading, s.text) for s in doc.sections] == [("", "Intro."), ("Faults", "Wear gloves & goggles.")]


def test_a_table_that_fits_stays_whole_in_one_chunk_with_its_header(count) -> None:
    rows = "\n".join(f"| E{i} | valve V-{i} stuck | replace seal kit {i} |" for i in range(6))
    table = f"| Code | Fault | Action |\n|---|---|---|\n{rows}"
    prose = " ".join(f"Sentence {i} says to inspect hose H-{i} monthly." for i in range(12))
    markdown = f"# Press\n\n{prose}\n\n{table}\n\n{prose}\n"
    chunks = chunk_sections(read_markdown(markdown, Path("press.md")).sections, count, 160, 32)
    assert len(chunks) >= 3
    holding = [c for c in chunks if "| E" in c.text]
    assert len(holding) == 1 and table in holding[0].text
    assert all(c.tokens <= 160 and count(c.text) <= 160 for c in chunks)


def test_a_table_larger_than_a_chunk_splits_by_rows_each_under_the_header(count) -> None:
    header = "| Code | Fault | Action |\n|---|---|---|"
    rows = [f"| E{i:02d} | valve V-{i} stuck at {i * 10} bar | replace seal kit {i} |" for i in range(40)]
    markdown = "# Press\n\n## Fault table\n\n" + header + "\n" + "\n".join(rows) + "\n"
    chunks = chunk_sections(read_markdown(markdown, Path("press.md")).sections, count, 160, 32)
    assert len(chunks) > 3
    assert all(c.text.startswith(header + "\n") and c.tokens <= 160 for c in chunks)
    seen = [line for c in chunks for line in c.text.splitlines()[2:]]
    assert seen == rows  # every row once, in order, none cut


def test_a_long_paragraph_overlaps_its_neighbours_by_at_most_the_promised_tokens(count) -> None:
    paragraph = " ".join(f"Step {i}: open valve V-{i}, wait {i + 2} minutes and write pressure P{i} into log "
                         f"sheet S-{i * 7}, then close valve V-{i} slowly" for i in range(25))  # no full stops
    for sections in ([Section("Press > Checks", 7, paragraph)],
                     read_markdown(f"# Press\n\n## Checks\n\n{paragraph}\n", Path("press.md")).sections):
        chunks = chunk_sections(sections, count, 64, 16)
        assert len(chunks) > 5
        assert all(c.tokens <= 64 and count(c.text) <= 64 for c in chunks)
        for previous, following in pairwise(chunks):
            shared = overlap_of(previous.text, following.text)
            assert 0 < count(shared) <= 16, (previous.text, following.text)
            assert count(shared) >= 8  # about the promised overlap, not a word or two
        words = paragraph.split()
        assert " ".join(chunks[0].text.split() + [w for prev, c in pairwise(chunks)
                                                  for w in c.text[len(overlap_of(prev.text, c.text)):].split()]) \
            == " ".join(words)  # nothing lost, nothing repeated beyond the overlap


def test_a_code_block_that_fits_is_never_split(count) -> None:
    code = "```sh\n" + "\n".join(f"# step {i}\nvalve --open V-{i}" for i in range(8)) + "\n```"
    prose = " ".join(f"Sentence {i} says to inspect hose H-{i} monthly." for i in range(12))
    chunks = chunk_sections(read_markdown(f"# Press\n\n{prose}\n\n{code}\n", Path("p.md")).sections, count, 160, 32)
    assert [c.heading for c in chunks] == ["Press"] * len(chunks)
    assert sum(code in c.text for c in chunks) == 1


DEMO_HEADINGS = {
    "conveyor-CV1.md": ["Conveyor CV-1", "Conveyor CV-1 > Belt tracking", "Conveyor CV-1 > Belt tension",
                        "Conveyor CV-1 > Motor mount", "Conveyor CV-1 > Faults > C12 belt slip",
                        "Conveyor CV-1 > Faults > C30 motor overload"],
    "filler-FL3.md": ["Filler FL-3", "Filler FL-3 > Start-up", "Filler FL-3 > Nozzle cleaning",
                      "Filler FL-3 > Faults > F08 fill weight out of tolerance",
                      "Filler FL-3 > Faults > F21 air pressure low"],
    "hydraulic-press-HP200.md": ["Hydraulic press HP-200", "Hydraulic press HP-200 > Safety",
                                 "Hydraulic press HP-200 > Faults > E42 low hydraulic pressure",
                                 "Hydraulic press HP-200 > Faults > E17 ram overtravel",
                                 "Hydraulic press HP-200 > Faults > E55 oil temperature high",
                                 "Hydraulic press HP-200 > Maintenance"],
    "safety-lockout-LOTO.md": ["Lockout and tagout procedure LOTO-01", "Lockout and tagout procedure LOTO-01 > Steps",
                               "Lockout and tagout procedure LOTO-01 > Removing locks",
                               "Lockout and tagout procedure LOTO-01 > Personal protective equipment"],
}


@pytest.mark.parametrize("name", sorted(DEMO_HEADINGS))
def test_the_demo_manuals_keep_the_sections_the_line_reader_found(name: str) -> None:
    doc = read_document(REPO / "demo" / "manuals" / name)
    assert [s.heading for s in doc.sections] == DEMO_HEADINGS[name]
    assert doc.title == DEMO_HEADINGS[name][0]


def test_a_list_larger_than_a_chunk_keeps_one_item_a_line(count) -> None:
    steps = "\n".join(f"{i}. Close valve V-{i} and hang tag T-{i} on its handle." for i in range(1, 25))
    chunks = chunk_sections(read_markdown(f"# LOTO\n\n## Steps\n\n{steps}\n", Path("loto.md")).sections, count, 64, 16)
    assert len(chunks) > 3
    for chunk in chunks:
        lines = chunk.text.splitlines()
        assert all(line in steps.splitlines() for line in lines[1:]), chunk.text
        assert any(line.endswith(lines[0]) for line in steps.splitlines())  # a whole item or an item's end
