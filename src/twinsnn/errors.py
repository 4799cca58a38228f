"""The one error type the command line turns into a single line and exit code 2."""


class TwinsnnError(Exception):
    """A problem the user can fix: bad input, a missing file, a wrong config value.

    The message says what is wrong and how to fix it; the CLI prints it without a traceback.
    """


class DataError(TwinsnnError):
    """A data file is missing, truncated, corrupt or fails its checksum."""


class ConfigError(TwinsnnError):
    """An unknown preset or key, or a value outside its valid range."""


class CheckpointError(TwinsnnError):
    """A checkpoint or exported model cannot be read or does not fit the model."""


class WriteError(TwinsnnError):
    """A file cannot be written (a full disk, no permission); any previous version is kept."""


class TrainingError(TwinsnnError):
    """Training cannot go on (a non-finite loss); the last good checkpoint is kept."""


class Interrupted(KeyboardInterrupt):
    """Training stopped on SIGINT or SIGTERM after writing a checkpoint to resume from."""


def lookup(registry: dict, name, key: str):
    """``registry[name]``, or a ``ConfigError`` naming ``key`` and the valid names."""
    try:
        return registry[name]
    except (KeyError, TypeError):
        got = repr(name)[:80] if isinstance(name, str) else f"a {type(name).__name__}"
        raise ConfigError(f"{key} must be one of {', '.join(registry)}; got {got}") from None
