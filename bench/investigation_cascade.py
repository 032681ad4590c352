"""ZTW-style recycling on a frozen backbone: heads (plain / cascade) at cuts + trained ensembles.
usage: ztw.py RUN_DIR OUT.json CUTS(comma global block idx, last=final) [--own]"""
import json, math, sys, time, logging
from pathlib import Path
import numpy as np, torch, torch.nn as nn, torch.nn.functional as F
from training.checkpoint import load_model
from training.config import from_dict
from training.data import DataConfig, build_splits
from training.flops import count_flops
from training.losses import balanced_softmax
from model_export.calibrate_run import iter_batches
from model_export.runtime import normalize
from model_export.retrofit.heads import ExitHead as RHead
from elf_core.calibration import calibrate, evaluate_thresholds, final_exit_only
from elf_core.exits import softmax
logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
log = logging.getLogger("ztw")
torch.set_num_threads(1)
run, out = Path(sys.argv[1]), Path(sys.argv[2])
cuts = [int(c) for c in sys.argv[3].split(",")]
model, config = load_model(run / "checkpoint.pt"); model.eval()
splits = build_splits(from_dict(DataConfig, config["data"]))
blocks = [m for st in model.stages for m in st]  # stem is stages[0][0]
# global block list: index i over BasicBlocks (stem folded into first)
mods, bidx = [], []
for st in model.stages:
    for m in st:
        mods.append(m)
        bidx.append(type(m).__name__ == "BasicBlock")
block_pos = [i for i, b in enumerate(bidx) if b]  # positions in mods of blocks
nb = len(block_pos); assert cuts[-1] == nb - 1, (cuts, nb)
C = model.num_classes
x0 = torch.zeros(1, splits.channels, splits.height, splits.width)
# flops per module
fl, x = [], x0
with torch.no_grad():
    for m in mods:
        fl.append(count_flops(m, x)); x = m(x)
cum_body = np.cumsum(fl)
def body_upto(b): return float(cum_body[block_pos[b]])
final_head_fl = count_flops(model.exits[-1], x)
FULL = float(cum_body[-1] + final_head_fl)

@torch.no_grad()
def feats(data):
    fs = {c: [] for c in cuts[:-1]}; own = [[] for _ in model.exits]; labels = []
    for images, y in iter_batches(data, 500, "f", False):
        x = torch.from_numpy(normalize(images, splits.mean, splits.std))
        bi, si = 0, 0
        for st, head in zip(model.stages, model.exits):
            for m in st:
                x = m(x)
                if type(m).__name__ == "BasicBlock":
                    if bi in fs: fs[bi].append(x.half().numpy())
                    bi += 1
            own[si].append(head(x).numpy()); si += 1
        labels.append(y)
    return ({c: np.concatenate(v) for c, v in fs.items()}, [np.concatenate(o) for o in own], np.concatenate(labels))
t0 = time.time()
S = {name: feats(getattr(splits, name)) for name in ("train", "val", "test")}
log.info("features %.0fs", time.time() - t0)
counts = list(splits.train_class_counts)
log_prior = torch.tensor([math.log(max(c, 1) / sum(counts)) for c in counts])

class Head(nn.Module):
    def __init__(s, shape, cascade):
        super().__init__(); s.h = RHead(shape, C, 2, None)
        s.casc = nn.Linear(C, C, bias=False) if cascade else None
        if s.casc is not None: nn.init.zeros_(s.casc.weight)
    def forward(s, x, prev):
        z = s.h(x)
        return z if (s.casc is None or prev is None) else z + s.casc(prev.detach())

def train_heads(cascade, epochs=15, bs=128, lr=2e-3, seed=0):
    torch.manual_seed(seed)
    F_, _, y = S["train"]
    heads = [Head(F_[c].shape[1:], cascade) for c in cuts[:-1]]
    opt = torch.optim.AdamW([p for h in heads for p in h.parameters()], lr=lr, weight_decay=5e-4)
    n = len(y); steps = epochs * math.ceil(n / bs)
    sch = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps)
    yt = torch.from_numpy(y); g = torch.Generator().manual_seed(seed)
    for h in heads: h.train()
    for ep in range(epochs):
        order = torch.randperm(n, generator=g)
        for st in range(0, n, bs):
            idx = order[st:st + bs]; ii = idx.numpy(); loss = 0; prev = None
            for c, h in zip(cuts[:-1], heads):
                z = h(torch.from_numpy(F_[c][ii]).float(), prev); prev = z
                loss = loss + balanced_softmax(z, yt[idx], log_prior).mean()
            opt.zero_grad(); loss.backward(); opt.step(); sch.step()
    for h in heads: h.eval()
    return heads

@torch.no_grad()
def head_logits(heads, name):
    F_, own, _ = S[name]; outs = [[] for _ in heads]
    n = len(own[0])
    for st in range(0, n, 500):
        prev = None
        for k, (c, h) in enumerate(zip(cuts[:-1], heads)):
            z = h(torch.from_numpy(F_[c][st:st + 500]).float(), prev); prev = z; outs[k].append(z.numpy())
    return [np.concatenate(o) for o in outs] + [own[-1]]

def head_flops(heads):
    return [count_flops(h.h, torch.zeros(1, *S["train"][0][c].shape[1:])) + (2 * C * C if h.casc is not None else 0) for c, h in zip(cuts[:-1], heads)]

def fit_ensemble(logits_train, y, epochs=300, lr=0.05):
    K = len(logits_train)
    lp = torch.stack([F.log_softmax(torch.from_numpy(z).float(), 1) for z in logits_train])  # K N C
    w = torch.zeros(K, K); w[range(K), range(K)] = 1.0; w.requires_grad_(True)
    b = torch.zeros(K, C, requires_grad=True)
    opt = torch.optim.Adam([w, b], lr=lr); yt = torch.from_numpy(y)
    mask = torch.tril(torch.ones(K, K))
    for _ in range(epochs):
        q = torch.einsum("kj,jnc->knc", w.clamp(min=0) * mask, lp) + b[:, None, :]
        loss = sum(balanced_softmax(q[k], yt, log_prior).mean() for k in range(K))
        opt.zero_grad(); loss.backward(); opt.step()
    return (w.clamp(min=0) * mask).detach(), b.detach()

def apply_ensemble(logits, wb):
    w, b = wb
    lp = torch.stack([F.log_softmax(torch.from_numpy(z).float(), 1) for z in logits])
    q = torch.einsum("kj,jnc->knc", w, lp) + b[:, None, :]
    return [q[k].numpy() for k in range(len(logits))]

def judge(name, val_logits, test_logits, cum):
    yv, yt = S["val"][2], S["test"][2]
    pv = [softmax(z) for z in val_logits]; pt = [softmax(z) for z in test_logits]
    kw = dict(train_class_counts=counts)
    res = calibrate(pv, yv, cum, 0.005, **kw)
    def test_at(p): return evaluate_thresholds(pt, yt, cum, p.thresholds, **kw)
    half = [p for p in res.curve if p.flops_ratio <= 0.5]
    h = max(half, key=lambda p: (p.balanced_accuracy, -p.flops_ratio)) if half else None
    fin = final_exit_only(pt, yt, cum, **kw)
    r = {"name": name, "cum": [round(c, 4) for c in cum],
         "final": [fin.balanced_accuracy, fin.tail_accuracy],
         "val_best": res.best.balanced_accuracy, "val_chosen": res.chosen.balanced_accuracy}
    for key, p in (("best", res.best), ("chosen", res.chosen), ("at50", h)):
        if p is None: continue
        q = test_at(p)
        r[key] = {"bal": round(q.balanced_accuracy * 100, 2), "tail": round(q.tail_accuracy * 100, 2),
                  "saved": round((1 - q.flops_ratio) * 100, 1), "val_bal": round(p.balanced_accuracy * 100, 2),
                  "rates": [round(v, 3) for v in q.exit_rates]}
    log.info("%s", json.dumps(r))
    return r

results = []
ytr = S["train"][2]
if "--own" in sys.argv:  # the network's own exits (ELF): stage ends
    own_cum, acc = [], 0.0
    heads_fl = []
    x = x0
    with torch.no_grad():
        for st, head in zip(model.stages, model.exits):
            x = st(x); heads_fl.append(count_flops(head, x))
    body = 0.0; hsum = 0.0
    for k, st in enumerate(model.stages):
        body += count_flops(st, x0 if k == 0 else None) if False else 0
    stage_end = [i for i, m in enumerate(mods) if m is model.stages[k][-1]] if False else None
    # cumulative: body to end of stage k + heads 0..k
    ends = np.cumsum([sum(fl[i] for i, m in enumerate(mods) if any(m is mm for mm in st)) for st in model.stages])
    cum = [(ends[k] + sum(heads_fl[:k + 1])) / FULL for k in range(len(ends))]
    Vo, To, Tro = S["val"][1], S["test"][1], S["train"][1]
    results.append(judge("own", Vo, To, cum))
    wb = fit_ensemble(Tro, ytr)
    results.append(judge("own+ens", apply_ensemble(Vo, wb), apply_ensemble(To, wb), cum))
for cascade in (False, True):
    t0 = time.time(); heads = train_heads(cascade); log.info("heads cascade=%s %.0fs", cascade, time.time() - t0)
    hf = head_flops(heads)
    cum = [(body_upto(c) + sum(hf[:k + 1])) / FULL for k, c in enumerate(cuts[:-1])] + [(FULL + sum(hf)) / FULL]
    tag = ("casc" if cascade else "plain") + "@" + sys.argv[3]
    V, T, Tr = head_logits(heads, "val"), head_logits(heads, "test"), head_logits(heads, "train")
    results.append(judge(tag, V, T, cum))
    wb = fit_ensemble(Tr, ytr)
    results.append(judge(tag + "+ens", apply_ensemble(V, wb), apply_ensemble(T, wb), cum))
    results[-1]["w"] = wb[0].numpy().round(3).tolist()
out.write_text(json.dumps(results, indent=1))
