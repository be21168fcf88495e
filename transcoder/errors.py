"""Why a transcode ended, as exception classes that carry their process exit code.

The operator's pod failure policy acts on the exit code alone (docs/architecture.md), so every
failure must land in exactly one of these buckets: retrying an unusable input wastes a node for
nothing, and failing a transcode for good on a CDN hiccup loses a lecture. Anything that is not
one of these classes is a bug in this program and exits 70."""

from __future__ import annotations

EXIT_OK = 0
EXIT_UNUSABLE_INPUT = 65  # EX_DATAERR: never worth retrying
EXIT_BUG = 70  # EX_SOFTWARE
EXIT_OUT_OF_MEMORY = 71  # EX_OSERR: ffmpeg was killed by the kernel for memory; the Job does not retry
EXIT_TRANSIENT = 75  # EX_TEMPFAIL: the Job retries
EXIT_SIGTERM = 143  # 128 + SIGTERM
EXIT_INTERRUPTED = 130  # 128 + SIGINT (a person pressed Ctrl-C)


class TranscodeError(Exception):
    """Base class: `str(exc)` is the one-line reason shown to people and written to the
    termination log, so it names what was wrong and never contains secrets."""

    exit_code = EXIT_BUG

    def __init__(self, reason: str) -> None:
        # One line, always: the reason ends up in a Kubernetes termination message, a BullMQ
        # failure reason and a notification.
        super().__init__(" ".join(str(reason).split()))

    @property
    def reason(self) -> str:
        return str(self)


class UnusableInput(TranscodeError):
    """The input can never be transcoded (not a video, truncated, not allowed, too large)."""

    exit_code = EXIT_UNUSABLE_INPUT


class Transient(TranscodeError):
    """A failure that may well not happen again (network, CDN 5xx, timeouts)."""

    exit_code = EXIT_TRANSIENT


class ConfigurationError(TranscodeError):
    """The deployment is wrong (a missing secret, a bad setting): retrying will not help and
    the input is not to blame, so it exits like a bug, for a person to look at."""

    exit_code = EXIT_BUG


class OutOfMemory(TranscodeError):
    """ffmpeg was killed by the kernel's OOM killer: this input needs more memory than the pod's
    limit. A retry with the same limit ends the same way, so the Job's pod failure policy fails
    it at once (operator/jobs.py); a person may raise the limit and start it again."""

    exit_code = EXIT_OUT_OF_MEMORY


class Terminated(TranscodeError):
    """SIGTERM (Kubernetes stopping the pod) or SIGINT: stop, clean up, exit 128+signal."""

    def __init__(self, reason: str = "terminated by SIGTERM", exit_code: int = EXIT_SIGTERM) -> None:
        super().__init__(reason)
        self.exit_code = exit_code


class UsageError(TranscodeError):
    """The command line is wrong (EX_USAGE); for the Job that is an operator bug."""

    exit_code = 64
