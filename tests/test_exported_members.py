"""The public surface: ``harness.__all__`` is sorted and every name in it imports."""

from __future__ import annotations

import subprocess
import sys

import pytest

import harness


def test_all_is_sorted_and_unique():
    assert harness.__all__ == sorted(set(harness.__all__))


@pytest.mark.parametrize("name", harness.__all__)
def test_every_exported_name_resolves_to_an_object_of_that_name(name):
    obj = getattr(harness, name)
    assert getattr(obj, "__name__", name) == name


def test_unknown_names_raise_attribute_error():
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        _ = harness.nope


def test_importing_the_package_imports_no_socket_library():
    code = "import sys, harness; print(sorted({'aiohttp','websockets','faker'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
