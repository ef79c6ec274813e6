"""The runner's user errors, at the bottom of its imports (studies, SLURM options, the runner
and the command line all raise or catch them; nothing here imports the kit)."""
from __future__ import annotations


class StudyError(ValueError):
    """A study file, a row filter or a shard spec is unusable (nothing was run)."""


class StudyOptionsError(StudyError):
    """Training options of a study (or ``--option``) that the training config refuses; one
    line per problem in :attr:`errors`, each naming the study file and the row."""

    def __init__(self, errors: list[str]):
        super().__init__("\n".join(errors))
        self.errors = list(errors)
