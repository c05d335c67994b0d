#!/bin/bash
# Value-neutrality check for refactors: six CLI training steps of each shipped method (the demo's
# CSSA, cap, d2l, supervised_ema overlays; seed 3, one thread), then one sha256 over every tensor
# of each final state dict. Run it before and after a change that must not change values and
# compare the lines (buffers added by the change can be left out with SKIP, a regex).
#
#   scripts/state_dict_hashes.sh /tmp/before            # on the old commit
#   scripts/state_dict_hashes.sh /tmp/after             # on the new one; diff the two outputs
#   SKIP='pseudo_labeller\.cursor$' scripts/state_dict_hashes.sh /tmp/after
out=${1:?usage: state_dict_hashes.sh OUTDIR}
mkdir -p "$out"
export HF_HUB_OFFLINE=1 WANDB_MODE=offline OMP_NUM_THREADS=1
for method in ${METHODS:-demo cap d2l supervised_ema}; do
  overlay=""
  [ "$method" != demo ] && overlay="--config $method"
  cssa fit --config demo $overlay --trainer.max_steps 6 --trainer.limit_val_batches 2 \
    --trainer.num_sanity_val_steps 0 --trainer.logger false --trainer.callbacks=[] \
    --trainer.default_root_dir "$out/$method" --seed_everything 3 > "$out/$method.log" 2>&1 \
    || { echo "$method failed: see $out/$method.log"; continue; }
  python - "$out/$method" "${SKIP:-^$}" <<'PY'
import glob, hashlib, re, sys

import torch

checkpoint = sorted(glob.glob(sys.argv[1] + "/**/*.ckpt", recursive=True))[-1]
state = torch.load(checkpoint, map_location="cpu", weights_only=True)["state_dict"]
digest = hashlib.sha256()
for key in sorted(state):
    if re.search(sys.argv[2], key):
        continue
    digest.update(key.encode())
    digest.update(state[key].cpu().numpy().tobytes())
print(sys.argv[1], digest.hexdigest()[:16])
PY
done
