"""CSS inlining with premailer, once per issue (never per recipient: it costs tens of ms).

Settings that matter (see REFERENCE.md §5):
- `strip_important=False`: otherwise `!important` disappears from kept `@media` rules and the
  mobile and dark-mode overrides lose to the inlined styles.
- `allow_network=False`: never fetch a `<link rel=stylesheet>` (lint reports one instead).
- Templates put rules that must stay in `<head>` (`@media`, dark mode) in a
  `<style data-premailer="ignore">` block, which premailer leaves exactly as written; the other
  `<style>` blocks are inlined and removed.
- cssutils logs a warning for every `mso-*` or `-webkit-*` property: silenced.
"""

from __future__ import annotations

import logging

import cssutils
from premailer import Premailer

_QUIET = logging.CRITICAL
cssutils.log.setLevel(_QUIET)


def inline_css(html: str) -> str:
    """HTML whose `<style>` rules are moved into `style` attributes; tokens left untouched."""
    premailer = Premailer(
        html,
        strip_important=False,
        allow_network=False,
        allow_loading_external_files=False,
        disable_validation=True,
        keep_style_tags=False,
        cssutils_logging_level=_QUIET,
        remove_classes=False,
        # Keep the width/height attributes the templates write (Outlook sizes images by them);
        # premailer would otherwise copy CSS values such as "100%" or "auto" over them.
        disable_basic_attributes=["width", "height"],
    )
    return str(premailer.transform(pretty_print=False))
