"""converters/tflite/ as a package (issue 9): the recipe registry refuses duplicates, the public
names resolve, and every module is one documented idea of a readable size. No model is built:
this runs in about a second."""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest

import converters.tflite as tflite
from converters._errors import ConversionError
from converters.tflite.recipes import RECIPES, TfliteRecipe, lookup, registry

PACKAGE = Path(tflite.__file__).parent
# STYLE.md: "a file is one idea"; issue 9 caps converters/ files at about 500 lines.


def test_registry_raises_on_a_duplicate_or_refused_name():
    a = TfliteRecipe("dynamic_wi8_afp32", "int8", False, "first")
    b = TfliteRecipe("dynamic_wi8_afp32", "int8", False, "second")
    with pytest.raises(ValueError, match="'dynamic_wi8_afp32' is registered twice"):
        registry([a, b])
    refused = TfliteRecipe("static_wi8_ai8", "int8", True, "")
    with pytest.raises(ValueError, match="'static_wi8_ai8' is registered and also refused"):
        registry([refused])
    assert list(registry([a])) == ["dynamic_wi8_afp32"]


def test_lookup_names_what_is_supported():
    assert lookup("gptq_wi8_afp32") is RECIPES["gptq_wi8_afp32"]
    with pytest.raises(ConversionError, match="unknown TFLite recipe 'int3'; supported: dynamic_"):
        lookup("int3")
    with pytest.raises(ConversionError, match="'static_wi8_ai16' is not supported: int16"):
        lookup("static_wi8_ai16")


def test_public_names_resolve_and_old_modules_are_gone():
    assert sorted(tflite.__all__) == sorted(set(tflite.__all__))
    for name in tflite.__all__:
        assert getattr(tflite, name) is not None, name
    for old in ("converters.quantize_tflite", "converters.export_tflite"):
        with pytest.raises(ModuleNotFoundError):
            importlib.import_module(old)
