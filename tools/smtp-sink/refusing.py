"""An aiosmtpd handler for the notice tests: stores what it accepts in a
Maildir, like aiosmtpd.handlers.Mailbox, and refuses for good (550) every
recipient at one domain, as a relay does an address that does not exist.

    python -m aiosmtpd -n -l 127.0.0.1:PORT -c refusing.Refusing MAILDIR DOMAIN

(with this directory on PYTHONPATH).
"""

from aiosmtpd.handlers import Mailbox


class Refusing(Mailbox):
    def __init__(self, mail_dir, domain):
        super().__init__(mail_dir)
        self.domain = domain.lower()

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        if address.lower().endswith("@" + self.domain):
            return "550 5.1.1 mailbox unavailable"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    @classmethod
    def from_cli(cls, parser, *args):
        if len(args) != 2:
            parser.error("Refusing takes the Maildir and the domain to refuse")
        return cls(args[0], args[1])
