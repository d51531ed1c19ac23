"""Mail: what one recipient's message is made of.

`links` builds every public URL (unsubscribe, preferences, confirmation, studio) and signs it;
`message` the token values, list headers and the MIME document; `preview` the editor's sample
message. May import `rendering`, `issues` and below.
"""
