import pytest

from fusescope.config import load_config
from fusescope.errors import FusescopeError
from fusescope.models import build_model


def test_overrides_and_types():
    cfg = load_config(None, ["train.max_steps=7", "model.backbone=resnet34",
                             "data.modalities=[rgb,hha,depth]"])
    assert cfg.train.max_steps == 7 and cfg.model.backbone == "resnet34"
    assert list(cfg.data.modalities) == ["rgb", "hha", "depth"]


@pytest.mark.parametrize("override, needle", [
    ("train.nope=1", "train.nope"), ("train.max_steps=abc", "train.max_steps"),
    ("nothing", "key=value")])
def test_bad_overrides_name_the_key(override, needle):
    with pytest.raises(FusescopeError, match=needle):
        load_config(None, [override])


def test_unknown_key_in_file_is_named(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  max_stepz: 3\n")
    with pytest.raises(FusescopeError, match="max_stepz"):
        load_config(path)


def test_missing_config_file(tmp_path):
    with pytest.raises(FusescopeError, match="not found"):
        load_config(tmp_path / "none.yaml")


def test_unknown_method_lists_known_ones():
    with pytest.raises(FusescopeError, match="unknown fusion method 'nope'.*early_concat"):
        build_model({"name": "nope"}, ["rgb"], {"rgb": 3}, 4)


def test_unknown_model_option_is_named():
    with pytest.raises(FusescopeError, match="model.widht"):
        build_model({"name": "early_concat", "widht": 3}, ["rgb"], {"rgb": 3}, 4)


def test_unknown_decoder_lists_known_ones():
    with pytest.raises(FusescopeError, match="unknown decoder 'nope'.*light"):
        build_model({"name": "early_concat", "decoder": "nope"}, ["rgb"], {"rgb": 3}, 4)
