import pytest

from fusescope.config import load_config
from fusescope.errors import FusescopeError
from fusescope.models import build_model


def test_overrides_and_types():
    cfg = load_config(
        None, ["train.max_steps=7", "model.backbone=resnet34", "data.modalities=[rgb,hha,depth]"]
    )
    assert cfg.train.max_steps == 7 and cfg.model.backbone == "resnet34"
    assert list(cfg.data.modalities) == ["rgb", "hha", "depth"]


@pytest.mark.parametrize(
    "override, needle",
    [
        ("train.nope=1", "train.nope"),
        ("train.max_steps=abc", "train.max_steps"),
        ("nothing", "key=value"),
    ],
)
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


@pytest.mark.parametrize("name", ["asymfusion", "cen"])
def test_a_stage_the_backbone_lacks_is_an_error_not_dropped(name):
    from fusescope.errors import FusescopeError
    from fusescope.models import build_model

    with pytest.raises(FusescopeError, match=r"stages \[1, 5\].*1\.\.4"):
        build_model({"name": name, "stages": [1, 5]}, ["rgb", "depth"], {"rgb": 3, "depth": 1}, 3)


def test_a_bug_inside_a_builder_keeps_its_traceback(monkeypatch):
    """Only OptionError (an option the builder rejects) becomes a user error."""
    from fusescope.errors import FusescopeError, OptionError
    from fusescope.models import FUSION_METHODS, build_model

    def broken(modalities, in_channels, num_classes):
        raise ValueError("a bug")

    def picky(modalities, in_channels, num_classes):
        raise OptionError("width must be > 0")

    monkeypatch.setitem(FUSION_METHODS._builders, "broken", broken)
    monkeypatch.setitem(FUSION_METHODS._builders, "picky", picky)
    with pytest.raises(ValueError, match="a bug") as info:
        build_model({"name": "broken"}, ["rgb"], {"rgb": 3}, 3)
    assert not isinstance(info.value, FusescopeError)
    with pytest.raises(FusescopeError, match="model 'picky': width must be > 0"):
        build_model({"name": "picky"}, ["rgb"], {"rgb": 3}, 3)
