"""The prompt budget: what the model sees of the passages when they do not all fit."""

from __future__ import annotations

import re

from phibox.device.rag.budget import fit_prompt, rank_shares
from phibox.device.rag.retrieve import Hit


def words(text: str) -> int:
    return len(text.split())


def hit(chunk_id: int, source: str, text: str, heading: str = "") -> Hit:
    return Hit(chunk_id, source, source, heading, None, text, 1.0 / chunk_id, 0.5, None)


def filler(n: int) -> str:
    """Twelve sentences no other passage shares (so none is dropped as a duplicate)."""
    return " ".join(f"Note {n}.{i} holds the words n{n}a{i} n{n}b{i} n{n}c{i}." for i in range(12))


def passage_text(prompt: str, n: int) -> str:
    """The text of passage [n] in a rendered prompt."""
    return re.search(rf"\[{n}\][^\n]*\n(.*?)(?:\n\n|\nQuestion)", prompt, re.S).group(1)


def test_passages_of_one_document_sit_together_and_their_numbers_follow_the_prompt() -> None:
    hits = [hit(1, "press.md", "E42 means low oil."), hit(2, "conveyor.md", "Bolts: 45 Nm."),
            hit(3, "press.md", "E55 means hot oil.")]
    prompt, used, _ = fit_prompt("What is E42?", hits, words, 400)
    assert [h.chunk_id for h in used] == [1, 3, 2]
    assert prompt.count("From press.md") == 1
    assert [passage_text(prompt, n) for n in (1, 2, 3)] == [h.text for h in used]  # [n] cites used[n-1]


def test_a_tight_budget_drops_the_lowest_ranked_passage_not_the_last_printed() -> None:
    hits = [hit(1, "press.md", "E42 means low oil. " * 5), hit(2, "conveyor.md", "Bolts: 45 Nm. " * 5),
            hit(3, "press.md", "E55 means hot oil. " * 5)]
    full = fit_prompt("What is E42?", hits, words, 400)[2]
    _, used, n = fit_prompt("What is E42?", hits, words, full - 5)
    assert n <= full - 5 and [h.chunk_id for h in used] == [1, 2]


def test_the_best_ranked_passage_keeps_the_most_of_its_text() -> None:
    hits = [hit(i, f"m{i}.md", f"E42 check oil. {filler(i)}") for i in (1, 2, 3, 4)]
    prompt, used, n = fit_prompt("E42 check oil?", hits, words, 160)
    kept = [words(passage_text(prompt, k)) for k in range(1, len(used) + 1)]
    assert n <= 160 and kept == sorted(kept, reverse=True) and kept[0] > kept[-1]
    assert all("E42 check oil." in passage_text(prompt, k) for k in range(1, len(used) + 1))


def test_shares_favour_rank_and_never_fall_below_32_tokens() -> None:
    shares = rank_shares(300, 4)
    assert shares == sorted(shares, reverse=True) and shares[0] > 2 * shares[1] - 1
    assert min(rank_shares(40, 5)) == 32
