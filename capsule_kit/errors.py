"""User-facing errors: the runner prints their message on one line and exits 2."""


class UserError(Exception):
    """A mistake in what the user gave us (recipe, data, checkpoint); never a bug."""


class ConfigError(UserError):
    """Invalid recipe: YAML syntax, unknown key, wrong type, unknown name."""


class DataError(UserError):
    """Data missing, unreadable or inconsistent."""


class CheckpointError(UserError):
    """Checkpoint missing, truncated, foreign or unsafe."""
