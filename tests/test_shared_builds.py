"""A build one target of a run made is reused by another target asking for the same one
(converters/_shared.py, SharedInputs.build), refusals included: the reused refusal says which
target measured it, and its advice names the asking target's profile file."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest

from converters._errors import AccuracyError
from converters._shared import SharedInputs
from converters.inputs.plan import Planned


def _step(profile_id: str, said: list[str]) -> SimpleNamespace:
    return SimpleNamespace(profile=SimpleNamespace(id=profile_id), progress=said.append)


def test_a_reused_refusal_names_the_asking_targets_profile_file():
    """A review found x86-avx512-vnni's INT4 refusal pointing at targets/rpi4.toml, the file of
    the target that measured it first."""
    shared = SharedInputs(config_fields={}, source=None, texts=None, work=Path("unused"))
    planned = Planned("onnx", "int4")
    calls: list[str] = []

    def refuse(step, planned):
        calls.append(step.profile.id)
        raise AccuracyError(f"above the size budget (the budget is part of the profile, targets/{step.profile.id}.toml; "
                            "no option changes it)")

    said: list[str] = []
    with pytest.raises(AccuracyError, match=r"targets/rpi4\.toml"):
        shared.build(_step("rpi4", said), planned, "key", refuse)
    with pytest.raises(AccuracyError) as reused:
        shared.build(_step("x86-avx512-vnni", said), planned, "key", refuse)
    assert calls == ["rpi4"], "measured once"
    assert "targets/x86-avx512-vnni.toml" in str(reused.value) and "rpi4.toml" not in str(reused.value)
    assert str(reused.value).endswith("(measured for rpi4)")
    assert said == ["[onnx-int4] same build as for rpi4 (same recipe, floor and arithmetic): reused"]
