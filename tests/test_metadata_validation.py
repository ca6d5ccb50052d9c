"""nbgrader's check of its cell metadata, with its schema checked once (autograder/nbgrader_cli.py,
validate_metadata_against_a_checked_schema): it accepts what nbgrader accepts and refuses what nbgrader
refuses, with the same error. Its time: benchmarks/metadata_validation.py."""
import copy
from pathlib import Path

import jsonschema
import nbformat
import pytest
from nbgrader.nbgraderformat import MetadataValidator, common

from autograder.nbgrader_cli import validate_metadata_against_a_checked_schema

ROOT = Path(__file__).resolve().parent.parent
SOURCE = sorted((ROOT / "source").glob("*/*.ipynb"))

# Metadata nbgrader's schema refuses: fields of the wrong type, a required field missing.
BREAKAGES = {
    "points as text": lambda meta: meta.update(points="three"),
    "grade as text": lambda meta: meta.update(grade="yes"),
    "locked as a number": lambda meta: meta.update(locked=1),
    "solution missing": lambda meta: meta.pop("solution"),
}


@pytest.fixture
def checked_once(monkeypatch):
    monkeypatch.setattr(common, "jsonschema", common.jsonschema)  # put back after the test
    as_shipped = common.jsonschema
    validate_metadata_against_a_checked_schema()
    assert common.jsonschema is not as_shipped
    return as_shipped


def validation_error(module, nb):
    """The ValidationError's message nbgrader's MetadataValidator raises for `nb` with `module` as its
    jsonschema, or None."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(common, "jsonschema", module)
        try:
            MetadataValidator().validate_nb(nb)
        except jsonschema.ValidationError as err:
            return err.message
    return None


@pytest.mark.parametrize("breakage", sorted(BREAKAGES))
def test_the_same_metadata_is_refused_with_the_same_error(checked_once, breakage):
    nb = nbformat.read(SOURCE[0], as_version=4)
    assert validation_error(common.jsonschema, nb) is None, "the course's own notebooks are valid"
    cell = next(c for c in nb.cells if c.metadata.get("nbgrader", {}).get("grade"))
    broken = copy.deepcopy(nb)
    BREAKAGES[breakage](broken.cells[nb.cells.index(cell)].metadata["nbgrader"])
    expected = validation_error(checked_once, broken)
    assert expected, f"nbgrader refuses {breakage}"
    assert validation_error(common.jsonschema, broken) == expected


def test_every_source_notebook_is_accepted_and_the_schema_is_checked_once(checked_once, monkeypatch):
    kind = jsonschema.validators.validator_for(MetadataValidator().schema)  # nbgrader's schema's draft
    checks = []
    original = kind.check_schema.__func__

    def counted(cls, schema, *args, **kwargs):
        checks.append(schema)
        return original(cls, schema, *args, **kwargs)

    monkeypatch.setattr(kind, "check_schema", classmethod(counted))
    notebooks = [nbformat.read(path, as_version=4) for path in SOURCE]
    cells = sum(1 for nb in notebooks for cell in nb.cells if "nbgrader" in cell.metadata)
    checks.clear()
    for nb in notebooks:
        MetadataValidator().validate_nb(nb)
    assert cells > 100 and len(checks) <= 1, f"the schema is checked once, not for each of {cells} cells: {len(checks)}"
    monkeypatch.setattr(common, "jsonschema", checked_once)
    checks.clear()
    for nb in notebooks:
        MetadataValidator().validate_nb(nb)
    assert len(checks) == cells, "as nbgrader comes, jsonschema.validate checks the schema at every cell"
