"""Class predictions of a trained run for a folder of user images (`realmix predict`).

    res = predict_folder("runs/realmix/digits_aug10.1@30-100/model.pt", "my_photos", "out")
    print(res.summary())   # predicted 120 images (2 skipped) -> out/predictions.csv; accuracy 93.3 % on 120 labelled

Every non-hidden PNG/JPEG under the folder (recursively, sorted by relative path) is decoded and resized to the
model's input like the training data, `CHUNK` images at a time so memory stays bounded. Writes to `out_dir`
(never inside the image folder, whose files are only read): `predictions.npy` (N x K float32 probabilities),
`predictions.csv` (`path,predicted,confidence,true`, then one column per out-of-class score the model offers --
`msp`, `energy`, `open` (realmix/openset.py) -- and `out_of_class`, same row order) and, when files were skipped,
`skipped.csv` (`path,reason`). All outputs are renamed into place together at the end, so an error leaves none.

The out_of_class flag uses the cut the run's `evaluate` chose on its validation images (the run's
eval/evaluation.json, realmix/report.py); without it the column stays empty and the summary says how to get one.

True classes, for an accuracy: an image's first folder under the image folder when that is one of the model's
classes (`c1/x.png`), else its parent folder (the seed's `test/c1/x.png`), else the seed's `{n}_{class}` file
name (`7_c1.png`); nothing under `unlabeled/`.
"""

from __future__ import annotations

import contextlib
import csv
import json
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from . import atomic
from .errors import RealmixError
from .hardware import pick_device
from .images import IMAGE_SUFFIXES, UNLABELED_DIRS, class_from_name, fit, is_hidden, open_image, to_rgb
from .inference import WEIGHTS, has_open_heads, load_model, predict_outputs
from .openset import SCORES, Reference, outlier_scores

ON_ERROR = ("fail", "skip")
RESIZE = ("pad", "stretch", "crop")
DEVICES = ("auto", "cpu", "cuda")
FLAG_SCORES = ("report", *SCORES)  # what `score` may name: the run's report's choice, or a score itself
CHUNK = 4096  # images decoded and predicted at a time (bounds memory on large folders)
_SKIP_HINT = "(or use --on-error skip)"


@dataclass
class PredictResult:
    """What `predict_folder` did; `summary()` is the line(s) to show the user."""

    images: int  # images predicted (rows of the outputs)
    skipped: list[tuple[Path, str]]  # unreadable / non-image files (folder / relative path) and why
    accuracy: float | None  # percent correct over the `labelled` images; None when none has a true class
    labelled: int  # predicted images with a true class the model knows
    npy: Path
    csv: Path
    skipped_csv: Path | None = None  # written only when something was skipped
    unknown_classes: dict[str, int] = field(default_factory=dict)  # class-like name -> images left unscored
    model_classes: list[str] = field(default_factory=list)
    flagged: int | None = None  # images flagged out-of-class; None without a cut
    cut: str = ""  # where the out-of-class flag came from, or why there is none

    def summary(self) -> str:
        line = f"predicted {_n(self.images, 'image')}"
        if self.skipped:
            line += f" ({len(self.skipped)} skipped, see {self.skipped_csv})"
        line += f" -> {self.csv}; "
        if self.accuracy is None:
            line += "no true classes known, so no accuracy (use class folders or {n}_{class} file names)"
        else:
            line += f"accuracy {self.accuracy:.1f} % on {self.labelled} labelled"
        if self.cut:
            line += (f"\nout-of-class: {self.cut}" if self.flagged is None else
                     f"\nout-of-class: {self.flagged} of {self.images} flagged ({self.cut})")
        if not self.unknown_classes:
            return line
        names = sorted(self.unknown_classes)
        shown = ", ".join(f"{c} ({self.unknown_classes[c]})" for c in names[:10]) + (", ..." if len(names) > 10
                                                                                     else "")
        n = sum(self.unknown_classes.values())
        return (f"{line}\nnot scored: {_n(n, 'image')} whose folder/name class the model does not know: {shown}; "
                f"model classes: {', '.join(self.model_classes)}")


def _n(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def predict_folder(model_path: str | os.PathLike, folder: str | os.PathLike, out_dir: str | os.PathLike, *,
                   weights: str = "ema", batch: int = 256, device: str = "auto", on_error: str = "fail",
                   resize: str = "pad", progress: bool = True, score: str = "report") -> PredictResult:
    """Predict every PNG/JPEG under `folder` with the run's `model_path`; write the outputs into `out_dir`.

    on_error: `fail` stops at the first non-image or unreadable file (one-line RealmixError naming it);
    `skip` leaves such files out and lists them. resize: how non-square images are fitted (images.fit).
    score: the out-of-class score behind the flag: `report` (the one the run's report used) or one of `SCORES`.
    """
    for name, value, allowed in (("weights", weights, tuple(WEIGHTS)), ("on_error", on_error, ON_ERROR),
                                 ("resize", resize, RESIZE), ("device", device, DEVICES),
                                 ("score", score, FLAG_SCORES)):
        if value not in allowed:
            raise RealmixError(f"unknown {name} {value!r}; choose one of: {', '.join(allowed)}")
    if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
        raise RealmixError(f"batch must be a positive integer, got {batch!r}")
    folder, out_dir = Path(folder), Path(out_dir)
    _check_folders(folder, out_dir)
    if device == "cuda" and not torch.cuda.is_available():
        raise RealmixError("device cuda requested but no CUDA GPU is visible; use device auto or cpu")
    dev = pick_device(device)
    model, record = load_model(model_path, weights, dev)
    amp = record.autocast_dtype  # the run's own precision, as `evaluate`: the same label for the same image
    # the distance scores' reference (the EMA model's features of the run's labelled images, and their classes);
    # an older model.pt has none (kNN only, before the classes were recorded)
    bank = Reference.of_record(record) if weights == "ema" else None
    if score in ("knn", "maha") and (bank is None or (score == "maha" and bank.labels is None)):
        raise RealmixError(f"{model_path}: --score {score} needs the labelled images' features and classes, which "
                           "this model.pt does not hold (made by an earlier version, or --weights raw); retrain the "
                           "run (`dvc repro`) or use another --score")
    cut_score, cut, cut_note = _cut(Path(model_path), score, has_open_heads(model), weights)
    class_names: list[str] = list(record.class_names)
    h, w, c = record.image_shape
    if h != w or c not in (1, 3):
        raise RealmixError(f"{model_path}: input shape {h}x{w}x{c} is not supported by predict "
                           "(square RGB or grayscale only)")

    skipped: list[tuple[Path, str]] = []
    candidates: list[Path] = []
    for rel in _walk(folder):
        path = folder / rel
        if rel.suffix.lower() not in IMAGE_SUFFIXES:
            reason = f"not a PNG/JPEG image (only {', '.join(IMAGE_SUFFIXES)} are read)"
        elif not path.is_file():  # a FIFO or device named .png would block or mislead the decoder
            reason = "not a regular file"
        else:
            candidates.append(rel)
            continue
        if on_error == "fail":
            raise RealmixError(f"{path}: {reason}; move or delete it {_SKIP_HINT}")
        skipped.append((path, reason))
    if not candidates:
        if skipped:
            raise RealmixError(f"{folder}: nothing to predict: all {len(skipped)} files were skipped "
                               f"(first: {skipped[0][0]}: {skipped[0][1]})")
        raise RealmixError(f"{folder}: no PNG/JPEG images found (looked for {', '.join(IMAGE_SUFFIXES)} "
                           "in it and its subfolders; hidden files are ignored)")

    kept: list[Path] = []
    parts: list[np.ndarray] = []
    pool = ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1))  # PIL releases the GIL while decoding
    bars = dict(total=len(candidates), unit="img", disable=not progress)
    try:
        with tqdm(desc="loading", **bars) as load_bar, tqdm(desc="predicting", **bars) as pred_bar:
            for start in range(0, len(candidates), CHUNK):
                chunk = candidates[start:start + CHUNK]
                arrays = []
                for rel, res in zip(chunk, pool.map(lambda r: _try_decode(folder / r, h, c, resize), chunk),
                                    strict=True):
                    load_bar.update(1)
                    if isinstance(res, RealmixError):
                        if on_error == "fail":
                            raise RealmixError(f"{res} {_SKIP_HINT}") from res
                        skipped.append((folder / rel, _reason(res, folder / rel)))
                        pred_bar.total -= 1
                        pred_bar.refresh()
                        continue
                    arrays.append(res)
                    kept.append(rel)
                if arrays:
                    parts.append(predict_outputs(model, np.stack(arrays), batch=batch, device=dev,
                                                 autocast_dtype=amp, progress=pred_bar.update, open_head=True,
                                                 features=bank is not None))
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
    if not kept:
        raise RealmixError(f"{folder}: nothing to predict: all {len(skipped)} files were skipped "
                           f"(first: {skipped[0][0]}: {skipped[0][1]})")

    probs = np.concatenate([o.probs for o in parts]).astype(np.float32, copy=False)
    part_scores = [outlier_scores(o, bank) for o in parts]
    scores = {k: np.concatenate([s[k] for s in part_scores]) for k in part_scores[0]}
    flags = None if cut is None else scores[cut_score] > cut
    pred = probs.argmax(1)
    truths: list[str | None] = []
    unknown: dict[str, int] = {}
    for rel in kept:
        true, odd = _true_class(rel, class_names)
        truths.append(true)
        if odd is not None:
            unknown[odd] = unknown.get(odd, 0) + 1
    known = np.array([t is not None for t in truths])
    index = {name: i for i, name in enumerate(class_names)}
    labels = np.array([index[t] if t is not None else -1 for t in truths])
    labelled = int(known.sum())
    accuracy = float((pred[known] == labels[known]).mean() * 100) if labelled else None

    skipped.sort(key=lambda s: s[0].relative_to(folder).parts)
    result = PredictResult(images=len(kept), skipped=skipped, accuracy=accuracy, labelled=labelled,
                           npy=out_dir / "predictions.npy", csv=out_dir / "predictions.csv",
                           skipped_csv=out_dir / "skipped.csv" if skipped else None, unknown_classes=unknown,
                           model_classes=class_names, flagged=None if flags is None else int(flags.sum()),
                           cut=cut_note)
    _write(result, folder, kept, probs, truths, class_names, scores, flags)
    return result


def _cut(model_path: Path, score: str, heads: bool, weights: str) -> tuple[str, float | None, str]:
    """(score, cut, note): the out-of-class cut the run's evaluate chose on its validation images, read from the
    run's eval/evaluation.json next to model.pt; cut None (and the note says why) where there is none."""
    if score == "open" and not heads:
        raise RealmixError(f"{model_path}: --score open needs an open-set head, which this run's network does not "
                           f"have (only iomatch has one); use {' or '.join(s for s in SCORES if s != 'open')}")
    path = model_path.parent / "eval" / "evaluation.json"
    how = "run `dvc repro` (its evaluate stage) for this run to choose one on its validation images"
    if weights != "ema":
        return score, None, "no cut for --weights raw (the report's cut is for the EMA weights)"
    try:
        report = json.loads(path.read_text())["out_of_class"]
    except (OSError, ValueError, KeyError, TypeError):
        return score, None, f"no cut: {path} has no out-of-class report; {how}"
    chosen = report["score"] if score == "report" else score
    if not report.get("cuts") or chosen not in report["cuts"]:
        return chosen, None, f"no cut for {chosen} in {path} (its split has no validation images)"
    keep = report["keep"]
    return chosen, float(report["cuts"][chosen]), (
        f"{chosen} above {report['cuts'][chosen]:.6g}, the cut that keeps {keep:.0%} of the run's "
        f"{report['validation_images']} validation images; from {path}")


def _check_folders(folder: Path, out_dir: Path) -> None:
    if not folder.exists():
        raise RealmixError(f"{folder}: image folder not found")
    if not folder.is_dir():
        raise RealmixError(f"{folder}: is a file, not a folder; give the folder that holds the images")
    if out_dir.resolve().is_relative_to(folder.resolve()):
        raise RealmixError(f"{out_dir}: output folder is inside the image folder {folder}; choose one outside it "
                           "so the predictions are not mixed into your images")
    if out_dir.exists() and not out_dir.is_dir():
        raise RealmixError(f"{out_dir}: exists and is not a folder; choose another output folder")


def _walk(folder: Path) -> list[Path]:
    """Every non-hidden file under `folder` (not in hidden folders), relative, sorted by path components."""
    def fail(e: OSError) -> None:
        raise RealmixError(f"{e.filename}: cannot list this folder ({e.strerror}); check its permissions") from e

    found = []
    for dirpath, dirnames, filenames in os.walk(folder, onerror=fail):
        dirnames[:] = [d for d in dirnames if not is_hidden(d)]
        base = Path(dirpath).relative_to(folder)
        found += [base / f for f in filenames if not is_hidden(f)]
    return sorted(found, key=lambda p: p.parts)


def _decode(path: Path, size: int, channels: int, resize: str) -> np.ndarray:
    """One file as the model's size x size x channels uint8 input, prepared as the training data was."""
    im = fit(to_rgb(open_image(path)), size, resize)
    if channels == 1:
        return np.asarray(im.convert("L"), dtype=np.uint8)[..., None]
    return np.asarray(im, dtype=np.uint8)


def _try_decode(path: Path, size: int, channels: int, resize: str) -> np.ndarray | RealmixError:
    """`_decode`, with its user-facing error returned (the caller decides to raise or skip)."""
    try:
        return _decode(path, size, channels, resize)
    except RealmixError as e:
        return e
    except (OSError, ValueError) as e:  # a conversion/resample failure after a successful decode
        return RealmixError(f"{path}: not a readable PNG/JPEG image ({e}); replace or remove it")


def _reason(err: RealmixError, path: Path) -> str:
    """The error's message without the file's path (it has its own column; PIL quotes it in some messages)."""
    return str(err).removeprefix(f"{path}: ").replace(f" {str(path)!r}", "")


def _true_class(rel: Path, class_names: list[str]) -> tuple[str | None, str | None]:
    """(true class or None, a class-like name the model does not know, if that is why there is none)."""
    dirs = rel.parts[:-1]
    if any(d.lower() in UNLABELED_DIRS for d in dirs):
        return None, None
    if dirs and dirs[0] in class_names:
        return dirs[0], None
    if dirs and dirs[-1] in class_names:  # e.g. the seed's train/<class>/ and test/<class>/ layout
        return dirs[-1], None
    named = class_from_name(rel)
    if named in class_names:
        return named, None
    return None, dirs[0] if dirs else named


def _write(res: PredictResult, folder: Path, kept: list[Path], probs: np.ndarray, truths: list[str | None],
           class_names: list[str], scores: dict[str, np.ndarray], flags: np.ndarray | None) -> None:
    """Write all outputs to temporaries, then rename them into place (an error leaves none of them)."""
    created = not res.npy.parent.exists()
    try:
        with contextlib.ExitStack() as stack:
            tmp_npy = stack.enter_context(atomic.atomic_path(res.npy))
            tmp_csv = stack.enter_context(atomic.atomic_path(res.csv))
            with open(tmp_npy, "wb") as f:  # a file object: np.save would append .npy to the temporary's name
                np.save(f, probs)
            with open(tmp_csv, "w", newline="", encoding="utf-8") as f:
                w = csv.writer(f, lineterminator="\n")
                w.writerow(["path", "predicted", "confidence", "true", *scores, "out_of_class"])
                for i, (rel, p, t) in enumerate(zip(kept, probs, truths, strict=True)):
                    k = int(p.argmax())
                    w.writerow([rel.as_posix(), class_names[k], f"{p[k]:.6f}", t or "",
                                *(f"{s[i]:.6f}" for s in scores.values()), "" if flags is None else int(flags[i])])
            if res.skipped_csv is not None:
                tmp_skip = stack.enter_context(atomic.atomic_path(res.skipped_csv))
                with open(tmp_skip, "w", newline="", encoding="utf-8") as f:
                    w = csv.writer(f, lineterminator="\n")
                    w.writerow(["path", "reason"])
                    w.writerows((p.relative_to(folder).as_posix(), r) for p, r in res.skipped)
    except BaseException:
        if created:
            with contextlib.suppress(OSError):
                res.npy.parent.rmdir()
        raise
    if res.skipped_csv is None:  # a previous run's list would be read as this run's
        (res.npy.parent / "skipped.csv").unlink(missing_ok=True)
