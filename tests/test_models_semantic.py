"""SemSR-I / SemSR-F (models.semantic) and the DA fidelity switch, through the registry."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.decomposition import PCA

from models.encoders import Packed
from models.registry import build_model, resolve_config
from models.semantic import SemanticAttention, SemanticFusionCORE, semantic_init

N_ITEMS, D, SEM = 40, 16, 24


def vectors(seed: int = 0, without_text: tuple[int, ...] = (5, 7)) -> np.ndarray:
    """Unit semantic vectors; padding and the ``without_text`` items are zero rows."""
    out = np.random.default_rng(seed).normal(size=(N_ITEMS, SEM)).astype(np.float32)
    out /= np.linalg.norm(out, axis=1, keepdims=True)
    out[[0, *without_text]] = 0.0
    return out


def semsr(variant: str, **overrides):
    config = resolve_config(
        {"model": variant, "embedding_size": D, "inner_size": 32, **overrides}
    )
    return build_model(config, N_ITEMS, item_vectors=vectors())


ITEMS = torch.tensor([[1, 2, 3, 0], [4, 5, 0, 0], [6, 7, 8, 9]])
TARGETS = torch.tensor([4, 9, 12])


def test_semantic_variants_refuse_to_build_without_item_vectors():
    for variant in ("semsr_i", "semsr_f"):
        config = resolve_config({"model": variant})
        with pytest.raises(ValueError, match="needs semantic item vectors"):
            build_model(config, N_ITEMS)


def test_frozen_semantic_table_gets_no_gradient_and_never_changes():
    torch.manual_seed(0)
    model = semsr("semsr_f")
    assert isinstance(model, SemanticFusionCORE)
    assert not model.semantic.requires_grad
    assert all(p is not model.semantic for p in model.parameters())
    assert "semantic" not in model.state_dict()  # comes from the dataset, not checkpoints
    before = model.semantic.clone()
    optimizer = torch.optim.Adam(model.parameters(), lr=0.1)
    for _ in range(3):
        optimizer.zero_grad()
        model(ITEMS, TARGETS).backward()
        optimizer.step()
    assert model.semantic.grad is None
    assert torch.equal(model.semantic, before)
    # ... while the layers reading it do learn.
    assert model.sem_project.weight.grad.abs().sum() > 0
    assert model.item_embedding.grad.abs().sum() > 0


def test_semantic_attention_query_is_the_last_item():
    torch.manual_seed(0)
    attention = SemanticAttention(8)
    items = torch.tensor([[1, 2, 3, 4, 0]])
    packed = Packed(items)
    tokens = torch.randn(len(packed.index), 8)
    _, beta = attention(packed, tokens)

    def ratios(weights):  # between the first three (non-last) positions
        return weights[0, :3] / weights[0, :3].sum()

    # Changing only the last item's vector changes how the earlier items are weighted...
    last_changed = tokens.clone()
    last_changed[packed.last[0]] = torch.randn(8)
    _, beta_last = attention(packed, last_changed)
    assert not torch.allclose(ratios(beta_last), ratios(beta), atol=1e-4)
    # ... while changing a middle item changes only its own score: the others keep their ratio.
    middle_changed = tokens.clone()
    middle = int((packed.position == 1).nonzero())
    middle_changed[middle] = torch.randn(8)
    _, beta_middle = attention(packed, middle_changed)
    keep = [0, 2]
    torch.testing.assert_close(
        beta_middle[0, keep] / beta_middle[0, keep].sum(), beta[0, keep] / beta[0, keep].sum()
    )
    assert torch.all(beta[items == 0] == 0)
    torch.testing.assert_close(beta.sum(dim=1), torch.ones(1))


def test_semsr_i_initial_table_is_the_scaled_pca_projection():
    torch.manual_seed(0)
    semantic = vectors(seed=3)
    random_table = torch.empty(N_ITEMS, D).uniform_(-(D**-0.5), D**-0.5)
    table = semantic_init(semantic, random_table)

    has_text = np.abs(semantic).sum(axis=1) > 0
    oracle = PCA(n_components=D).fit_transform(semantic[has_text].astype(np.float64))
    oracle *= (1 / np.sqrt(3 * D)) / oracle.std(ddof=1)
    got = table.numpy()[has_text].astype(np.float64)
    signs = np.sign((got * oracle).sum(axis=0))  # principal directions have no fixed sign
    np.testing.assert_allclose(got, oracle * signs, atol=1e-5)
    # Items without text and padding keep CORE's random initialisation.
    torch.testing.assert_close(table[~torch.from_numpy(has_text)],
                               random_table[~torch.from_numpy(has_text)])
    # The projected rows carry CORE's init scale.
    assert abs(float(table[has_text].std()) - 1 / np.sqrt(3 * D)) < 1e-4


def test_semsr_i_builds_with_the_projected_table():
    torch.manual_seed(0)
    model = semsr("semsr_i")
    expected_rows = np.abs(vectors()).sum(axis=1) > 0
    # The projected rows have CORE's init scale; the model starts from them, not random ones.
    std = float(model.item_embedding.detach()[torch.from_numpy(expected_rows)].std())
    assert abs(std - 1 / np.sqrt(3 * D)) < 1e-4


@pytest.mark.parametrize("fusion", ["concat", "gate"])
def test_semsr_f_trains_predicts_and_handles_items_without_text(fusion):
    torch.manual_seed(0)
    model = semsr("semsr_f", fusion=fusion, sem_size=8)
    loss = model(ITEMS, TARGETS)
    assert torch.isfinite(loss)
    loss.backward()
    assert model.combine.weight.grad.abs().sum() > 0
    model.eval()
    with torch.no_grad():
        scores = model.predict(ITEMS)  # rows hold items 5 and 7, which have no text
    assert scores.shape == (3, N_ITEMS)
    assert torch.all(torch.isfinite(scores[:, 1:])) and torch.all(scores[:, 0] == -float("inf"))


def test_semsr_f_semantic_session_vector_changes_the_prediction():
    """The semantic branch is wired in: other text vectors give other session vectors."""
    torch.manual_seed(0)
    config = resolve_config({"model": "semsr_f", "embedding_size": D, "inner_size": 32})
    torch.manual_seed(1)
    a = build_model(config, N_ITEMS, item_vectors=vectors(seed=0)).eval()
    torch.manual_seed(1)
    b = build_model(config, N_ITEMS, item_vectors=vectors(seed=1)).eval()
    with torch.no_grad():
        assert not torch.allclose(a.encode(ITEMS)[0], b.encode(ITEMS)[0])


@pytest.mark.parametrize("training", [True, False])
def test_da_with_every_switch_off_and_linear_scorer_is_trm_from_the_config(training):
    switches = {"da_gating": False, "da_recent": False, "da_residual": False}
    trm_config = resolve_config({"model": "trm", "embedding_size": D, "inner_size": 32})
    da_config = resolve_config({**trm_config, "model": "da", **switches, "da_scorer": "linear"})
    torch.manual_seed(0)
    trm = build_model(trm_config, N_ITEMS).train(training)
    torch.manual_seed(0)
    da = build_model(da_config, N_ITEMS).train(training)
    torch.manual_seed(5)
    loss_trm = trm(ITEMS, TARGETS)
    torch.manual_seed(5)
    loss_da = da(ITEMS, TARGETS)
    assert torch.equal(loss_trm, loss_da)
    # The paper's MLP scorer is a different model.
    torch.manual_seed(0)
    mlp = build_model({**da_config, "da_scorer": "mlp"}, N_ITEMS).train(training)
    torch.manual_seed(5)
    assert not torch.equal(mlp(ITEMS, TARGETS), loss_trm)


def test_unknown_fusion_and_scorer_are_refused_by_name():
    with pytest.raises(ValueError, match="fusion"):
        resolve_config({"model": "semsr_f", "fusion": "sum"})
    with pytest.raises(ValueError, match="da_scorer"):
        resolve_config({"model": "da", "da_scorer": "deep"})
