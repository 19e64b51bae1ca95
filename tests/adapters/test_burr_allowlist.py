"""Loading a Burr row never imports a module the row names unless the caller allows it;
pydantic models the program has already imported load without configuration."""

from __future__ import annotations

import sys

import pydantic
import pytest

pytest.importorskip("burr")

from burr.core import State

from savegame.adapters.burr import Persister
from savegame.savers import MemorySaver, SerializationError


class Profile(pydantic.BaseModel):
    name: str


def test_an_imported_pydantic_model_needs_no_allowlist() -> None:
    saver = MemorySaver()
    Persister(saver).save("pk", "app", 0, "start", State({"profile": Profile(name="ada")}),
                          "completed")
    loaded = Persister(saver).load("pk", "app")
    assert loaded is not None and loaded["state"]["profile"] == Profile(name="ada")
    allowed = Persister(saver, serde_kwargs={"allowlist": [__name__]}).load("pk", "app")
    assert allowed is not None and allowed["state"]["profile"] == Profile(name="ada")


def test_a_foreign_module_named_by_a_row_is_never_imported() -> None:
    saver = MemorySaver()
    Persister(saver).save("pk", "app", 0, "start", State({"x": 1}), "completed")
    row = saver.get("burr:pk:app")
    assert row is not None
    forged = {**row.state, "evil": {"__burr_serde__": "pydantic",
                                    "__pydantic_class": "savegame_never_imported.Evil"}}
    saver.put(type(row)(row.thread_id, forged, id="00000000000000000001",
                        node_id="start", metadata={**row.metadata, "sequence_id": 1}))
    with pytest.raises(SerializationError, match="allowlist"):
        Persister(saver).load("pk", "app")
    assert "savegame_never_imported" not in sys.modules
