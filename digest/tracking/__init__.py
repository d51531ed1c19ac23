"""Track: what became of messages sent by SMTP, read back from the bounce mailbox.

- `verp`: the signed VERP envelope sender of each message (`bounce+d<delivery>.<mac>@domain`)
  and its check, one place each way;
- `bounces`: a bounce or complaint message → whom it is about (from its signed VERP address
  only) and what it says (DSN RFC 3464, `flufl.bounce` for non-standard bounces, ARF RFC 5965);
  hard bounces and complaints suppress through `subscribers.suppression`, soft bounces count;
- `mailbox`: reading a maildir, mbox or IMAP folder and moving or flagging what was read.

Sits between `transports` (which import `verp` to write the envelope) and `mail`: it may
import `mail`, `storage` and below, and `subscribers`; `sending`, `scheduling` and the shells
import it. `verp` imports nothing of digest but the settings, so transports stay off the
database.
"""
