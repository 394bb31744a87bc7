#!/usr/bin/env bash
# The GPU checks and benchmarks, prepared for a machine that has CUDA, python3 and torch 2.11 but no
# cargo and no internet (the project's device machine). Here, first:
#
#     make device-bundle            # .device/: the abi3 wheel, cifar10-jpeg.tar.gz, build_cifar10.py,
#                                   # and the airbench package's wheel (recipe94's reference)
#
# then, on the GPU machine, from the repository root (carry .device; results go to $OUT):
#
#     bash benches/device_run.sh checks   # CUDA smoke checks, amp, world-size-1 NCCL overhead (~4 min)
#     bash benches/device_run.sh recipe   # the seed's recipe: fastcifar vs seed script vs expert loop
#     bash benches/device_run.sh recipe94 # airbench94 and airbench94_muon (fastcifar.recipes) vs the airbench package,
#                                         # SEEDS runs each (default 5), then the seed recipe for
#                                         # EPOCHS epochs (default 3) against SEED_EPOCHS (default 3)
#
# EPOCHS (default 50) and SEED_EPOCHS (default 3: the seed script is slow, its time per epoch is
# what is compared) size the recipe run to the device time available. recipe94 fits in 10 minutes
# of device time: each of its three airbench94 contenders stops after BUDGET94 seconds (default 120)
# and the seed recipe after SEED_BUDGET (default 120), keeping what ran by then. The airbench
# reference is the `airbench` package from the package index, never vendored: `make device-bundle`
# puts its wheel in .device/ (the GPU machine has no internet); without it that row says it was
# skipped. RECIPE94_ARGS passes more options to benches/gpu_recipe94.py, SEED_RECIPE_ARGS to
# benches/gpu_seed_recipe.py. CPU smoke test of the recipe94 phase (no install, the tree's build):
#     NO_INSTALL=1 DATA=data PYTHONPATH=python OUT=/tmp/r94 SEEDS=1 EPOCHS=1 SEED_EPOCHS=1 \
#     RECIPE94_ARGS="--device cpu --subset 256 --test-subset 256 --batch-size 128 --epochs 1" \
#     SEED_RECIPE_ARGS="--device cpu --subset 256" bash benches/device_run.sh recipe94
set -uo pipefail
OUT=${OUT:-$PWD/device-out}
mkdir -p "$OUT"
PHASE=${1:-checks}
# NO_INSTALL=1 uses the fastcifar already importable (a smoke test off the device); DATA may name a
# built data folder.
[ "${NO_INSTALL:-0}" = 1 ] || python3 -m pip install -q --no-deps --force-reinstall .device/fastcifar-*.whl || exit 1
DATA=${DATA:-/tmp/fastcifar-data}
if [ ! -d "$DATA/cifar-10-batches-bin" ] && [ ! -f "$DATA/.ready" ]; then
    python3 .device/build_cifar10.py "$DATA" >/dev/null && touch "$DATA/.ready" || exit 1
fi
export FASTCIFAR_DATA=$DATA
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader 2>&1 | tee "$OUT/gpu.txt"

if [ "$PHASE" = checks ]; then
    python3 - <<'EOF' 2>&1 | tee "$OUT/checks.txt"
import os, time, torch, fastcifar
from fastcifar import transforms as T
from fastcifar.data.loader import fast_path
assert torch.cuda.is_available()
root = os.environ["FASTCIFAR_DATA"]
MEAN, STD = (0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)
tf = T.Compose([T.RandomHorizontalFlip(), T.RandomCrop(32, padding=4), T.ToTensor(), T.Normalize(MEAN, STD)])
train = fastcifar.CIFAR10(root, train=True, transform=tf).subset(range(10000))
test = fastcifar.CIFAR10(root, train=False, transform=T.Compose([T.ToTensor(), T.Normalize(MEAN, STD)]))
# Logits parity on CUDA: fastcifar model against its plain PyTorch twin with the same weights.
m = fastcifar.models.ImageClassifier().cuda().eval()
ref = m.to_torch().cuda().eval()
x = torch.randn(64, 3, 32, 32, device="cuda")
print("cuda logits max abs diff vs plain PyTorch:", (m(x) - ref(x)).abs().max().item())
for amp in (False, True):
    torch.manual_seed(0)
    model = fastcifar.models.resnet9()
    tr = fastcifar.Trainer(model, fastcifar.optim.SGD(lr=0.05, momentum=0.9, nesterov=True, weight_decay=5e-4), device="cuda", amp=amp)
    dl = fastcifar.DataLoader(train, batch_size=256, shuffle=True, seed=0, device="cuda", pin_memory=True)
    t0 = time.perf_counter()
    h = tr.fit(dl, epochs=3, progress=False)
    rep = tr.evaluate(fastcifar.DataLoader(test, batch_size=1000, device="cuda"), progress=False)
    print(f"resnet9 amp={amp}: 3 epochs on 10k images in {time.perf_counter() - t0:.1f}s, "
          f"loss {[round(e['loss'], 3) for e in h.epochs]}, test acc {100 * rep.accuracy:.2f}%")
u8 = fastcifar.DataLoader(train, batch_size=512, dtype=torch.uint8, device="cuda", pin_memory=True, transform=tf)
xb, yb = next(iter(u8))
print("uint8 batch on", xb.device, xb.dtype, tuple(xb.shape))
# DataLoader(resident=True): the data set on the GPU, batches built there; they must equal the host pass's.
MEAN94, STD94 = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
tfa = T.Compose([T.AlternatingHorizontalFlip(), T.RandomCrop(32, padding=2, padding_mode="reflect"), T.ToTensor(),
                 T.Normalize(MEAN94, STD94)])
for name, t in (("seed", tf), ("airbench", tfa)):
    kw = dict(batch_size=512, shuffle=True, seed=1, transform=t, device="cuda")
    host, res = fastcifar.DataLoader(train, pin_memory=True, **kw), fastcifar.DataLoader(train, resident=True, **kw)
    same = all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(host, res))
    times = []
    for dl in (host, res):
        torch.cuda.synchronize(); t0 = time.perf_counter()
        for xb, yb in dl:
            pass
        torch.cuda.synchronize(); times.append(time.perf_counter() - t0)
    print(f"resident loader ({name} transform): batches equal the host pass's: {same}; epoch of 10k images "
          f"host {1000 * times[0]:.1f} ms, resident {1000 * times[1]:.1f} ms")
# The float32 optimizer path (the CUDA default) against torch.optim on the same batches; cuDNN's
# benchmark mode on during fit and the user's setting back after.
torch.manual_seed(0)
m = fastcifar.models.small_cnn(10, width=16)
from fastcifar.models import SmallCNN
ref = SmallCNN(10, width=16).cuda()
ref.load_state_dict(m.state_dict())
torch.backends.cudnn.benchmark = False
seen = []
tr = fastcifar.Trainer(m, fastcifar.optim.SGD(lr=0.05, momentum=0.9, nesterov=True, weight_decay=5e-4), device="cuda", log_every=1)
dl = fastcifar.DataLoader(train.subset(range(2048)), batch_size=256, shuffle=True, seed=0, device="cuda", resident=True)
tr.fit(dl, epochs=2, progress=False, callbacks=[lambda i: seen.append(torch.backends.cudnn.benchmark)])
opt = torch.optim.SGD(ref.parameters(), lr=0.05, momentum=0.9, nesterov=True, weight_decay=5e-4)
for e in range(2):
    for x, y in fast_path(dl).epoch(e):
        opt.zero_grad(); torch.nn.functional.cross_entropy(ref(x), y).backward(); opt.step()
diff = max((a - b).abs().max().item() for a, b in zip(m.state_dict().values(), ref.state_dict().values()) if a.is_floating_point())
print(f"float32 SGD on CUDA vs torch.optim after 16 steps: max abs weight diff {diff:.2e}; cudnn.benchmark during fit "
      f"{all(seen)}, after {torch.backends.cudnn.benchmark}")
EOF
    python3 benches/bench_distributed.py --data "$DATA" --device cuda --world-sizes 1 --repeat 3 --images 20000 2>&1 | tee "$OUT/distributed.txt"
elif [ "$PHASE" = recipe94 ]; then
    if [ "${NO_INSTALL:-0}" = 1 ]; then
        :
    elif ls .device/airbench-*.whl >/dev/null 2>&1; then
        python3 -m pip install -q --no-deps .device/airbench-*.whl
    else
        echo "no .device/airbench-*.whl: the airbench reference row will be skipped" | tee "$OUT/recipe94.txt"
    fi
    # shellcheck disable=SC2086
    python3 benches/gpu_recipe94.py --data "$DATA" --seeds "${SEEDS:-5}" --budget "${BUDGET94:-120}" \
        --json "$OUT/recipe94.json" ${RECIPE94_ARGS:-} 2>&1 | tee -a "$OUT/recipe94.txt"
    # shellcheck disable=SC2086
    timeout "${SEED_BUDGET:-120}" python3 benches/gpu_seed_recipe.py --data "$DATA" --epochs "${EPOCHS:-3}" \
        --timing-epochs "${SEED_EPOCHS:-3}" --json "$OUT/recipe.json" ${SEED_RECIPE_ARGS:-} 2>&1 | tee "$OUT/recipe.txt"
else
    python3 benches/gpu_seed_recipe.py --data "$DATA" --epochs "${EPOCHS:-50}" --timing-epochs "${SEED_EPOCHS:-3}" \
        --json "$OUT/recipe.json" 2>&1 | tee "$OUT/recipe.txt"
fi
