"""How should the next generation use R1's labels when the given labels are noisy? (the study behind --noise-prior)

One seed of the refinery_gain.py setting (Fashion-MNIST, 12,000-image subset, ``convnet``, 8 epochs, bf16):
R1 on the noisy labels, the quality of candidate targets made from its labels (corrected / harmed /
correct share / entropy), R2 trained on chosen candidates, and a chain of posterior generations.
Arguments: SEED NOISE RATE CANDIDATES CHAIN_RATE, e.g. the figures in BENCHMARKS.md
("Telling the refinery how noisy the labels are"):

    .venv/bin/python benchmarks/noise_posterior_study.py 0 symmetric:0.4 0.4 \
        "final:hard,temporal:hard,post(temporal):hard,post(temporal):soft"
    .venv/bin/python benchmarks/noise_posterior_study.py 0 symmetric:0.4 0.4 "post(dn):soft,post(dn):hard,dn:soft"
    .venv/bin/python benchmarks/noise_posterior_study.py 0 symmetric:0.4 0.4 "" 0.4   # and seeds 1, 2

Candidates: final (R1's softmax), temporal (mean of its per-epoch softmax), dn (de-noised through the
symmetric transition), post(...) (Bayes' rule with the given label), .2/.3/.5 other assumed rates.
R1 of symmetric:0.4 is cached in $STUDY_CACHE (default /tmp/noise-study) between calls.
"""
import os
CACHE = os.environ.get("STUDY_CACHE", "/tmp/noise-study")
os.makedirs(CACHE, exist_ok=True)
import sys, time, json, torch, torch.nn.functional as F
from labelrefinery.batch import Pipeline
from labelrefinery.config import resolve_config
from labelrefinery.protocol import load_run_dataset, with_label_noise, seed_data
from labelrefinery.device import set_threads
from labelrefinery.engine import FitHooks, TrainData, TrainSetup, fit
from labelrefinery.inference import predict, recalibrate_batchnorm, top1_accuracy
from labelrefinery.models import ConvNet
from labelrefinery.targets import StoredTargets
set_threads(0)
seed = int(sys.argv[1]) if len(sys.argv) > 1 else 0
spec = sys.argv[2] if len(sys.argv) > 2 else "symmetric:0.4"
cfg = resolve_config("quick", {"train_size": 12000, "epochs": 8, "label_noise": spec, "dataset": "fashion-mnist"})
ds = load_run_dataset(cfg)
ds, noise = with_label_noise(ds, spec)
cpu = torch.device("cpu")
pipe = Pipeline.create(cpu, ds.mean, ds.std, torch.bfloat16)
d = seed_data(ds, cfg, seed, cpu, noise)
given, clean = d.ground_truth, d.clean_labels
flip = given != clean
K = 10
def train(targets, key, epochs=8, snap=False):
    torch.manual_seed(seed * 100 + key)
    m = ConvNet(K, 1).to(memory_format=torch.channels_last)
    snaps = []
    def log(r):
        if snap:
            snaps.append(F.softmax(predict(m, d.images, pipe).float(), 1))
    c = resolve_config("quick", {"epochs": epochs, "train_size": 12000}).training
    fit(m, TrainData(d.images, StoredTargets(targets, num_classes=K), d.val_images, d.val_labels),
        TrainSetup(c, pipe, (seed, key)), FitHooks(log=log))
    recalibrate_batchnorm(m, d.images, pipe)
    test = top1_accuracy(predict(m, d.test_images, pipe), d.test_labels)
    p = F.softmax(predict(m, d.images, pipe).float(), 1)
    return m, test, p, snaps
def quality(name, q):
    a = q.argmax(1)
    corr = (a[flip] == clean[flip]).float().mean().item() * 100
    harm = (a[~flip] != given[~flip]).float().mean().item() * 100
    acc = (a == clean).float().mean().item() * 100
    ent = -(q.clamp_min(1e-12).log() * q).sum(1).mean().item()
    print(f"{name:28s} corrected {corr:5.1f} harmed {harm:5.1f} label acc {acc:5.1f} entropy {ent:.2f}", flush=True)
t = time.time()
import os
if os.path.exists(f"{CACHE}/r1_{seed}.pt") and spec == "symmetric:0.4":
    z = torch.load(f"{CACHE}/r1_{seed}.pt", weights_only=True); p1, snaps = z["p1"], list(z["snaps"]); test1 = json.load(open(f"{CACHE}/r1_{seed}.json"))["test1"]
else:
    m1, test1, p1, snaps = train(given, 1, snap=True)
print(f"R1 test {test1:.2f}  ({time.time()-t:.0f}s)", flush=True)
quality("given", F.one_hot(given, K).float())
for i, s in enumerate(snaps):
    quality(f"R1 epoch {i+1}", s)
rate = float(sys.argv[3]) if len(sys.argv) > 3 else 0.4
T = torch.full((K, K), rate / (K - 1)); T.fill_diagonal_(1 - rate)   # T[c, y] = P(given y | clean c)
def posterior(p):
    q = p * T[:, given].T  # p(c|x) * P(y|c)
    return q / q.sum(1, keepdim=True)
def denoise(p, r):
    p = (p - r / (K - 1)) / (1 - r - r / (K - 1))
    p = p.clamp_min(1e-4)
    return p / p.sum(1, keepdim=True)
def post_r(p, r):
    Tr = torch.full((K, K), r / (K - 1)); Tr.fill_diagonal_(1 - r)
    q = p * Tr[:, given].T
    return q / q.sum(1, keepdim=True)
temporal = torch.stack(snaps).mean(0)
temporal_late = torch.stack(snaps[2:]).mean(0)
cands = {"final": p1, "temporal": temporal, "temporal3-8": temporal_late,
         "post(final)": posterior(p1), "post(temporal)": posterior(temporal),
         "dn": denoise(p1, rate), "post(dn)": post_r(denoise(p1, rate), rate),
         "post(dn).3": post_r(denoise(p1, 0.3), 0.3), "post(dn).2": post_r(denoise(p1, 0.2), 0.2),
         "post(dn).5": post_r(denoise(p1, 0.5), 0.5)}
for k, v in cands.items():
    quality(k, v)
if spec == "symmetric:0.4":
  json.dump({"test1": test1}, open(f"{CACHE}/r1_{seed}.json", "w"))
  torch.save({"snaps": torch.stack(snaps), "p1": p1, "given": given, "clean": clean}, f"{CACHE}/r1_{seed}.pt")
todo = [t for t in (sys.argv[4].split(",") if len(sys.argv) > 4 else []) if t]
for item in todo:
    name, form = item.split(":")
    q = cands[name]
    tg = F.one_hot(q.argmax(1), K).float() if form == "hard" else q
    t = time.time()
    _, test2, p2, _ = train(tg, 2)
    print(f"R2 on {name} {form}: test {test2:.2f} (R1 {test1:.2f}, {time.time()-t:.0f}s)", flush=True)
    quality(f"  R2's labels", p2)
srt = p1.sort(1, descending=True).values
print("floor estimates of r: median of k-th prob x (K-1):", [round(srt[:, k].median().item() * (K - 1), 3) for k in range(1, K)])
print("mean of non-top probs x(K-1)/(K-1):", (1 - srt[:, 0]).mean().item())
chain = sys.argv[5] if len(sys.argv) > 5 else ""
if chain:
    r = float(chain)
    p = denoise(p1, r)
    for g in (2, 3, 4):
        q = post_r(p, r)
        quality(f"R{g} targets (r={r})", q)
        _, tg, p, _ = train(q, g)
        print(f"R{g} test {tg:.2f}", flush=True)
        quality(f"R{g} own labels", p)
