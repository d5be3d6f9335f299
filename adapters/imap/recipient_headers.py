"""The recipient headers of an account's INBOX on the old server: the evidence alias discovery reads.

One batched FETCH of `BODY.PEEK[HEADER.FIELDS (...)]` for the newest messages
(RFC 3501 section 6.4.5: PEEK leaves \\Seen alone). POP3 sources have no
cheap equivalent for a whole mailbox, so they give none. Blocking: run it in a
worker thread.
"""

from __future__ import annotations

from mailmigrator.adapters.imap.connection import close_imap, open_imap
from mailmigrator.adapters.mail.connection import LoginPlan, ServerAddress

RECIPIENT_FIELDS = ("TO", "CC", "DELIVERED-TO", "X-ENVELOPE-TO")
# Enough mail to see every address in use, bounded so that a huge INBOX stays cheap.
NEWEST_MESSAGES = 2000


def inbox_recipient_headers(address: ServerAddress, plan: LoginPlan, limit: int = NEWEST_MESSAGES) -> list[bytes]:
    """The recipient header blocks of the newest `limit` INBOX messages."""
    client = open_imap(address, plan)
    try:
        client.select_folder("INBOX", readonly=True)
        uids = sorted(client.search("ALL"))[-limit:]
        if not uids:
            return []
        item = f"BODY.PEEK[HEADER.FIELDS ({' '.join(RECIPIENT_FIELDS)})]"
        response = client.fetch(uids, [item])
        blocks = []
        for data in response.values():
            for key, value in data.items():
                if key.startswith(b"BODY[") and isinstance(value, bytes):
                    blocks.append(value)
        return blocks
    finally:
        close_imap(client)
