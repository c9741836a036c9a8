"""Domain errors of phibox. Only the edges (CLI, HTTP) turn them into exit or status codes."""


class PhiboxError(Exception):
    """Base class: every message says what went wrong and what to do next."""


class ConfigError(PhiboxError):
    """A setting or config file holds a value phibox cannot use."""


class BundleError(PhiboxError):
    """A bundle is unsigned, signed by an untrusted key, tampered with or malformed."""


class KeyFileError(PhiboxError):
    """A key file is missing, unreadable or not an Ed25519 key."""


class DatabaseError(PhiboxError):
    """The documents database cannot be opened with the features phibox needs."""


class MissingExtraError(PhiboxError):
    """A command needs an optional part of phibox that is not installed on this machine."""
