"""User-facing errors: each becomes one clear line on stderr and a non-zero exit from the CLI.

Raise these (never a bare exception) for anything a user can fix: a missing file, a bad value,
a corpus with no tokens. The CLI prints `elmo-dist: error: <message>` and exits with status 2;
`--debug` shows the traceback as well.
"""


class UserError(Exception):
    """Something the user handed us is wrong; the message names the file, line or key."""


class ConfigError(UserError):
    """A config file or override is invalid."""


class DataError(UserError):
    """A corpus, vocabulary or prepared-data directory is invalid."""


class CheckpointError(UserError):
    """A checkpoint can't be loaded or doesn't fit the run."""


class TrainingDiverged(UserError):
    """Training hit too many non-finite steps in a row; the message names the step and the last good checkpoint."""


class LaunchError(UserError):
    """The processes of a run could not form their group (one died, never started or can't be reached)."""


class OutputError(UserError):
    """An output path can't be used: it is one of the command's inputs, read-only, missing its folder, a directory."""


class DiskFull(UserError):
    """The file system has no room for what a command must write; the message names the path and the size."""
