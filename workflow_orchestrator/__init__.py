"""OpenAperture's WorkflowOrchestrator on Celery.

`celery -A workflow_orchestrator worker` asks this package for `app`: it is built then,
on first access, from the settings in the environment and the working directory's
`.env`. Importing the package builds nothing; programs that embed the orchestrator call
`workflow_orchestrator.factory.create_app(settings)` with settings of their own.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    if name != "app":
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    from .factory import create_app
    from .settings import load_settings_or_exit

    app = create_app(load_settings_or_exit())
    globals()["app"] = app  # built once per process, on the CLI's first access
    return app
