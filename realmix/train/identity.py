"""A run's identity: what decides what it computes, its fingerprint, and whether its checkpoints continue it
(and, when not, why it starts over)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import sys
from pathlib import Path
from typing import Any

import torch

from .. import checkpoint as ckpt
from ..params import Params

# train params that do not change what is computed: a run may resume across changes of these
# (how a run is computed -- memory layout, compiled or fused kernels, pinned copies, process count -- is not
# what is computed: a run resumes across changes of these, e.g. onto more GPUs)
NOT_IN_FINGERPRINT = ("algorithms", "aug_algorithms", "mismatch_algorithms", "mismatch_aug_algorithms",
                      "save_kimg", "keep_ckpt", "eval_batch", "device", "threads", "progress",
                      "channels_last", "compile", "fused_adam", "pin_memory", "nproc")


class RunIdentity:
    """Everything that decides what a run computes (`identity`; its hash is the `fingerprint`): the algorithm
    and its section, the top-level params it `reads`, the network, train params, split seed and data.
    train_kimg is in it only where the step depends on the run's length (`length_dependence`, said for the
    user): elsewhere a longer run is the same run continued (train longer)."""

    def __init__(self, p: Params, algorithm: str, split_seed: int, *, arch: dict[str, Any], data_id: Any,
                 reads: tuple[str, ...], autocast_dtype: torch.dtype | None, length_dependence: list[str]):
        self.algorithm, self.length_dependence, self.train_kimg = algorithm, length_dependence, p.train.train_kimg
        skip = NOT_IN_FINGERPRINT + (() if length_dependence else ("train_kimg",))
        train = {k: v for k, v in dataclasses.asdict(p.train).items() if k not in skip}
        ident = {
            "algorithm": algorithm, "algorithm_params": dataclasses.asdict(p.algorithm(algorithm)),
            "model": arch, "train": train, "split_seed": split_seed,
            "data": data_id,  # a virtual and a materialized pool of one recipe: the same data
        }
        ident.update({key: getattr(p, key) for key in reads})  # the top-level params the algorithm reads
        ident["train"]["precision"] = str(autocast_dtype or torch.float32)  # what `auto` resolved to here
        self.identity = ident
        self.fingerprint = hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:16]

    def why_not_resumable(self, state: dict[str, Any]) -> str:
        """Which params (or data) differ from a checkpoint's run, said for the user."""
        saved = state.get("identity")
        if not isinstance(saved, dict):
            return "made by an earlier realmix version, which recorded no identity"

        def flat(d: Any, prefix: str = "") -> dict[str, Any]:
            if not isinstance(d, dict):
                return {prefix: d}
            return {k: v for key, value in d.items() for k, v in flat(value, f"{prefix}{key}.").items()}

        a, b = flat(saved), flat(self.identity)
        shown = {"data": "the split's data", "split_seed": "the split seed"}
        changed = [shown.get(k, k.replace("algorithm_params.", f"{self.algorithm}."))
                   for k in (key.rstrip(".") for key in sorted(set(a) | set(b)) if a.get(key) != b.get(key))]
        if changed == ["train.train_kimg"] and self.length_dependence:
            return f"train.train_kimg changed and {' and '.join(self.length_dependence)}, so it cannot be continued"
        if "train.train_kimg" in changed and self.length_dependence:
            changed.append(f"({' and '.join(self.length_dependence)} depends on train_kimg)")
        return "changed: " + ", ".join(changed) if changed else "other params or data"

    def resume_state(self, ckdir: ckpt.CheckpointDir, out_dir: Path, *, total: int, batch: int
                     ) -> tuple[str, dict[str, Any]] | None:
        """The latest checkpoint made with this fingerprint and not past this run's end, or None (then the
        others are discarded, and the user told why)."""
        found = ckdir.latest()
        if found is None:
            return None
        path, state = found
        end = -(-total // batch) * batch  # the loop stops at the first batch that reaches total
        if state.get("fingerprint") == self.fingerprint and state["images"] <= end:
            longer = state.get("total", total) < total
            print(f"resuming {out_dir} from {path.name} ({state['images']} images, saved by "
                  f"{state.get('world_size', 1)} process(es))"
                  + (f"; training longer, to {total} images" if longer else ""), file=sys.stderr)
            return str(path), state
        if state.get("fingerprint") == self.fingerprint:
            why = (f"they are at {state['images']} images, past train.train_kimg={self.train_kimg} "
                   "(a run cannot be shortened)")
        else:
            why = self.why_not_resumable(state)
        print(f"{out_dir}: checkpoints are from other params or data ({why}); starting from scratch",
              file=sys.stderr)
        ckdir.clear()
        return None
