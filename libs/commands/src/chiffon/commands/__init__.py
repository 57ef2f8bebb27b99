"""Commands: requests to the service that owns an aggregate, over NATS request-reply.

The gateway (or the CLI) sends a command; the owner loads the aggregate, decides,
appends, and answers with a result or a typed refusal.
"""

from chiffon.commands.bus import CommandBus, CommandRefused, CommandUnavailable
from chiffon.commands.model import (
    ApproveNode,
    CancelRun,
    Command,
    CommandReply,
    Refusal,
    RefusalCode,
    RegisterWorkflow,
    StartRun,
    command_subject,
)

__all__ = [
    "ApproveNode",
    "CancelRun",
    "Command",
    "CommandBus",
    "CommandRefused",
    "CommandReply",
    "CommandUnavailable",
    "Refusal",
    "RefusalCode",
    "RegisterWorkflow",
    "StartRun",
    "command_subject",
]
