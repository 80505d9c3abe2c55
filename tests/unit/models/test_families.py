"""The networks of each family: shapes, masking, Opacus validity, losses and metrics."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from opacus.validators import ModuleValidator
from sklearn.feature_extraction.text import HashingVectorizer
from torch import nn

from models.families import build_model, get_task
from models.imaging import SmallCNN
from models.layers import Recurrent, SelfAttention
from models.spec import ModelSpec
from models.survival import concordance_index, cox_loss, cox_partial_likelihood_sum
from models.text import TextHasher
from privacy.dp_sgd import DPSettings, train_locally

SPECS = {
    "cnn": ModelSpec("cnn", "multiclass", 3 * 8 * 8, 3, {"channels": 3, "image_size": 8}),
    "gru": ModelSpec("gru", "binary", 4, 1, {"hidden": 8}),
    "lstm": ModelSpec("lstm", "binary", 4, 1, {"hidden": 8, "pooling": "mean"}),
    "attention": ModelSpec("attention", "multiclass", 4, 3, {"d_model": 8, "heads": 2}),
    "cox_linear": ModelSpec("cox_linear", "survival", 5, 1),
    "cox_mlp": ModelSpec("cox_mlp", "survival", 5, 1, {"hidden": [8]}),
}


def _inputs(spec: ModelSpec, n: int, rng: np.random.Generator) -> np.ndarray:
    if spec.kind == "cnn":
        return rng.random((n, 3, 8, 8), dtype=np.float32)
    if spec.kind in ("gru", "lstm", "attention"):
        x = rng.normal(size=(n, 6, spec.input_dim + 1)).astype(np.float32)
        x[..., -1] = 1.0
        x[: n // 2, 4:, :] = 0.0  # half the patients have 4 steps, then padding
        return x
    return rng.normal(size=(n, spec.input_dim)).astype(np.float32)


def _targets(spec: ModelSpec, n: int, rng: np.random.Generator) -> np.ndarray:
    if spec.task == "survival":
        return np.stack([rng.uniform(1, 100, n), rng.integers(0, 2, n)], 1).astype(np.float32)
    return rng.integers(0, max(spec.output_dim, 2), n).astype(np.int64)


@pytest.mark.parametrize("kind", sorted(SPECS))
def test_every_family_is_valid_for_opacus_and_trains_with_dp(kind):
    spec = SPECS[kind]
    model = build_model(spec, seed=0)
    assert ModuleValidator.validate(model, strict=False) == []
    rng = np.random.default_rng(0)
    x, y = _inputs(spec, 24, rng), _targets(spec, 24, rng)
    assert model(torch.as_tensor(x)).shape == (24, spec.output_dim)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    result = train_locally(
        model,
        x,
        y,
        get_task(spec.task),
        epochs=1,
        batch_size=8,
        learning_rate=0.1,
        dp=DPSettings(noise_multiplier=1.0, max_grad_norm=1.0),
        seed=0,
    )
    assert result.steps == 3
    assert set(result.weights) == set(before)  # plain names, no Opacus "_module." prefix
    assert all(np.isfinite(w).all() for w in result.weights.values())
    assert any(not np.allclose(result.weights[k], before[k].numpy()) for k in before)


def test_cnn_uses_group_norm_and_accepts_flat_or_grey_inputs():
    cnn = SmallCNN(channels=1, image_size=8, output_dim=2)
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in cnn.modules())
    assert any(isinstance(m, nn.GroupNorm) for m in cnn.modules())
    image = torch.rand(2, 1, 8, 8)
    expected = cnn(image)
    assert torch.allclose(cnn(image.reshape(2, 64)), expected)
    assert torch.allclose(cnn(image[:, 0]), expected)
    with pytest.raises(ValueError, match=r"\(1, 8, 8\)"):
        cnn(torch.rand(2, 1, 9, 9))


def test_dp_attention_matches_torch_multihead_attention_with_several_heads():
    torch.manual_seed(0)
    ours = SelfAttention(embed_dim=8, num_heads=4)
    reference = nn.MultiheadAttention(8, 4, batch_first=True)
    with torch.no_grad():
        q, k, v = reference.in_proj_weight.chunk(3)
        qb, kb, vb = reference.in_proj_bias.chunk(3)
        for layer, w, b in ((ours.qlinear, q, qb), (ours.klinear, k, kb), (ours.vlinear, v, vb)):
            layer.weight.copy_(w)
            layer.bias.copy_(b)
        ours.out_proj.weight.copy_(reference.out_proj.weight)
        ours.out_proj.bias.copy_(reference.out_proj.bias)
    x = torch.randn(3, 5, 8)
    padding = torch.zeros(3, 5, dtype=torch.bool)
    padding[0, 3:] = True
    got, _ = ours(x, x, x, key_padding_mask=padding)
    want, _ = reference(x, x, x, key_padding_mask=padding)
    assert torch.allclose(got, want, atol=1e-5)


@pytest.mark.parametrize("cell", ["gru", "lstm"])
def test_recurrent_layers_match_torch_gru_and_lstm(cell):
    torch.manual_seed(0)
    ours = Recurrent(cell, input_size=3, hidden_size=5, num_layers=2)
    reference = {"gru": nn.GRU, "lstm": nn.LSTM}[cell](3, 5, num_layers=2, batch_first=True)
    with torch.no_grad():
        for index, layer in enumerate(ours.layers):
            layer.ih.weight.copy_(getattr(reference, f"weight_ih_l{index}"))
            layer.ih.bias.copy_(getattr(reference, f"bias_ih_l{index}"))
            layer.hh.weight.copy_(getattr(reference, f"weight_hh_l{index}"))
            layer.hh.bias.copy_(getattr(reference, f"bias_hh_l{index}"))
    x = torch.randn(4, 6, 3)
    want, _ = reference(x)
    assert torch.allclose(ours(x), want, atol=1e-5)


@pytest.mark.parametrize("kind", ["gru", "lstm", "attention"])
def test_opacus_per_sample_gradients_of_sequence_models_are_exact(kind):
    """Opacus adds up a reused Linear's per-sample gradients over the time steps: each
    must equal the gradient of that one example's loss alone."""
    from opacus import GradSampleModule

    model = build_model(SPECS[kind], seed=0)
    x = torch.as_tensor(_inputs(SPECS[kind], 3, np.random.default_rng(2)))
    wrapped = GradSampleModule(model, loss_reduction="sum")
    wrapped(x).sum().backward()
    for i in range(3):
        single = build_model(SPECS[kind], seed=0)
        single(x[i : i + 1]).sum().backward()
        for (name, p), q in zip(wrapped.named_parameters(), single.parameters(), strict=True):
            assert torch.allclose(p.grad_sample[i], q.grad, atol=1e-5), name


@pytest.mark.parametrize("kind", ["gru", "lstm", "attention"])
def test_sequence_models_ignore_what_lies_in_the_padding(kind):
    model = build_model(SPECS[kind], seed=0).eval()
    x = _inputs(SPECS[kind], 4, np.random.default_rng(1))
    noisy = x.copy()
    noisy[:2, 4:, :-1] = 50.0  # garbage values in padded steps (mask stays 0)
    with torch.no_grad():
        a, b = model(torch.as_tensor(x)), model(torch.as_tensor(noisy))
    # gru pools the last observed step, lstm the mean of observed steps, attention masks
    # padded keys: the padding follows the observed steps and cannot reach the output
    assert torch.allclose(a, b, atol=1e-5)


def test_cox_loss_matches_the_partial_likelihood_by_hand():
    risk = torch.tensor([0.5, -0.2, 1.0, 0.0])
    targets = torch.tensor([[2.0, 1.0], [3.0, 0.0], [1.0, 1.0], [3.0, 1.0]])
    # events at t=1 (risk set: all), t=2 (rows 0, 1, 3), t=3 (rows 1, 3: Breslow ties)
    e = np.exp([0.5, -0.2, 1.0, 0.0])
    by_hand = -(
        (1.0 - np.log(e.sum()))
        + (0.5 - np.log(e[[0, 1, 3]].sum()))
        + (0.0 - np.log(e[[1, 3]].sum()))
    )
    assert float(cox_partial_likelihood_sum(risk, targets)) == pytest.approx(by_hand, rel=1e-6)
    assert float(cox_loss(risk, targets)) == pytest.approx(by_hand / 4, rel=1e-6)


def test_concordance_index_counts_comparable_pairs():
    time = np.array([1.0, 2.0, 3.0, 4.0])
    event = np.array([1, 1, 0, 1])
    assert concordance_index(time, event, -time) == 1.0  # earlier event, higher risk
    assert concordance_index(time, event, time) == 0.0
    assert concordance_index(time, event, np.zeros(4)) == 0.5
    # pairs: (0,1) (0,2) (0,3) (1,2) (1,3); risk ranks 0 and 1 the wrong way round
    risk = np.array([1.0, 2.0, 0.0, -1.0])
    assert concordance_index(time, event, risk) == pytest.approx(4 / 5)


def test_survival_task_reports_c_index_and_hazard_ratios():
    task = get_task("survival")
    targets = np.array([[1.0, 1.0], [2.0, 0.0], [3.0, 1.0]])
    metrics = task.metrics(targets, np.array([2.0, 1.0, 0.0]))
    assert metrics["c_index"] == 1.0 and metrics["events"] == 2.0
    (prediction,) = task.predict(np.array([[np.log(2.0)]]), ())
    assert prediction["hazard_ratio"] == pytest.approx(2.0)


def test_text_hash_buckets_are_the_vectorizer_columns_and_need_no_vocabulary():
    hasher = TextHasher(n_features=64, ngram_max=2)
    note = "Productive cough, fever; chest x-ray shows consolidation"
    terms = hasher.terms(note)
    assert "productive cough" in terms and "fever" in terms
    vectorizer = HashingVectorizer(
        n_features=64,
        ngram_range=(1, 1),
        alternate_sign=False,
        norm=None,
        token_pattern=r"(?u)\b\w+\b",
    )
    for term, bucket in terms.items():
        if " " not in term:
            assert vectorizer.transform([term]).indices.tolist() == [bucket]
    vectors = hasher.transform([note, note.upper(), ""])
    assert np.allclose(vectors[0], vectors[1])  # lower-cased
    assert np.linalg.norm(vectors[0]) == pytest.approx(1.0)
    assert not vectors[2].any()
    assert set(np.flatnonzero(vectors[0])) == set(terms.values())
