"""What pinning torch's CPU kernels costs, and what it buys (prints figures; asserts nothing).

    python benchmarks/bench_kernels.py

For three smoke-size models, on one thread as endpoints train: 50 timed SGD steps on a fixed batch
with the kernels vfcore pins (`vfcore.kernels.REFERENCE`, AVX2) and with the best this processor
offers (torch's own choice), each in a fresh interpreter. Prints train images/s, their ratio, and
whether the two runs end with the same weights (on an AVX-512 processor they do not: that is why
vfcore pins the kernels).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

from vfcore.kernels import REFERENCE

MODELS = (("vgg16_bn", 0.125), ("vgg16", 0.25), ("resnet20", 0.5))
STEP = """
import hashlib, json, sys, time
import torch
import vfcore
from vfcore.models import build_model
torch.set_num_threads(1)
out = {"kernels": torch.backends.cpu.get_cpu_capability()}
for name, width in json.loads(sys.argv[1]):
    torch.manual_seed(0)
    model = build_model(name, width=width, in_channels=1).to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(128, 1, 32, 32, generator=g).to(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (128,), generator=g)
    for step in range(53):
        if step == 3:
            start = time.perf_counter()
        loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    rate = 50 * 128 / (time.perf_counter() - start)
    digest = hashlib.sha256(b"".join(p.detach().numpy().tobytes() for p in model.parameters()))
    out[name] = [rate, digest.hexdigest()]
print(json.dumps(out))
"""


def native() -> dict[str, str]:
    """The variables that let torch choose the processor's best kernels."""
    probe = subprocess.run([sys.executable, "-c", "import torch; "
                            "print(torch.backends.cpu.get_cpu_capability())"],
                           capture_output=True, text=True, check=True,
                           env={k: v for k, v in os.environ.items() if k not in REFERENCE})
    return {"ATEN_CPU_CAPABILITY": probe.stdout.strip().lower(), "ONEDNN_MAX_CPU_ISA": "ALL",
            "MKL_CBWR": "AUTO"}


def run(kernels: dict[str, str]) -> dict:
    env = {**os.environ, **kernels, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-c", STEP, json.dumps(MODELS)], capture_output=True,
                          text=True, check=True, env=env)
    return json.loads(done.stdout)


def main() -> int:
    pinned, best = run(REFERENCE), run(native())
    print(f"kernels: pinned {pinned['kernels']}, processor's best {best['kernels']}")
    print(f"{'model':>10} {'width':>6} {'pinned img/s':>13} {'best img/s':>11} {'ratio':>6} "
          f"{'same weights':>13}")
    for name, width in MODELS:
        (a, ha), (b, hb) = pinned[name], best[name]
        print(f"{name:>10} {width:6g} {a:13.0f} {b:11.0f} {a / b:6.2f} {str(ha == hb):>13}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
