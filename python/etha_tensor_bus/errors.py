"""Exceptions: TensorBusError (status, message), and classes that also derive from the built-in
exception the reference raises for the same failure.

| status | raised as |
| --- | --- |
| ETB_ERR_ENV | KeyError and ValueError (the reference raises KeyError for a missing RANK, its docs say ValueError) |
| ETB_ERR_INVALID_ARGUMENT, ETB_ERR_NAMING | ValueError |
| ETB_ERR_AGENT_NOT_FOUND, ETB_ERR_AGENT_NOT_RESPONDING, ETB_ERR_AGENT_DIED, ETB_ERR_AGENT_BUSY | ConnectionError |
| ETB_ERR_TIMEOUT, ETB_ERR_QUEUE_FULL | TimeoutError |
| ETB_ERR_PERMISSION | PermissionError |
| every other status | TensorBusError alone |
"""

from . import _abi

# The header's statuses, ETB_OK and ETB_ERR_*: {"OK": 0, "NULL_ARGUMENT": 1, ...}.
STATUS = {"OK": _abi.ETB_OK, **{k[len("ETB_ERR_"):]: v for k, v in _abi.DEFINES.items() if k.startswith("ETB_ERR_")}}


class TensorBusError(Exception):
    """A failed call of the library: `status` (the EtbStatus integer) and `message`."""

    def __init__(self, status, message):
        super().__init__(message)
        self.status = status
        self.message = message

    @property
    def status_name(self):
        return next((f"ETB_ERR_{k}" for k, v in STATUS.items() if v == self.status), f"status {self.status}")


class TensorBusValueError(TensorBusError, ValueError):
    pass


class TensorBusEnvError(TensorBusError, KeyError, ValueError):
    """A missing or malformed AGENT_RANK, RANK, AGENT_RANK_OFFSET or LOCAL_RANK."""

    def __str__(self):  # KeyError would quote the message
        return self.message


class TensorBusConnectionError(TensorBusError, ConnectionError):
    pass


class TensorBusTimeoutError(TensorBusError, TimeoutError):
    pass


class TensorBusPermissionError(TensorBusError, PermissionError):
    pass


try:  # the reference's transfer(blocking=False) returns a posix_ipc.Semaphore: acquire raises BusyError
    from posix_ipc import BusyError as _BusyError
except ImportError:  # posix_ipc is not a dependency: only the built-in then
    _BusyError = TimeoutError


class AcquireTimeout(TensorBusTimeoutError, _BusyError):
    """A completion's acquire() ran out of time: a TimeoutError, and a posix_ipc.BusyError where
    posix_ipc is importable (what the reference's semaphore raises)."""


_CLASSES = {
    STATUS["ENV"]: TensorBusEnvError,
    STATUS["INVALID_ARGUMENT"]: TensorBusValueError,
    STATUS["NAMING"]: TensorBusValueError,
    STATUS["AGENT_NOT_FOUND"]: TensorBusConnectionError,
    STATUS["AGENT_NOT_RESPONDING"]: TensorBusConnectionError,
    STATUS["AGENT_DIED"]: TensorBusConnectionError,
    STATUS["AGENT_BUSY"]: TensorBusConnectionError,
    STATUS["TIMEOUT"]: TensorBusTimeoutError,
    STATUS["QUEUE_FULL"]: TensorBusTimeoutError,
    STATUS["PERMISSION"]: TensorBusPermissionError,
}


def error_for(status, message):
    """The exception for a failed status. Where the C library's message names its own function
    for what to do next, the Python method is named instead."""
    message = message.replace("(etb_client_reconnect)", "(client.reconnect())")
    return _CLASSES.get(status, TensorBusError)(status, message)
