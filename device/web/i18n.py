"""The kiosk and admin pages in six languages: gettext catalogs read with Babel at app start.

Catalogs are the ``.po`` files in translations/<locale>/LC_MESSAGES/ (compiled in memory, no ``.mo``
files). Messages use Python named placeholders: ``gettext("passages in %(ms)s ms", ms=12)``;
``ngettext`` also fills ``%(num)d`` with the count, as Jinja's newstyle gettext does.

The language of a request, first that applies: the switch on the page (``?lang=pl``, kept in a
cookie for the screen session), the server's ``default_language`` (a kiosk browser usually says
en-US whatever plant it stands in), the browser's Accept-Language, English.
"""

from __future__ import annotations

from io import BytesIO
from pathlib import Path

from babel.messages.mofile import write_mo
from babel.messages.pofile import read_po
from babel.support import NullTranslations, Translations
from flask import Flask, Response, current_app, g, request

LANGUAGES = {"en": "English", "bg": "Български", "ro": "Română", "pl": "Polski", "zh-Hans": "简体中文",
             "nb": "Norsk bokmål"}
"""Language code (as in <html lang>) -> the language's name in itself, in the switch's order."""
CATALOGS = Path(__file__).with_name("translations")
COOKIE = "phibox_lang"
_SIMPLIFIED_REGIONS = {"", "cn", "sg", "hans"}


def locale_id(code: str) -> str:
    """Babel's name (the catalog folder) for a language code: zh-Hans -> zh_Hans."""
    return code.replace("-", "_")


def load_catalogs(folder: Path = CATALOGS) -> dict[str, NullTranslations]:
    """Every language's translations, English being the messages themselves."""
    found: dict[str, NullTranslations] = {"en": NullTranslations()}
    for code in LANGUAGES:
        if code == "en":
            continue
        po = folder / locale_id(code) / "LC_MESSAGES" / "messages.po"
        try:
            with po.open("rb") as fh:
                catalog = read_po(fh, locale=locale_id(code))
        except OSError as exc:
            raise FileNotFoundError(f"{po}: the {LANGUAGES[code]} catalog is missing; reinstall phibox "
                                    "(the .po files are package data)") from exc
        compiled = BytesIO()
        write_mo(compiled, catalog, use_fuzzy=False)
        compiled.seek(0)
        found[code] = Translations(compiled)
    return found


def match(tag: str) -> str | None:
    """One Accept-Language tag as one of LANGUAGES: zh, zh-CN, zh-Hans -> zh-Hans; no, nb, nn -> nb."""
    parts = tag.strip().lower().replace("_", "-").split("-")
    primary, rest = parts[0], parts[1:]
    if primary in ("no", "nb", "nn"):
        return "nb"
    if primary == "zh":
        return "zh-Hans" if (rest[0] if rest else "") in _SIMPLIFIED_REGIONS else None
    return primary if primary in LANGUAGES else None


def from_accept_language() -> str | None:
    """The browser's best-liked language among ours (Accept-Language sorted by quality)."""
    for tag, _quality in request.accept_languages:
        code = match(tag)
        if code:
            return code
    return None


def choose(default_language: str) -> str:
    """The request's language: switch (?lang= or its cookie) > default_language > Accept-Language > en."""
    for picked in (request.args.get("lang"), request.cookies.get(COOKIE)):
        if picked in LANGUAGES:
            return picked
    return default_language or from_accept_language() or "en"


def language() -> str:
    return g.get("lang", "en")


def translations() -> NullTranslations:
    return current_app.config["PHIBOX_TRANSLATIONS"][language()]


def gettext(message: str, **values: object) -> str:
    """message in the request's language, its %(name)s placeholders filled from values."""
    text = translations().gettext(message)
    return text % values if values else text


def ngettext(singular: str, plural: str, num: int, **values: object) -> str:
    """The form of singular/plural the request's language uses for num; %(num)d is num."""
    return translations().ngettext(singular, plural, num) % {"num": num, **values}


def init_app(app: Flask, default_language: str) -> None:
    """Catalogs, the per-request language (and its cookie), and _/ngettext in the templates."""
    app.config["PHIBOX_TRANSLATIONS"] = load_catalogs()
    app.jinja_env.add_extension("jinja2.ext.i18n")
    app.jinja_env.install_gettext_callables(  # type: ignore[attr-defined]
        gettext=lambda s: translations().gettext(s),
        ngettext=lambda s, p, n: translations().ngettext(s, p, n), newstyle=True)

    @app.before_request
    def pick_language() -> None:
        g.lang = choose(default_language)

    @app.after_request
    def remember_language(response: Response) -> Response:
        if request.args.get("lang") in LANGUAGES:  # the switch: a session cookie (no expiry), for the page only
            response.set_cookie(COOKIE, request.args["lang"], httponly=True, samesite="Strict")
        response.vary.update(("Accept-Language", "Cookie"))
        return response

    @app.context_processor
    def page_language() -> dict[str, object]:
        return {"lang": language(), "languages": LANGUAGES}
