"""The known-answer generators by `data.synth.kind`: each registers itself in its module."""

import pytest

from fusescope.config import load_config
from fusescope.data.generators import GENERATORS, generator, kind_of_record, known_kinds
from fusescope.errors import FusescopeError


def test_every_generator_module_registers_its_kind():
    from fusescope.data import posters, synthetic

    assert known_kinds() == ["posters", "rooms"]
    assert generator("rooms") is synthetic.writing.ROOMS is GENERATORS.get("rooms")
    assert generator("posters") is posters.POSTERS
    assert generator("rooms").version == synthetic.GENERATOR_VERSION
    assert generator("posters").version == posters.GENERATOR_VERSION


def test_an_unknown_kind_is_one_line_listing_the_known_ones():
    with pytest.raises(
        FusescopeError, match=r"^data\.synth\.kind='tv' unknown; known: posters, rooms$"
    ):
        load_config(None, ["data.synth={kind: tv}"])


def test_a_record_without_a_kind_is_known_by_its_name():
    """Folders generated before records named their kind were rooms."""
    assert kind_of_record({"name": "fusescope.data.synthetic", "num": 3}) == "rooms"
    assert kind_of_record({"name": "fusescope.data.posters", "kind": "posters"}) == "posters"
    assert kind_of_record({"name": "someone.else"}) is None


def test_the_rooms_options_are_checked_before_anything_is_written(tmp_path):
    from fusescope.data.build import ensure_data

    cfg = load_config(None, [f"data.root={tmp_path / 'd'}", "data.synth={modalities: [sonar]}"])
    with pytest.raises(FusescopeError, match=r"data\.synth\.modalities: unknown modality 'sonar'"):
        ensure_data(cfg.data, progress=False)
    assert not (tmp_path / "d").exists()
