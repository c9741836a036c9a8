"""The feedback loop from the command line: kiosk ratings → `phibox feedback export` → `merge` →
`phibox train --data base --data feedback` → `merge` → `export` v4 → `phibox eval answers` v3 vs v4.
Unit tests first (merge rules, the answer measures), then the loop end to end on the tiny stack."""

from __future__ import annotations

import json
import tarfile
from pathlib import Path
from types import SimpleNamespace

import pytest

from phibox.device.cli.main import main
from phibox.device.prompt import NOT_COVERED
from phibox.device.rag import answers_eval as ae
from phibox.device.rag.feedback_merge import merge, normalise_question

ROOT = Path(__file__).resolve().parent.parent
DEMO = ROOT / "demo"
TINY_CONFIG = ROOT / "train" / "configs" / "tiny-test.toml"
E42 = {"source": "hydraulic-press-HP200.md", "heading": "Faults", "page": None,
       "text": "The press stops with E42 when the hydraulic pressure falls below 180 bar."}
PUMP = {"source": "pump.md", "heading": "Start", "page": None, "text": "Start the pump with the green button."}


def line(question: str, answer: str, *, reviewed: bool | None, created: str = "2025-01-01T08:00:00+00:00",
         marked: list[int] | None = None, not_covered: bool = False) -> dict:
    """A line as `phibox feedback export` writes it (reviewed=None: a hand-written line, no provenance)."""
    row: dict = {"question": question, "answer": answer, "context": [E42, PUMP]}
    if reviewed is not None:
        row["feedback"] = {"id": 1, "bundle": "plant7", "version": 3, "rating": "not_helpful", "reviewed": reviewed,
                           "not_covered": not_covered, "answer_passages": [1] if marked is None else marked,
                           "created_at": created}
    return row


def write(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_questions_match_ignoring_case_spaces_and_trailing_punctuation() -> None:
    assert normalise_question("  The press shows  E42, what do I check?? ") == "the press shows e42, what do i check"
    assert normalise_question("压力机显示E42？") == normalise_question("压力机显示E42")
    assert normalise_question("E42?") != normalise_question("E43?")


def test_merge_keeps_the_newest_reviewed_answer_and_reports_conflicts(tmp_path: Path) -> None:
    a = write(tmp_path / "kiosk1.jsonl", [
        line("E42, what now?", "Check the oil [1].", reviewed=False, created="2025-03-01T00:00:00+00:00"),
        line("Torque?", "45 Nm.", reviewed=True),
        line("E17 what now", "Lock out first [1].", reviewed=True, created="2025-01-01T00:00:00+00:00"),
    ])
    b = write(tmp_path / "kiosk2.jsonl", [
        line("e42,   WHAT NOW", "Check the relief valve RV-3 [1].", reviewed=True, created="2025-02-01T00:00:00+00:00"),
        line("torque", "45 Nm.", reviewed=True),
        line("E17 what now!", "Lock out, then reset LS-2 [1].", reviewed=True, created="2025-02-01T00:00:00+00:00"),
        line("Wifi password?", NOT_COVERED, reviewed=True, marked=[], not_covered=True),
    ])
    result = merge([a, b])
    assert (result.read, result.duplicates, len(result.lines)) == (7, 3, 4)
    assert [(r["question"], r["answer"]) for r in result.lines] == [
        ("e42,   WHAT NOW", "Check the relief valve RV-3 [1]."),  # reviewed beats a newer unreviewed line
        ("torque", "45 Nm."),
        ("E17 what now!", "Lock out, then reset LS-2 [1]."),  # the newest of two reviewed
        ("Wifi password?", NOT_COVERED),
    ], "first-seen order, the kept line as written"
    assert result.conflicts == ["e42,   WHAT NOW", "E17 what now!"], "the same answer twice is no conflict"


def test_reviewed_wins_over_a_newer_unreviewed_line(tmp_path: Path) -> None:
    a = write(tmp_path / "a.jsonl", [line("E42?", "Reviewed answer.", reviewed=True, created="2024-01-01T00:00:00")])
    b = write(tmp_path / "b.jsonl", [line("e42", "Shown answer.", reviewed=False, created="2025-06-01T00:00:00")])
    assert [r["answer"] for r in merge([a, b]).lines] == ["Reviewed answer."]
    assert [r["answer"] for r in merge([b, a]).lines] == ["Reviewed answer."]


def test_merge_refuses_bad_lines_naming_file_and_line(tmp_path: Path, capsys) -> None:
    good = write(tmp_path / "good.jsonl", [line("E42?", "Oil.", reviewed=True)])
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps(line("Q?", "A.", reviewed=True)) + "\n{not json\n"
                   + json.dumps({"question": "no answer"}) + "\n")
    assert main(["feedback", "merge", str(good), str(bad), "--out", str(tmp_path / "m.jsonl")]) == 1
    err = capsys.readouterr().err
    assert f"{bad}:2: invalid JSON" in err and f'{bad}:3: missing or empty "answer"' in err
    assert not (tmp_path / "m.jsonl").exists(), "nothing is written from a half-valid set"


@pytest.mark.parametrize(("answer", "reference", "f1"), [
    ("Check the oil level [1].", "check oil level", 1.0),
    ("Check the relief valve", "Check the oil level", 1 / 3),
    ("", "", 1.0),
    ("45 Nm", "", 0.0),
    ("torque 45 Nm", "45 Nm", 0.8),
    ("Lorem ipsum", "45 Nm", 0.0),
])
def test_token_f1_is_squad_style(answer: str, reference: str, f1: float) -> None:
    assert ae.token_f1(answer, reference) == pytest.approx(f1)


def _hit(source: str, text: str) -> SimpleNamespace:
    return SimpleNamespace(source=source, text=text)


def test_retrieval_hit_and_citation_overlap_match_passages_across_indexes(tmp_path: Path) -> None:
    rows, unreviewed = ae.load_reviewed(write(tmp_path / "r.jsonl", [
        line("E42?", "Check the oil.", reviewed=True, marked=[1]),
        line("E43?", "Shown.", reviewed=False),
        line("Wifi?", NOT_COVERED, reviewed=True, marked=[], not_covered=True),
        {"question": "Pump?", "answer": "Green button.", "context": [PUMP]},
    ]))
    assert unreviewed == 1 and [r.question for r in rows] == ["E42?", "Wifi?", "Pump?"]
    e42, wifi, pump = rows
    assert pump.marked == ({"source": "pump.md", "text": PUMP["text"]},), "plain lines: every passage is marked"
    # another index chunks differently: a longer chunk holding the marked text, under a sub-folder
    longer = _hit("manuals/hydraulic-press-HP200.md", "Faults.  " + E42["text"] + " Then check RV-3.")
    other = _hit("pump.md", PUMP["text"])
    assert ae.retrieval_hit(e42, [other, longer], True, k=2) == 1.0
    assert ae.retrieval_hit(e42, [other, longer], True, k=1) == 0.0
    assert ae.retrieval_hit(wifi, [other], covered=False, k=5) == 1.0
    assert ae.retrieval_hit(wifi, [other], covered=True, k=5) == 0.0
    assert ae.citation_overlap(e42, [longer]) == 1.0
    assert ae.citation_overlap(e42, [longer, other]) == 0.5  # |{E42}| / |{E42, pump}|
    assert ae.citation_overlap(e42, []) == 0.0
    assert ae.citation_overlap(wifi, []) == 1.0 and ae.citation_overlap(wifi, [other]) == 0.0


def test_eval_data_refuses_marks_outside_the_context(tmp_path: Path) -> None:
    with pytest.raises(ae.EvalDataError, match=r"r.jsonl:1: \"answer_passages\" must be numbers from 1 to 2"):
        ae.load_reviewed(write(tmp_path / "r.jsonl", [line("E42?", "Oil.", reviewed=True, marked=[3])]))


def _shown(feedback, qa: dict, answer: str):
    passages = [{"chunk_id": 100 + i, "source": c["source"], "title": c["source"], "heading": c.get("heading", ""),
                 "page": c.get("page"), "text": c["text"], "cited": True} for i, c in enumerate(qa["context"])]
    return feedback.ShownAnswer(question=qa["question"], answer=answer, passages=passages, covered=bool(passages),
                                cached=False, bundle_name="plant7", bundle_version=3, backend="gguf")


def kiosk_ratings(state_db: Path) -> None:
    """What technicians and an admin did on a kiosk: the device engineer's feedback module writes the rows."""
    from phibox.device.documents import Documents
    from phibox.device.rag import feedback

    qa = [json.loads(x) for x in (DEMO / "qa.jsonl").read_text().splitlines()]
    e42, e17, torque, football = qa[0], qa[2], qa[5], qa[-1]
    with Documents(state_db).feedback() as conn:
        fixed = feedback.record(conn, "a1", _shown(feedback, e42, "Check the belt."), "not_helpful",
                                correction="It is the hydraulic oil")
        feedback.review(conn, fixed, e42["answer"], passages=[1])
        feedback.record(conn, "a2", _shown(feedback, torque, torque["answer"]), "helpful")
        feedback.record(conn, "a3", _shown(feedback, e17, "No idea."), "not_helpful")  # never reviewed: skipped
        refused = feedback.record(conn, "a4", _shown(feedback, {"question": "What is the canteen menu today?",
                                                                "context": e17["context"]}, "E17 is ..."),
                                  "not_helpful")
        feedback.review(conn, refused, "", not_covered=True)
    assert football["context"] == []


def test_the_loop_end_to_end(tiny_phi3: Path, tiny_bundle_dir: Path, admin_keys, tmp_path: Path, capsys) -> None:
    from phibox.device.lifecycle.state import StateDir
    from phibox.train.data import load_examples

    state = StateDir(tmp_path / "state").init()
    kiosk_ratings(state.db)
    capsys.readouterr()

    # each kiosk: export (here one kiosk twice: all, and reviewed only)
    k1, k2 = tmp_path / "kiosk1.jsonl", tmp_path / "kiosk2.jsonl"
    assert main(["feedback", "export", "--state", str(state.root), "--out", str(k1)]) == 0
    out = capsys.readouterr().out
    assert "wrote 3 line(s)" in out and "2 reviewed" in out and "skipped 1 unreviewed 'not helpful'" in out
    assert main(["feedback", "export", "--state", str(state.root), "--out", str(k2), "--reviewed-only"]) == 0
    assert "left out 1 unreviewed 'helpful'" in capsys.readouterr().out
    data = load_examples(k1)  # train's reader takes the export unchanged
    assert [e.feedback for e in data.examples] == ["reviewed", "unreviewed", "reviewed"]
    assert data.examples[2].answer == NOT_COVERED and data.examples[2].refusal

    merged = tmp_path / "plant7-feedback.jsonl"
    assert main(["feedback", "merge", str(k1), str(k2), "--out", str(merged)]) == 0
    assert "read 5 line(s) from 2 file(s); dropped 2 duplicate(s); wrote 3" in capsys.readouterr().out

    run = tmp_path / "run"
    assert main(["train", "--base", str(tiny_phi3), "--data", str(DEMO / "qa.jsonl"), "--data", str(merged),
                 "--out", str(run), "--config", str(TINY_CONFIG), "--method", "lora", "--max-steps", "30",
                 "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "data plant7-feedback.jsonl: 3 examples, 3 from feedback (2 reviewed), 1 'not covered'" in out
    feedback_counts = json.loads((run / "metrics.json").read_text())["data"]["feedback"]
    assert feedback_counts == {"examples": 25, "feedback": 3, "feedback_reviewed": 2, "feedback_unreviewed": 1,
                               "not_covered": 1}  # the canteen question (demo/qa.jsonl words its refusal otherwise)
    assert "from kiosk feedback: 3 of 25 examples" in (run / "report.md").read_text()

    assert main(["merge", str(run), "--out", str(tmp_path / "merged")]) == 0
    provenance = json.loads((tmp_path / "merged" / "phibox-train.json").read_text())
    assert provenance["examples"]["feedback"]["feedback"] == 3
    bundle_file = tmp_path / "plant7-v4.phibox"
    assert main(["export", str(tmp_path / "merged"), "--key", str(admin_keys[0]), "--out", str(bundle_file),
                 "--version", "4", "--formats", "gguf", "--min-top1", "0", "--docs", str(DEMO / "manuals")]) == 0
    v4 = tmp_path / "v4"
    with tarfile.open(bundle_file) as tar:
        tar.extractall(v4, filter="data")
    capsys.readouterr()

    # v3 ships no index: --docs is indexed with its embedder; v4 answers from its own index
    assert main(["eval", "answers", "--bundle", str(tiny_bundle_dir), "--bundle", str(v4), "--data", str(merged),
                 "--docs", str(DEMO / "manuals"), "--json", "--state", str(state.root), "--max-tokens", "48"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["bundles"] == ["plant7 v3", "plant7 v4"]
    assert len(report["rows"]) == 2 and report["unreviewed_left_out"] == 1
    for label in report["bundles"]:
        summary = report["summary"][label]
        assert summary["questions"] == 2
        for key in ("retrieval_hit", "citation_overlap", "token_f1"):
            assert 0.0 <= summary[key] <= 1.0, (label, key, summary)
    e42 = report["rows"][0]["results"]["plant7 v4"]
    assert e42["retrieval_hit"] == 1.0, "the E42 passage is found in the v4 bundle's own index"
    saved = json.loads((state.root / "feedback" / "eval-answers.json").read_text())
    assert saved["summary"] == report["summary"] and saved["created_at"]
