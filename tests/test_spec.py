"""Job spec parsing: every bad key or value is refused with the dotted key and a reason."""
import json
from pathlib import Path

import pytest

from worker.spec import SpecError, load_spec, parse_spec, parse_spec_text, with_overrides

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def minimal(**train):
    return {"model": {"layers": [64, 10]}, "train": {"epochs": 1, **train}}


def test_example_specs_load():
    spec = load_spec(EXAMPLES / "digits.toml")
    assert spec.name == "digits-mlp" and spec.model.layers == (64, 128, 128, 10)
    assert spec.train.epochs == 30 and spec.optim.name == "adam" and spec.checkpoint.keep_last == 3
    assert load_spec(EXAMPLES / "synthetic.toml").data.synthetic.features == 784


def test_json_round_trip_is_the_same_spec():
    spec = load_spec(EXAMPLES / "digits.toml")
    assert parse_spec_text(spec.to_json()) == spec
    assert parse_spec(json.loads(spec.to_json())) == spec


@pytest.mark.parametrize("raw,field,reason", [
    ({**minimal(), "modle": {}}, "modle", "unknown key"),
    ({"model": {"layers": [64, 10], "actvation": "relu"}, "train": {"epochs": 1}}, "model.actvation", "unknown key"),
    (minimal(batch_size=0), "train.batch_size", "at least 1"),
    (minimal(batch_size="64"), "train.batch_size", "integer"),
    (minimal(batch_size=True), "train.batch_size", "integer"),
    (minimal(steps=10), "train.epochs", "exactly one"),
    ({"model": {"layers": [64, 10]}, "train": {}}, "train.epochs", "exactly one"),
    ({"model": {"layers": [64, 10], "activation": "swish"}, "train": {"epochs": 1}}, "model.activation", "relu"),
    ({"model": {"layers": [64]}, "train": {"epochs": 1}}, "model.layers", "at least"),
    ({"model": {"layers": [64, 0, 10]}, "train": {"epochs": 1}}, "model.layers", "1..1048576"),
    ({"model": {"layers": [63, 10]}, "train": {"epochs": 1}}, "model.layers", "64 features"),
    ({**minimal(), "optim": {"lr": -1}}, "optim.lr", "positive"),
    ({**minimal(), "optim": {"lr": float("nan")}}, "optim.lr", "finite"),
    ({**minimal(), "optim": {"name": "lbfgs"}}, "optim.name", "adam"),
    ({**minimal(), "data": {"val_fraction": 1.0}}, "data.val_fraction", "[0, 1)"),
    ({**minimal(), "data": {"synthetic": 5}}, "data.synthetic", "table"),
    ({**minimal(), "checkpoint": {"keep_last": 0}}, "checkpoint.keep_last", "at least 1"),
    ({**minimal(), "fault": {"hang_timeout_s": 0}}, "fault.hang_timeout_s", "positive"),
    ({**minimal(), "workers": 0}, "workers", "1..4096"),
    ([1, 2], "spec", "table"),
])
def test_bad_values_name_the_field_and_the_reason(raw, field, reason):
    with pytest.raises(SpecError) as err:
        parse_spec(raw)
    assert err.value.field == field
    assert reason in err.value.reason
    assert str(err.value).startswith(f"{field}: ")


def test_unparseable_text_is_a_spec_error():
    with pytest.raises(SpecError, match="not valid TOML"):
        parse_spec_text("name = ")
    with pytest.raises(SpecError, match="not valid JSON"):
        parse_spec_text("{nope")


def test_missing_file_is_a_spec_error(tmp_path):
    with pytest.raises(SpecError, match="cannot read"):
        load_spec(tmp_path / "absent.toml")


def test_synthetic_sizes_must_match_the_model():
    raw = {"model": {"layers": [20, 5]}, "train": {"epochs": 1},
           "data": {"source": "synthetic", "synthetic": {"features": 20, "classes": 4}}}
    with pytest.raises(SpecError, match="classes"):
        parse_spec(raw)
    raw["data"]["synthetic"]["classes"] = 5
    assert parse_spec(raw).data.synthetic.classes == 5


def test_overrides_are_revalidated():
    spec = parse_spec(minimal())
    assert with_overrides(spec, workers=4).workers == 4
    with pytest.raises(SpecError, match="workers"):
        with_overrides(spec, workers=-1)
