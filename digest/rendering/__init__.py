"""Rendering: an issue's contents to HTML and text, once per issue.

`contents` holds the value types rendering takes (`IssueContents`) and gives (`RenderedEmail`);
`render` runs the Jinja2 templates, `inline` premailer (once), `lint` checks the result and
`personalize` owns the per-recipient tokens. Pure: no database, no network, no App.
"""
