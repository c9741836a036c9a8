"""The words kiosk.js and admin.js show, translated on the server and put into the page as JSON
(``<script type="application/json" id="i18n">``): the scripts hold no user-visible English.

Placeholders stay ``%(name)s``; the scripts fill them (fmt() in each script).
"""

from __future__ import annotations

from phibox.device.engine import NO_MANUALS, NOT_COVERED
from phibox.device.web.i18n import gettext as _


def not_covered() -> str:
    return _("The manuals on this device do not cover that question. Try other words, or ask a colleague.")


def no_manuals() -> str:
    return _("No manuals are indexed on this device yet, so there is nothing to answer from. "
             "An admin adds them on the admin page.")


def model_states() -> dict[str, str]:
    return {"loading": _("loading"), "ready": _("ready"), "updating": _("updating"),
            "degraded": _("not working: see the admin page")}


def kiosk() -> dict[str, object]:
    return {
        "passages": _("Passages from the manuals"),
        "closest": _("Closest passages — probably not it"),
        "page": _("page %(page)s"),
        "open_passage": _("Open passage %(n)s"),
        "failed": _("The answer could not be produced."),
        "lost": _("Connection lost: %(error)s"),
        "cached": _("asked before: the same answer from the same passages · passages in %(ms)s ms"),
        "timings": _("first words after %(s)s s · %(rate)s tokens/s · passages in %(ms)s ms"),
        "not_covered": not_covered(),
        "engine": {NOT_COVERED: not_covered(), NO_MANUALS: no_manuals()},
        "states": model_states(),
        "passage_n": _("Passage %(n)s"),
        "missing": _("The right passage is missing"),
        "none": _("No passage chosen"),
        "thanks": _("Thank you: this helps make the answers better."),
        "thanks_more": _("Thank you. If you know better, tell us below."),
    }


def admin() -> dict[str, object]:
    return {
        "lost": _("the connection was lost; choose the same file and upload it again to continue"),
        "uploading": _("Uploading %(done)s of %(total)s MB…"),
        "verifying": _("Uploaded; verifying and checking…"),
        "saving": _("Uploaded; saving…"),
        "refused": _("Refused: %(error)s"),
        "indexing": _("Indexing %(done)s / %(total)s: %(file)s"),
        "choose_bundle": _("Choose a .phibox file first."),
        "choose_document": _("Choose a document first."),
        "installed": _("Installed %(name)s v%(version)s: health check ok, now active."),
        "saved": _("Saved %(name)s; indexing…"),
    }


def admin_feedback() -> dict[str, object]:
    return {
        "saved": _("Saved as a reviewed answer."),
        "refused": _("Refused: %(error)s"),
    }
