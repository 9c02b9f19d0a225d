"""The error types MammoLabel raises; the server maps them to HTTP 4xx answers, the CLI to one line."""


class MammoLabelError(Exception):
    """Base class of every error MammoLabel raises on purpose."""

    status_code = 400


class InputError(MammoLabelError):
    """An image, label or request that cannot be used (corrupt, unsupported, wrong size...)."""

    status_code = 400


class NotFoundError(MammoLabelError):
    """An image, label, model or file that does not exist."""

    status_code = 404


class ModelNotTrainedError(MammoLabelError):
    """An infer task asked for before its checkpoint exists."""

    status_code = 409

    def __init__(self, task: str, train_task: str, path: str):
        super().__init__(
            f"model '{task}' has no trained checkpoint at {path}; run the train task '{train_task}' first "
            f"(POST /train/{train_task} or `mammolabel train {train_task}`)"
        )


class ConflictError(MammoLabelError):
    """A request that would replace something that exists without saying so (e.g. ``overwrite=true``)."""

    status_code = 409
