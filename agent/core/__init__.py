"""The IO-free core of the agent: transfer lifecycle, recovery timer, send window, result codes."""

from . import results
from .lifecycle import (
    LIVE_STATES,
    RECOVERY_STATE_VALUES,
    RECOVERY_STATES,
    RESULT_CODES,
    TERMINAL_STATE_VALUES,
    TERMINAL_STATES,
    TRANSITIONS,
    LifecycleError,
    TransferEvent,
    TransferLifecycle,
    TransferState,
    Transition,
    is_terminal,
    next_state,
)
from .recovery import (
    FAIL_IMMEDIATELY,
    RECOVER_FOREVER,
    RecoveryTimer,
    check_recovery_timeout,
    effective_recovery_timeout,
)
from .results import transfer_result
from .window import SendWindow

__all__ = [
    "FAIL_IMMEDIATELY",
    "LIVE_STATES",
    "RECOVERY_STATE_VALUES",
    "RECOVERY_STATES",
    "RECOVER_FOREVER",
    "RESULT_CODES",
    "TERMINAL_STATE_VALUES",
    "TERMINAL_STATES",
    "TRANSITIONS",
    "LifecycleError",
    "RecoveryTimer",
    "SendWindow",
    "TransferEvent",
    "TransferLifecycle",
    "TransferState",
    "Transition",
    "check_recovery_timeout",
    "effective_recovery_timeout",
    "is_terminal",
    "next_state",
    "results",
    "transfer_result",
]
