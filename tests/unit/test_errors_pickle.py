"""Every error the package raises survives pickle: a prefork child hands its task's
exception to the parent that way, and Celery does not wrap a rejected task's one (an
unpicklable `Reject` killed the parent)."""

from __future__ import annotations

import importlib
import inspect
import pickle
import pkgutil
from typing import Any

import pytest

import workflow_orchestrator
from workflow_orchestrator.errors import OrchestratorError
from workflow_orchestrator.worker_api import ReportNotSent


def _errors() -> list[type[BaseException]]:
    found: list[type[BaseException]] = [ReportNotSent]
    for module in pkgutil.walk_packages(workflow_orchestrator.__path__, "workflow_orchestrator."):
        loaded = importlib.import_module(module.name)
        for _, cls in inspect.getmembers(loaded, inspect.isclass):
            if issubclass(cls, OrchestratorError) and cls.__module__ == loaded.__name__:
                found.append(cls)
    return found


def _example(cls: type[BaseException]) -> BaseException:
    """An instance built with a made-up value for each required argument."""
    params = [
        p
        for p in list(inspect.signature(cls.__init__).parameters.values())[1:]
        if p.default is p.empty and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
    ]
    values: list[Any] = []
    for param in params:
        annotation = str(param.annotation)
        values.append(404 if "int" in annotation else 2.5 if "float" in annotation else "x-1")
    return cls(*values)


@pytest.mark.parametrize("cls", _errors(), ids=lambda c: f"{c.__module__}.{c.__name__}")
def test_an_error_survives_pickle(cls: type[BaseException]) -> None:
    error = _example(cls)
    again = pickle.loads(pickle.dumps(error))
    assert type(again) is cls
    assert str(again) == str(error)
    assert again.args == error.args
    assert vars(again) == vars(error)


def test_the_error_classes_are_found() -> None:
    names = {c.__name__ for c in _errors()}
    assert {"ManagerNotFound", "SettingsError", "LockTimeout", "ReportNotSent"} <= names
