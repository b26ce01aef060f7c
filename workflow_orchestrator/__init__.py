"""OpenAperture's WorkflowOrchestrator on Celery.

`celery -A workflow_orchestrator worker` finds `app` here.
"""

from .celery_app import app

__all__ = ["app"]
__version__ = "0.1.0"
