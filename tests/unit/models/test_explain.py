"""Integrated-gradients explanations: completeness for every family, shown per data kind."""

from __future__ import annotations

import textwrap
import tomllib

import numpy as np
import pytest

from models.data.features import Standardization
from models.data.kinds.registry import parse_schema
from models.explain import explain_rows, integrated_gradients
from models.families import build_model
from models.predictor import Predictor
from models.spec import ModelSpec, get_weights

TABLE = """
[dataset]
task = "{task}"
label = "y"
{extra}

[features.age]
type = "numeric"

[features.ward]
type = "categorical"
categories = ["icu", "general", "surgery"]

[features.smoker]
type = "binary"
"""
ROW = {"age": 71.0, "ward": "icu", "smoker": 1}
STANDARDIZATION = Standardization({"age": 60.0, "y": 150.0}, {"age": 12.0, "y": 40.0})


def _predictor(schema_text: str, spec: ModelSpec, standardization=STANDARDIZATION) -> Predictor:
    schema = parse_schema(tomllib.loads(textwrap.dedent(schema_text)))
    weights = get_weights(build_model(spec, seed=3))
    return Predictor(spec, weights, schema, standardization)


def _table(task: str, kind: str, outputs: int, extra: str = "") -> Predictor:
    text = TABLE.format(task=task, extra=extra)
    return _predictor(text, ModelSpec(kind, task, 5, outputs, {"hidden": [8]}))


CASES = {
    "binary-mlp": lambda: (_table("binary", "mlp", 1), [ROW]),
    "multiclass-logreg": lambda: (
        _table("multiclass", "logreg", 3, 'classes = ["a", "b", "c"]'),
        [ROW, {**ROW, "ward": "surgery"}],
    ),
    "regression-mlp": lambda: (_table("regression", "mlp", 1), [ROW]),
    "survival-cox_mlp": lambda: (_table("survival", "cox_mlp", 1, 'event = "e"'), [ROW]),
    "image-cnn": lambda: (
        _predictor(
            '[dataset]\nkind = "image"\ntask = "binary"\nlabel = "y"\n'
            "channels = 3\nimage_size = 8\n",
            ModelSpec("cnn", "binary", 192, 1, {"channels": 3, "image_size": 8}),
        ),
        [{"image": np.random.default_rng(0).integers(0, 256, (8, 8, 3)).tolist()}],
    ),
    "sequence-gru": lambda: (
        _predictor(
            '[dataset]\nkind = "sequence"\ntask = "binary"\nlabel = "y"\npatient = "p"\n'
            'time = "t"\nmax_steps = 5\n[features.hr]\ntype = "numeric"\n',
            ModelSpec("gru", "binary", 1, 1, {"hidden": 8, "max_len": 5}),
            Standardization({"hr": 80.0}, {"hr": 10.0}),
        ),
        [{"steps": [{"t": 0, "hr": 70}, {"t": 1, "hr": 95}, {"t": 2, "hr": 120}]}],
    ),
    "sequence-attention": lambda: (
        _predictor(
            '[dataset]\nkind = "sequence"\ntask = "binary"\nlabel = "y"\npatient = "p"\n'
            'time = "t"\nmax_steps = 5\n[features.hr]\ntype = "numeric"\n',
            ModelSpec("attention", "binary", 1, 1, {"d_model": 8, "heads": 2, "max_len": 5}),
            Standardization({"hr": 80.0}, {"hr": 10.0}),
        ),
        [{"steps": [{"t": 0, "hr": 70}, {"t": 1, "hr": 95}]}],
    ),
    "text-mlp": lambda: (
        _predictor(
            '[dataset]\nkind = "text"\ntask = "binary"\nlabel = "y"\ntext = "note"\n'
            "n_features = 32\n",
            ModelSpec("mlp", "binary", 32, 1, {"hidden": [8]}),
        ),
        [{"note": "fever and productive cough, crackles at the right base"}],
    ),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_attributions_add_up_to_the_output_minus_the_baseline_output(case):
    predictor, rows = CASES[case]()
    inputs = predictor.encode_rows(rows)
    for attribution in integrated_gradients(predictor, inputs):
        difference = attribution.output - attribution.baseline_output
        assert attribution.values.shape == inputs.shape[1:]
        assert attribution.values.sum() == pytest.approx(difference, rel=2e-2, abs=1e-4)
        assert abs(attribution.convergence_delta) <= 2e-2 * abs(difference) + 1e-4
    # the explained output is the one the predictor serves
    outputs = predictor.outputs(inputs)
    first = integrated_gradients(predictor, inputs)[0]
    assert first.output == pytest.approx(float(outputs[0, first.target]), rel=1e-5)


def test_a_linear_model_gets_weight_times_difference_from_the_mean_patient():
    predictor, rows = _table("binary", "logreg", 1), [ROW]
    (explained,) = explain_rows(predictor, rows)
    weight = predictor.model[0].weight.detach().numpy()[0]
    features = explained["attributions"]["features"]
    # age: (71 - 60) / 12 standard deviations above the federation's mean
    assert features["age"] == pytest.approx(weight[0] * 11 / 12, rel=1e-4)
    assert features["ward"] == pytest.approx(weight[1], rel=1e-4)  # one-hot "icu" on
    assert features["smoker"] == pytest.approx(weight[4], rel=1e-4)
    assert explained["explains"] == "logit of class '1'"
    assert explained["method"] == "integrated_gradients"


def test_regression_attributions_are_in_the_label_units():
    predictor, rows = CASES["regression-mlp"]()
    (explained,) = explain_rows(predictor, rows)
    (prediction,) = predictor.predict_rows(rows)
    assert explained["output"] == pytest.approx(prediction["value"], rel=1e-5)
    total = sum(explained["attributions"]["features"].values())
    assert total == pytest.approx(explained["output"] - explained["baseline_output"], rel=1e-2)


def test_each_kind_shows_attributions_in_its_own_terms():
    image, image_rows = CASES["image-cnn"]()
    (shown,) = explain_rows(image, image_rows)
    assert np.asarray(shown["attributions"]["pixels"]).shape == (8, 8)

    sequence, sequence_rows = CASES["sequence-gru"]()
    (shown,) = explain_rows(sequence, sequence_rows)
    steps = shown["attributions"]["steps"]
    assert [s["time"] for s in steps] == [0.0, 1.0, 2.0]
    assert set(steps[0]["features"]) == {"hr"}

    text, text_rows = CASES["text-mlp"]()
    (shown,) = explain_rows(text, text_rows)
    terms = shown["attributions"]["terms"]
    assert "productive cough" in terms and "fever" in terms
    magnitudes = [abs(v) for v in terms.values()]
    assert magnitudes == sorted(magnitudes, reverse=True)
    assert sum(terms.values()) == pytest.approx(
        shown["output"] - shown["baseline_output"], rel=1e-2
    )
