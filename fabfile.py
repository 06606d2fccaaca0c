"""The `fab` entry point: exposes the root Collection, nothing else."""

from tasks import ns  # noqa: F401
