"""Test manuals: a tiny plant's documents in every supported format, written by the tests.

``make_pdf`` writes a real (minimal) PDF with one text page per entry, so page numbers can be
checked after extraction; no PDF library is needed to make one.
"""

from __future__ import annotations

from pathlib import Path


def _pdf_text(line: str) -> str:
    return line.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)")


def make_pdf(path: Path, pages: list[list[str]], title: str = "") -> Path:
    """A PDF whose page i shows the lines pages[i] in Helvetica."""
    objects: list[bytes] = []
    n_pages = len(pages)
    font_id, pages_id = 3, 2
    page_ids = [4 + 2 * i for i in range(n_pages)]
    objects.append(b"<< /Type /Catalog /Pages 2 0 R >>")
    kids = " ".join(f"{pid} 0 R" for pid in page_ids)
    objects.append(f"<< /Type /Pages /Kids [{kids}] /Count {n_pages} >>".encode())
    objects.append(b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica /Encoding /WinAnsiEncoding >>")
    for i, lines in enumerate(pages):
        body = "BT /F1 11 Tf 14 TL 72 760 Td " + " ".join(f"({_pdf_text(line)}) Tj T*" for line in lines) + " ET"
        stream = body.encode("cp1252")
        objects.append(f"<< /Type /Page /Parent {pages_id} 0 R /MediaBox [0 0 612 792] /Resources << /Font << /F1 "
                       f"{font_id} 0 R >> >> /Contents {page_ids[i] + 1} 0 R >>".encode())
        objects.append(b"<< /Length %d >>\nstream\n" % len(stream) + stream + b"\nendstream")
    info_id = len(objects) + 1
    objects.append(f"<< /Title ({_pdf_text(title)}) >>".encode())
    out = bytearray(b"%PDF-1.4\n")
    offsets = []
    for number, obj in enumerate(objects, start=1):
        offsets.append(len(out))
        out += f"{number} 0 obj\n".encode() + obj + b"\nendobj\n"
    xref = len(out)
    out += f"xref\n0 {len(objects) + 1}\n0000000000 65535 f \n".encode()
    out += b"".join(f"{off:010d} 00000 n \n".encode() for off in offsets)
    trailer = f"<< /Size {len(objects) + 1} /Root 1 0 R /Info {info_id} 0 R >>"
    out += f"trailer\n{trailer}\nstartxref\n{xref}\n%%EOF\n".encode()
    path.write_bytes(bytes(out))
    return path


PRESS_MD = """# Hydraulic press HP-200

## Faults

### E42 low hydraulic pressure
The press stops with E42 when the hydraulic pressure falls below 180 bar. Check the oil level in the tank first.
Then inspect the relief valve RV-3 for leaks. Replace the seal kit 4711-23 if the valve weeps oil.

### E17 ram overtravel
E17 means the ram passed its lower limit switch. Lock out the press, reset limit switch LS-2 and test at jog speed.

## Maintenance
Change the hydraulic oil (ISO VG 46, 120 litres) every 2000 operating hours. Replace the return filter at each oil
change.
"""

CONVEYOR_TXT = """Conveyor CV-1 maintenance

Tighten the motor mount bolts (M10) to 45 Nm. Re-check them after 50 operating hours.

Belt tracking: if the belt drifts to one side, adjust the tail pulley take-up screws a quarter turn at a time while
the belt runs empty.
"""

LABELLER_HTML = """<html><head><title>Labeller LB-5 manual</title><style>p { color: red }</style></head><body>
<h1>Labeller LB-5</h1>
<h2>Glue system</h2><p>Heat the glue tank to 160 °C before starting. Clean the glue nozzle daily with the brass
brush.</p>
<h2>Safety</h2><p>Wear heat-resistant gloves when touching the glue roller.</p>
<script>document.title = "pwned"</script></body></html>
"""

COMPRESSOR_PAGES = [
    ["Compressor C-4 operating manual", "Read the safety chapter before first use."],
    ["Daily checks", "Drain the condensate from the receiver tank every morning.",
     "Check that the oil sight glass shows between the marks."],
    ["Faults", "Fault A9 means the discharge temperature exceeded 110 C.",
     "Clean the cooler fins and check the fan belt."],
]

FILLER_LATIN1 = (
    "Filler FL-3\n\nSet the filling valve to 2.5 bar. The café-style nozzle must be cleaned after each shift.\n"
)


def write_corpus(folder: Path) -> Path:
    """The test plant's manuals, plus a broken PDF, an encrypted PDF and a binary file."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "press.md").write_text(PRESS_MD)
    (folder / "conveyor.txt").write_text(CONVEYOR_TXT)
    (folder / "labeller.html").write_text(LABELLER_HTML)
    make_pdf(folder / "compressor.pdf", COMPRESSOR_PAGES, title="Compressor C-4")
    (folder / "filler.txt").write_bytes(FILLER_LATIN1.encode("latin-1"))
    (folder / "broken.pdf").write_bytes(b"%PDF-1.4\n1 0 obj << /Type /Catalog /Pages 9 0 R >> endobj\ntrailer <<>>\n")
    (folder / "garbage.txt").write_bytes(bytes(range(256)) * 4)
    return folder


def write_encrypted_pdf(path: Path) -> Path:
    from pypdf import PdfReader, PdfWriter

    plain = make_pdf(path.with_suffix(".plain.pdf"), [["Secret procedure"]])
    writer = PdfWriter()
    for page in PdfReader(plain).pages:
        writer.add_page(page)
    writer.encrypt("hunter2")
    with open(path, "wb") as fh:
        writer.write(fh)
    plain.unlink()
    return path
