"""Untrusted text made safe for Slack: cleaned, scrubbed of secrets, escaped, cut to the limits.

Rules: everything that came from the logs passes through `safe_text` before it reaches a message.
Control characters and ANSI sequences are stripped, secrets scrubbed, `& < >` escaped so that
`<!channel>` or `<https://evil|click>` is displayed and never acted on, backticks neutralised in
code, and the length cut to Slack's limits (FACTS.md). Pure functions, no I/O.
"""

from __future__ import annotations

import re

from monitor.redact import scrub

MAX_TEXT = 3000  # chat.postMessage `text`
MAX_SECTION = 3000  # a section's text
MAX_FIELD = 2000  # a section field
MAX_HEADER = 150  # a header block's plain text
MAX_BLOCKS = 50
MAX_SAMPLE = 500  # the one sample line shown

# --- making untrusted text safe ---------------------------------------------------------------

_ANSI = re.compile(r"\x1b(?:\[[0-?]*[ -/]*[@-~]|\][^\x07\x1b]*(?:\x07|\x1b\\)?|[@-Z\\-_])")
# C0 except \t and \n, DEL, C1, lone surrogates, and bidi overrides (text that reads differently
# from how it is stored).
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\ud800-\udfff\u202a-\u202e\u2066-\u2069]")
# Scrubbing regexes may be slow on huge lines; cut well past any limit first. The cut lies far
# beyond where the final truncation ends, so a secret split by it is never shown.
_PRECUT = 2 * MAX_SECTION
_GRAVE = "\u02cb"  # modifier letter grave accent: looks like a backtick, is not markup


def clean(text: str) -> str:
    """Strip ANSI sequences, control characters and invalid code points; tabs become spaces."""
    return _CONTROL.sub("", _ANSI.sub("", text)).replace("\t", "    ")


def escape(text: str) -> str:
    """Slack's three control characters; after this, log text cannot form markup."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def truncate(text: str, limit: int) -> str:
    """Cut to `limit` characters with an ellipsis, never through an `&amp;`-style entity."""
    if len(text) <= limit:
        return text
    cut = text[: max(limit - 1, 0)]
    amp = cut.rfind("&", max(len(cut) - 5, 0))
    if amp != -1 and ";" not in cut[amp:]:
        cut = cut[:amp]
    return cut + "…"


def safe_text(text: str, limit: int = MAX_SECTION, *, code: bool = False,
              one_line: bool = False) -> str:
    """Untrusted text, ready for mrkdwn: cleaned, scrubbed, escaped, truncated.

    `code` neutralises backticks so the text cannot close the code span around it; `one_line`
    folds newlines for summaries and fields.
    """
    text = scrub(_bounded(text))
    if one_line:
        text = " ".join(text.split())
    text = escape(text)
    if code:
        text = text.replace("`", _GRAVE)
    return truncate(text, limit)


def _bounded(text: str) -> str:
    """`clean(text)`, at most _PRECUT characters, without the word a cut went through: that word
    may be a secret whose end (the `@` of a URL, say) the cut removed, so scrub could not see it.
    `clean` may drop most of a line (NULs, ANSI codes), so the cut is made after it."""
    cleaned = clean(text[: 4 * _PRECUT])
    if len(text) <= 4 * _PRECUT and len(cleaned) <= _PRECUT:
        return cleaned
    return _LAST_WORD.sub("", cleaned[:_PRECUT])


_LAST_WORD = re.compile(r"\S*\Z")


def code(text: str, limit: int = 200) -> str:
    """Inline code for a short untrusted value (a revision or migration name)."""
    return f"`{safe_text(text, limit, code=True, one_line=True)}`"
