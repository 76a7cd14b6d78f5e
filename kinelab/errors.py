"""The small exception tree. The CLI prints these as one line; notebooks let them propagate."""


class KinelabError(Exception):
    """Base for every expected failure. `exit_code` follows the CLI contract (2 = bad input or environment)."""

    exit_code = 2


class UsageError(KinelabError):
    """The caller asked for something that cannot work (bad flag, bad path, unsupported mode)."""


class ToolError(KinelabError):
    """A tool kinelab needs (kine, go, postgres, mariadbd) is missing, too old or failed to build."""


class DatastoreError(KinelabError):
    """The database could not be reached, started or read."""


class ProcessError(KinelabError):
    """A served process did not start, did not become ready, or died."""


class CaptureError(KinelabError):
    """A capture file is corrupt or belongs to a different source."""


class EtcdError(KinelabError):
    """An etcd call to a Kine replica failed; `code` is the gRPC status name."""

    def __init__(self, message: str, code: str = "UNKNOWN"):
        super().__init__(message)
        self.code = code


class Finding(KinelabError):
    """Not a failure of kinelab: the measurement found something (a divergence, a lost write)."""

    exit_code = 1


class MemoryLimitError(KinelabError):
    """DuckDB needed more memory (or spill space) than kinelab lets it use; the message names the setting."""
