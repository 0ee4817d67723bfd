"""Map entries at 1 M - 10 M scale whose codes and floats are structured like the built-in model's.

Uniformly random codes put every entry ~256 bits from every other one, so
they have no clusters and no near neighbours: approximate (IVF) indexes and
early-exit scans look uniformly bad on them and the measurements mean
nothing. This module makes entries the way the built-in model makes them,
from a Gaussian fitted to the model's own internal features on real images.

How the codes are made. The built-in model (``nordland_demo``: SelaVPR++
with a float and a hash branch) ends each branch in a GeM head: 192-d GeM-
pooled features ``g_hash`` and ``g_float``, then a linear layer to 512 outputs
(``proj_out``). The code is the sign of the hash branch's 512 outputs (bit =
output >= 0, packed most significant bit first, as ``pack_codes`` does); the
float descriptor is the L2-normalised output of the float branch. Generated
entries are made the same way, from sampled GeM features:

* Fit (:func:`fit`, once per model; cached in
  ``benchmarks/results/scale_codes_fit.npz`` under the model id and the
  checkpoint's SHA-256). Real Nordland 64x32 frames (``shared/data/nordland64``:
  summer and winter, 3576 frames each; the package's ``nordland_demo`` frames
  are a subset and the fallback when it is absent) are split by position on
  the route: blocks of 25 consecutive frames, every 7th block (both seasons)
  held out for :func:`realism`, the rest used for fitting. A *place* is one
  frame image (one season). ``n_images // 4`` fitting places are drawn, each
  seen in 4 mildly augmented views (one bilinear affine warp: scale crop to
  95-100 %, shift up to 2 % of the size, rotation up to 1 degree; brightness
  and contrast up to 10 %, per-channel colour gain up to 4 %), the model is
  run on them and its GeM features ``g = [g_hash, g_float]`` (384-d) are
  recorded by forward hooks (re-applying ``proj_out`` to them reproduces the
  model's codes exactly). A two-level Gaussian is fitted to ``g``: mean
  ``mu``, within-place covariance ``S_w`` (the views about their place mean:
  the "view noise") and between-place covariance ``S_b`` (covariance of the
  place means less ``S_w / 4``, clipped to be positive semi-definite); both
  are pushed through the model's own ``proj_out`` weights ``W`` and biases
  ``b``. Views and places differ in how far views stray: each view's noise
  is scaled by ``s_place * s_view``, both log-normal with ``E[s^2] = 1``;
  the ratio of their log-variances comes from the residual powers of the
  fitting views, and an overall noise gain and the spread of the scales are
  fitted (least squares on the 5/10/25/50/75/90/95th percentiles, on a
  grid) to the same-place Hamming distances of the fitting views.
* Generate (:func:`generate`). Place ``p`` has centre
  ``c_p = W mu + b + A_b e_p`` (``A_b A_b^T = W S_b W^T``, full rank) and
  scale ``s_p``; entry ``i`` is view ``i % views`` of place ``i // views``:
  ``c_p + s_p s_i gain A_w e_i``, with ``A_w`` the top ``rank`` (default 96)
  principal components of the view noise ``W S_w W^T``, each output
  coordinate rescaled to keep its full variance (every bit keeps its flip
  probability; only the correlations between flips are approximated).
  ``e``, ``s`` from standard normals. Code = packed ``hash outputs >= 0``,
  float = the L2-normalised float outputs, stored as float16. The normals
  come from NumPy generators seeded by (seed, kind, block): places by blocks
  of 1000, view noise by blocks of 10 000 entries, so a range of entries
  comes out the same however it is split into chunks (bit for bit on one
  machine; another BLAS may flip an output that lies within rounding of 0).
* Queries (:func:`queries`): new views (noise from a seed of their own) of
  places drawn uniformly among those with an entry in the map.
* Realism (:func:`realism`): generated codes against the real codes of the
  held-out places (4 augmented views each, never used in fitting) and
  against uniformly random codes.

What it does not model: places are independent draws, so the route's
sequence structure (neighbouring frames alike, runs of near-identical frames
where the train stood still, the same place in another season) and clusters
of look-alike places (tunnels) are absent; a place's views vary as mild
augmentations do, not as seasons do.

    python benchmarks/_scale_codes.py            # fit (cached), time 1 M, realism, a findability check
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
CACHE = RESULTS / "scale_codes_fit.npz"
DATA = ROOT.parent / "shared" / "data" / "nordland64"
FORMAT = 4  # bump when the fit's recipe changes: older caches are refitted

BITS = 512
CODE_BYTES = BITS // 8
FLOAT_DIM = 512
FIT_VIEWS = 4  # augmented views per frame image in the fit (and in the held-out set)
HOLDOUT_BLOCK, HOLDOUT_EVERY, HOLDOUT_PHASE = 25, 7, 3  # frames // 25 % 7 == 3 are held out
PLACE_BLOCK = 1_000  # centres are drawn by blocks of this many places
ENTRY_BLOCK = 10_000  # view noise is drawn by blocks of this many entries
DEFAULT_RANK = 96
AUGMENT = {"scale": 0.05, "shift": 0.02, "rotate_deg": 1.0, "brightness": 0.10, "contrast": 0.10, "colour": 0.04}
_KIND_CENTRE, _KIND_VIEW, _KIND_QUERY, _KIND_FIT = 1, 2, 3, 4


# -- real images --------------------------------------------------------------------------------
def augment(image: np.ndarray, rng: np.random.Generator, params: dict[str, float] = AUGMENT) -> np.ndarray:
    """One mild random view of an (H, W, 3) uint8 frame: scale/shift/rotation (one bilinear affine
    warp, borders filled with the mean colour), brightness, contrast and per-channel colour gain."""
    from PIL import Image

    h, w = image.shape[:2]
    s = 1.0 - params["scale"] * rng.random()
    theta = math.radians(params["rotate_deg"] * (2 * rng.random() - 1))
    tx = params["shift"] * w * (2 * rng.random() - 1)
    ty = params["shift"] * h * (2 * rng.random() - 1)
    a, b, d, e = s * math.cos(theta), -s * math.sin(theta), s * math.sin(theta), s * math.cos(theta)
    cx, cy = w / 2, h / 2
    c, f = cx + tx - a * cx - b * cy, cy + ty - d * cx - e * cy
    fill = tuple(int(v) for v in image.reshape(-1, 3).mean(0))
    warped = Image.fromarray(image).transform(
        (w, h), Image.Transform.AFFINE, (a, b, c, d, e, f), resample=Image.Resampling.BILINEAR, fillcolor=fill
    )
    x = np.asarray(warped, np.float32)
    mean = x.mean()
    x = (x - mean) * (1 + params["contrast"] * (2 * rng.random() - 1)) + mean
    x = x + params["brightness"] * 255 * (2 * rng.random() - 1)
    x = x * (1 + params["colour"] * (2 * rng.random(3) - 1))
    return np.clip(np.rint(x), 0, 255).astype(np.uint8)


def _frames(data: Path | None) -> tuple[list[Path], np.ndarray, str]:
    """Frame images of every season folder, their frame index along the route, and a source label."""
    root = Path(data) if data is not None else DATA
    if not root.is_dir():
        root = ROOT / "selavpr_ros" / "data" / "nordland_demo"
    paths: list[Path] = []
    index: list[int] = []
    for season in sorted(p for p in root.iterdir() if p.is_dir()):
        files = sorted(season.glob("*.png"))
        paths += files
        index += [int(p.stem.split("-")[-1]) // 10 for p in files]  # images-NNNNN: every 10th video frame
    if not paths:
        raise FileNotFoundError(f"no frames under {root}")
    return paths, np.asarray(index), f"{root.name} ({len(paths)} frames)"


def _held_out(index: np.ndarray) -> np.ndarray:
    return (index // HOLDOUT_BLOCK) % HOLDOUT_EVERY == HOLDOUT_PHASE


def _load(path: Path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


def _extract_gem(extractor: Any, images: list[np.ndarray], batch: int = 64) -> dict[str, np.ndarray]:
    """Run the model; return its GeM features (hooked), codes and descriptors."""
    from selavpr_ros.inference.preprocess import preprocess_batch

    model = extractor.model
    seen: dict[str, np.ndarray] = {}
    hooks = [
        model.hash_head.gem.register_forward_hook(lambda m, i, o: seen.__setitem__("h", o.float().numpy())),
        model.float_head.gem.register_forward_hook(lambda m, i, o: seen.__setitem__("f", o.float().numpy())),
    ]
    parts: dict[str, list[np.ndarray]] = {"g": [], "codes": [], "floats": []}
    try:
        for s in range(0, len(images), batch):
            d = extractor.run(preprocess_batch(images[s : s + batch], extractor.preprocess))
            parts["g"].append(np.concatenate([seen["h"], seen["f"]], axis=1))
            parts["codes"].append(d.codes)
            parts["floats"].append(d.descriptors)
    finally:
        for h in hooks:
            h.remove()
    return {k: np.concatenate(v) for k, v in parts.items()}


def _heads(model: Any) -> tuple[np.ndarray, np.ndarray]:
    """The model's output layers as one block-diagonal map: ``outputs = g @ W.T + b`` (1024 x 384)."""
    wh = model.hash_head.proj_out.weight.detach().double().numpy()
    wf = model.float_head.proj_out.weight.detach().double().numpy()
    w = np.zeros((wh.shape[0] + wf.shape[0], wh.shape[1] + wf.shape[1]))
    w[: wh.shape[0], : wh.shape[1]] = wh
    w[wh.shape[0] :, wh.shape[1] :] = wf
    b = np.concatenate([model.hash_head.proj_out.bias.detach().double().numpy(),
                        model.float_head.proj_out.bias.detach().double().numpy()])
    return w, b


def _psd_factor(cov: np.ndarray, tol: float = 1e-12) -> tuple[np.ndarray, np.ndarray]:
    """Eigenvectors (columns) and eigenvalues of a symmetric matrix, largest first, negatives dropped."""
    vals, vecs = np.linalg.eigh((cov + cov.T) / 2)
    order = np.argsort(vals)[::-1]
    vals, vecs = vals[order], vecs[:, order]
    keep = vals > tol * max(vals[0], tol)
    return vecs[:, keep], vals[keep]


# -- fit ----------------------------------------------------------------------------------------
def _model_id(ckpt: Path) -> str:
    from selavpr_ros.models.checkpoint import read_checkpoint

    return read_checkpoint(ckpt).model_id


def fit(n_images: int = 20_000, seed: int = 0, data: Path | None = None, cache: Path | None = CACHE,
        checkpoint: str | None = None, log: bool = True) -> dict[str, Any]:
    """The fitted generator: from ``cache`` when it matches the model and arguments, else fitted now
    (~2.5 min for 20 000 images on 2 cores) and cached. See the module docstring for the recipe."""
    from selavpr_ros.inference.loader import open_extractor
    from selavpr_ros.models.zoo import resolve_checkpoint

    ckpt = resolve_checkpoint(checkpoint)
    paths, index, source = _frames(data)
    key = {"format": FORMAT, "n_images": n_images, "seed": seed, "source": source, "augment": AUGMENT,
           "fit_views": FIT_VIEWS}
    digest = hashlib.sha256(Path(ckpt).read_bytes()).hexdigest()
    if cache is not None and Path(cache).is_file():
        with np.load(cache) as z:
            loaded = {k: z[k] for k in z.files}
        meta = json.loads(str(loaded["meta"]))
        if meta["key"] == key and (meta.get("checkpoint_sha256") == digest or meta["model_id"] == _model_id(ckpt)):
            loaded["meta"] = meta
            return loaded
    t0 = time.perf_counter()
    extractor = open_extractor(ckpt, device="cpu")
    if not (hasattr(extractor, "model") and hasattr(extractor.model, "hash_head")):
        raise TypeError("fit needs a PyTorch SelaVPR++ model with a hash head (the built-in model is one)")
    held = _held_out(index)
    fit_ids = np.flatnonzero(~held)
    rng = np.random.default_rng([seed, _KIND_FIT])
    n_frames = min(len(fit_ids), max(2, n_images // FIT_VIEWS))
    chosen = np.sort(rng.choice(fit_ids, n_frames, replace=False))

    def views_of(ids: np.ndarray, salt: int) -> list[np.ndarray]:
        out = []
        for i in ids:
            frame = _load(paths[i])
            r = np.random.default_rng([seed, _KIND_FIT, salt, int(i)])
            out += [augment(frame, r) for _ in range(FIT_VIEWS)]
        return out

    fitted = _extract_gem(extractor, views_of(chosen, 0))
    real = _extract_gem(extractor, views_of(np.flatnonzero(held), 1))
    t_extract = time.perf_counter() - t0

    w, b = _heads(extractor.model)
    recon = fitted["g"][:, : w.shape[1] // 2] @ w[:BITS, : w.shape[1] // 2].T + b[:BITS]
    mismatch = int((np.packbits(recon >= 0, axis=1) != fitted["codes"]).sum())  # bits within rounding of 0

    g = fitted["g"].astype(np.float64).reshape(n_frames, FIT_VIEWS, -1)
    means = g.mean(axis=1)
    resid = (g - means[:, None]).reshape(-1, g.shape[-1])
    s_w = resid.T @ resid / (n_frames * (FIT_VIEWS - 1))
    s_b = np.cov(means, rowvar=False) - s_w / FIT_VIEWS
    mu = means.mean(axis=0)

    # Push both levels through the model's output layers.
    vb, lb = _psd_factor(w @ s_b @ w.T)
    a_b = (vb * np.sqrt(lb)).T  # (rank_b, 1024): centres = z0 + e @ a_b
    s_w_out = w @ s_w @ w.T
    vw, lw = _psd_factor(s_w_out)
    # Views vary in how far they stray (a view's residual power), and places in how much their views
    # vary (a frame's mean residual power): both log-normal, E[scale^2] = 1; variances of the logs less
    # what sampling alone gives (Gaussian quadratic forms), the view level corrected for the 4 views'
    # mean being inside each residual (d log q / d log t^2 = (1 - 2/V) / (1 - 1/V)).
    resid = g - means[:, None]
    power = np.einsum("fvi,ij,fvj->fv", resid, w.T @ w, resid)
    sampling = 2 * np.trace(s_w_out @ s_w_out) / np.trace(s_w_out) ** 2
    log_view = np.log(power / power.mean(1, keepdims=True))
    view_var = float(log_view.var(axis=1, ddof=1).mean())
    view_tau2 = max(0.0, view_var - sampling) / ((1 - 2 / FIT_VIEWS) / (1 - 1 / FIT_VIEWS)) ** 2
    log_place = np.log(power.mean(1) / power.mean())
    place_var = float(log_place.var())
    place_tau2 = max(0.0, place_var - sampling / (FIT_VIEWS - 1) - view_tau2 / FIT_VIEWS)
    held_ids = np.flatnonzero(held)
    meta = {
        "key": key, "model_id": extractor.model_id, "checkpoint": ckpt.name, "checkpoint_sha256": digest,
        "frames_fit": int(n_frames),
        "images_fit": int(n_frames * FIT_VIEWS), "frames_held_out": int(len(held_ids)),
        "images_held_out": int(len(held_ids) * FIT_VIEWS), "extract_s": round(t_extract, 1),
        "fit_s": round(time.perf_counter() - t0, 1), "reconstruction_code_bytes_differing": mismatch,
        "trace_between": float(np.trace(s_b)), "trace_within": float(np.trace(s_w)),
        "between_eig_clipped": float(-np.clip(np.linalg.eigvalsh(s_b), None, 0).sum()),
        "log_power_var_place": place_var, "log_power_var_view": view_var, "log_power_var_sampling": sampling,
        "scale_tau_place": math.sqrt(place_tau2), "scale_tau_view": math.sqrt(view_tau2),
    }
    result: dict[str, Any] = {
        "meta": meta,
        "z0": (w @ mu + b).astype(np.float32),
        "a_b": a_b.astype(np.float32),
        "view_vecs": vw.T.astype(np.float32),  # (rank_w, 1024) principal directions of the view noise
        "view_vals": lw.astype(np.float32),
        "scale_tau": np.asarray([math.sqrt(place_tau2), math.sqrt(view_tau2)]),
        "real_codes": real["codes"].reshape(len(held_ids), FIT_VIEWS, CODE_BYTES),
        "real_floats": real["floats"].reshape(len(held_ids), FIT_VIEWS, FLOAT_DIM)[:, :2].astype(np.float16),
        "real_index": index[held_ids],
        "real_season": np.searchsorted(np.unique([p.parent.name for p in paths]),
                                       [paths[i].parent.name for i in held_ids]),
    }
    _calibrate(result, fitted["codes"].reshape(n_frames, FIT_VIEWS, CODE_BYTES))
    meta["fit_s"] = round(time.perf_counter() - t0, 1)
    if cache is not None:
        Path(cache).parent.mkdir(parents=True, exist_ok=True)
        np.savez_compressed(cache, **{k: (json.dumps(v) if k == "meta" else v) for k, v in result.items()})
    if log:
        print(f"scale codes: fitted on {meta['images_fit']} views of {n_frames} frames "
              f"({meta['fit_s']:.0f} s)", file=sys.stderr)
    return result


def _same_place(views: np.ndarray) -> np.ndarray:
    """Hamming distances of all pairs of views of each place: codes (P, V, 64)."""
    n_views = views.shape[1]
    return np.concatenate([np.unpackbits(views[:, i] ^ views[:, j], axis=1).sum(1)
                           for i in range(n_views) for j in range(i + 1, n_views)])


CALIBRATION_PCTS = (5, 10, 25, 50, 75, 90, 95)


def _calibrate(model: dict[str, Any], fit_codes: np.ndarray, places: int = 1500) -> None:
    """Fit the view noise's overall gain and the spread of its scales (both log-normal tau's times one
    factor) to the same-place Hamming distances of the fitting views (least squares on percentiles)."""
    target = np.percentile(_same_place(fit_codes), CALIBRATION_PCTS)
    tau0 = model["scale_tau"].copy()

    def loss(gain: float, spread: float) -> float:
        model["noise_gain"], model["scale_tau"] = np.float64(gain), tau0 * spread
        codes, _ = Generator(model, seed=12345).generate(0, places * FIT_VIEWS, FIT_VIEWS)
        got = np.percentile(_same_place(codes.reshape(places, FIT_VIEWS, CODE_BYTES)), CALIBRATION_PCTS)
        return float(((got - target) ** 2).sum())

    grid = [(gain, spread) for gain in np.arange(0.8, 1.61, 0.1) for spread in np.arange(0.5, 3.01, 0.25)]
    gain, spread = min(grid, key=lambda gs: loss(*gs))
    fine = [(gain + dg, spread + ds) for dg in (-0.05, -0.025, 0, 0.025, 0.05) for ds in (-0.125, 0, 0.125)]
    gain, spread = min(fine, key=lambda gs: loss(*gs))
    model["noise_gain"], model["scale_tau"] = np.float64(gain), tau0 * spread
    model["meta"].update(noise_gain=float(gain), scale_spread=float(spread),
                         calibration_target_same_place=dict(zip(map(str, CALIBRATION_PCTS), target.tolist())),
                         calibration_loss=loss(gain, spread))


# -- generation ---------------------------------------------------------------------------------
def _lognormal_scale(normal: np.ndarray, tau: float) -> np.ndarray:
    """``s`` with ``log s^2 ~ N(-tau^2 / 2, tau^2)`` (so ``E[s^2] = 1``) from standard normals."""
    return np.exp(0.5 * (tau * normal - tau * tau / 2)).astype(np.float32)


class Generator:
    """Entries of a fitted model (see the module docstring). ``rank``: view-noise components kept."""

    def __init__(self, model: dict[str, Any], seed: int = 0, rank: int = DEFAULT_RANK,
                 threads: int | None = None) -> None:
        self.meta = model["meta"]
        self.seed = seed
        self.z0 = np.ascontiguousarray(model["z0"], np.float32)
        self.a_b = np.ascontiguousarray(model["a_b"], np.float32)
        vecs = model["view_vecs"].astype(np.float64)
        vals = model["view_vals"].astype(np.float64)
        rank = min(rank, len(vals))
        a_w = vecs[:rank] * np.sqrt(vals[:rank])[:, None]
        full = (vecs**2 * vals[:, None]).sum(0)  # each output coordinate's view-noise variance
        kept = (a_w**2).sum(0)
        gain = float(model.get("noise_gain", 1.0))
        self.a_w = np.ascontiguousarray(gain * a_w * np.sqrt(full / np.maximum(kept, 1e-30))[None], np.float32)
        self.rank = rank
        self.view_variance_kept = float(vals[:rank].sum() / vals.sum())
        self.tau_place, self.tau_view = (float(t) for t in model["scale_tau"])
        self.dim = len(self.z0)
        self._places: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        self._lock = threading.Lock()
        self.threads = threads if threads is not None else min(2, os.cpu_count() or 1)
        self._real = model

    def _place_block(self, block: int) -> tuple[np.ndarray, np.ndarray]:
        """Centres (PLACE_BLOCK, 1024) and view-noise scales (PLACE_BLOCK,) of one block of places."""
        with self._lock:
            hit = self._places.get(block)
        if hit is not None:
            return hit
        rng = np.random.default_rng([self.seed, _KIND_CENTRE, block])
        centres = rng.standard_normal((PLACE_BLOCK, self.a_b.shape[0]), dtype=np.float32) @ self.a_b
        centres += self.z0
        scales = _lognormal_scale(rng.standard_normal(PLACE_BLOCK), self.tau_place)
        with self._lock:
            if len(self._places) >= 8:
                self._places.pop(next(iter(self._places)))
            self._places[block] = (centres, scales)
        return centres, scales

    def places(self, first: int, last: int) -> tuple[np.ndarray, np.ndarray]:
        """Centres and scales of places ``first..last`` (inclusive)."""
        parts = [self._place_block(b) for b in range(first // PLACE_BLOCK, last // PLACE_BLOCK + 1)]
        lo = first - (first // PLACE_BLOCK) * PLACE_BLOCK
        if len(parts) == 1:
            c, s = parts[0]
        else:
            c, s = np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])
        return c[lo : lo + last - first + 1], s[lo : lo + last - first + 1]

    def _views(self, noise: np.ndarray, jitter: np.ndarray, place: np.ndarray, first: int, centres: np.ndarray,
               scales: np.ndarray, views: int = 0) -> np.ndarray:
        """Outputs of views from standard normals: ``noise`` (n, rank), ``jitter`` (n,) for each view's scale.
        ``views``: when every place has exactly that many consecutive rows, starting with the first."""
        scale = _lognormal_scale(jitter, self.tau_view) * scales[place - first]
        noise *= scale[:, None]
        out = noise @ self.a_w
        if views:
            out.reshape(-1, views, self.dim)[...] += centres[: len(out) // views, None]
        else:
            out += centres[place - first]
        return out

    def _entry_block(self, block: int, views: int) -> np.ndarray:
        """Branch outputs (ENTRY_BLOCK, 1024) of entries block * ENTRY_BLOCK ...; always whole blocks."""
        place = np.arange(block * ENTRY_BLOCK, (block + 1) * ENTRY_BLOCK) // views
        centres, scales = self.places(int(place[0]), int(place[-1]))
        rng = np.random.default_rng([self.seed, _KIND_VIEW, block])
        noise = rng.standard_normal((ENTRY_BLOCK, self.rank), dtype=np.float32)
        jitter = rng.standard_normal(ENTRY_BLOCK, dtype=np.float32)
        aligned = views if (block * ENTRY_BLOCK) % views == 0 and ENTRY_BLOCK % views == 0 else 0
        return self._views(noise, jitter, place, int(place[0]), centres, scales, aligned)

    def _finish_into(self, out: np.ndarray, codes: np.ndarray, floats: np.ndarray) -> None:
        codes[:] = np.packbits(out[:, :BITS] >= 0, axis=1)
        f = out[:, BITS:]
        np.multiply(f, (1.0 / np.sqrt(np.einsum("ij,ij->i", f, f)))[:, None], out=floats, casting="unsafe")

    def finish(self, out: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Branch outputs (n, 1024) -> (packed codes uint8 (n, 64), unit floats float16 (n, 512))."""
        codes = np.empty((len(out), CODE_BYTES), np.uint8)
        floats = np.empty((len(out), FLOAT_DIM), np.float16)
        self._finish_into(out, codes, floats)
        return codes, floats

    def generate(self, start: int, n: int, views: int = 10) -> tuple[np.ndarray, np.ndarray]:
        """Entries start..start+n: (codes uint8 (n, 64), floats float16 (n, 512)); blocks run on
        ``self.threads`` threads (NumPy releases the GIL in its heavy parts)."""
        codes = np.empty((n, CODE_BYTES), np.uint8)
        floats = np.empty((n, FLOAT_DIM), np.float16)
        end = start + n

        def run(blk: int) -> None:
            b0 = blk * ENTRY_BLOCK
            lo, hi = max(start, b0), min(end, b0 + ENTRY_BLOCK)
            out = self._entry_block(blk, views)[lo - b0 : hi - b0]
            self._finish_into(out, codes[lo - start : hi - start], floats[lo - start : hi - start])

        blocks = range(start // ENTRY_BLOCK, (end - 1) // ENTRY_BLOCK + 1) if n > 0 else range(0)
        if self.threads > 1 and len(blocks) > 1:
            with ThreadPoolExecutor(self.threads) as pool:
                list(pool.map(run, blocks))
        else:
            for blk in blocks:
                run(blk)
        return codes, floats

    def queries(self, n: int, n_map: int, seed: int = 0, views: int = 10
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``n`` new views of places drawn uniformly among those with an entry in the first ``n_map``."""
        rng = np.random.default_rng([self.seed, _KIND_QUERY, seed])
        place = rng.integers(0, (n_map + views - 1) // views, n)
        noise = rng.standard_normal((n, self.rank), dtype=np.float32)
        jitter = rng.standard_normal(n, dtype=np.float32)
        out = np.empty((n, self.dim), np.float32)
        blocks = place // PLACE_BLOCK
        for blk in np.unique(blocks):
            sel = np.flatnonzero(blocks == blk)
            centres, scales = self._place_block(int(blk))
            out[sel] = self._views(noise[sel], jitter[sel], place[sel], int(blk) * PLACE_BLOCK, centres, scales)
        codes, floats = self.finish(out)
        return codes, floats, place


_DEFAULT: dict[tuple, Generator] = {}


def generator(seed: int = 0, rank: int = DEFAULT_RANK, **fit_kwargs: Any) -> Generator:
    """The (cached in memory) generator of the default fit."""
    key = (seed, rank, tuple(sorted(fit_kwargs.items())))
    if key not in _DEFAULT:
        _DEFAULT[key] = Generator(fit(**fit_kwargs), seed=seed, rank=rank)
    return _DEFAULT[key]


def generate(start: int, n: int, views: int = 10, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Entries ``start..start+n``: (codes uint8 (n, 64), floats float16 (n, 512)); entry i is view
    ``i % views`` of place ``i // views``. Any split of a range into chunks gives the same entries."""
    return generator(seed).generate(start, n, views)


def chunks(n_total: int, chunk: int = 100_000, views: int = 10, seed: int = 0
           ) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
    """``(start, codes, floats)`` for consecutive chunks of a map of ``n_total`` entries."""
    gen = generator(seed)
    for s in range(0, n_total, chunk):
        yield (s, *gen.generate(s, min(chunk, n_total - s), views))


def queries(n: int, n_map: int, seed: int = 0, views: int = 10, map_seed: int = 0
            ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``n`` new views of places drawn uniformly from a map of ``n_map`` entries:
    (codes (n, 64), floats float16 (n, 512), place ids); the true neighbours of query j are the map
    entries ``places[j] * views ... + views - 1``."""
    return generator(map_seed).queries(n, n_map, seed, views)


# -- realism ------------------------------------------------------------------------------------
PCTS = (5, 25, 50, 75, 95)


def _bits(codes: np.ndarray) -> np.ndarray:
    return np.unpackbits(codes, axis=1)


def _hamming(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """All pairwise Hamming distances (small sets)."""
    x, y = _bits(a).astype(np.float32), _bits(b).astype(np.float32)
    return x.sum(1)[:, None] + y.sum(1)[None] - 2 * x @ y.T


def _pct(x: np.ndarray) -> dict[str, float]:
    return {f"p{p}": float(v) for p, v in zip(PCTS, np.percentile(x, PCTS))}


IVF_LISTS, IVF_PROBE = 16, 2


def _ivf_rate(base: np.ndarray, query: np.ndarray) -> float:
    """How often a binary IVF (IVF_LISTS lists trained on ``base``, IVF_PROBE probed) looks in the list
    that holds the query's own place: 1.0 for a perfect partition, IVF_PROBE / IVF_LISTS for none."""
    import faiss

    quantizer = faiss.IndexBinaryFlat(BITS)
    index = faiss.IndexBinaryIVF(quantizer, BITS, IVF_LISTS)
    index.cp.seed = 1234
    index.train(base)
    _, own_list = quantizer.search(base, 1)
    _, probed = quantizer.search(query, IVF_PROBE)
    return float((probed == own_list).any(1).mean())


def _code_stats(views: np.ndarray, rng: np.random.Generator, floats: np.ndarray | None = None,
                exclude: np.ndarray | None = None) -> dict[str, Any]:
    """Statistics of ``P`` places seen in ``V >= 2`` views each: codes (P, V, 64), floats (P, 2, D).

    ``exclude`` (P, P): pairs that are neither the same place nor independent places (real frames
    close along the route), left out of the nearest-other-place figures and the retrieval.
    """
    n_places, n_views = views.shape[:2]
    first = views[:, 0]
    bits = _bits(views.reshape(-1, CODE_BYTES))
    ham = _hamming(first, first)
    iu = np.triu_indices(n_places, 1)
    pairwise = ham[iu]
    np.fill_diagonal(ham, np.inf)
    any_other = ham.min(1)
    cross = _hamming(views[:, 1], first)  # view 1 of every place against view 0 of every place
    if exclude is not None:
        ham[exclude] = np.inf
        cross[exclude] = np.inf
    same = _same_place(views)
    order = np.argsort(cross, axis=1, kind="stable")[:, :10]
    own = np.arange(n_places)[:, None]
    centred = bits.astype(np.float32) - bits.mean(0)
    spectrum = np.linalg.svd(centred[rng.permutation(len(centred))[:4096]], compute_uv=False) ** 2
    out: dict[str, Any] = {
        "places": int(n_places),
        "views_per_place": int(n_views),
        "bit_balance_mean_abs_p_minus_half": float(np.abs(bits.mean(0) - 0.5).mean()),
        "pairwise_hamming_mean": float(pairwise.mean()),
        "pairwise_hamming_std": float(pairwise.std()),
        "pairwise_hamming": _pct(pairwise),
        "nn_other_place_hamming": _pct(ham.min(1)),
        "same_place_hamming": _pct(same),
        "view_retrieval_r1": float((order[:, 0] == own[:, 0]).mean()),
        "view_retrieval_r10": float((order == own).any(1).mean()),
        "bit_variance_in_top16_pcs": float(spectrum[:16].sum() / spectrum.sum()),
        f"ivf{IVF_LISTS}_probe{IVF_PROBE}_own_place_rate": _ivf_rate(first, views[:, 1]),
    }
    if exclude is not None:
        out["nn_any_other_frame_hamming"] = _pct(any_other)
    if floats is not None:
        f = floats.astype(np.float32)
        cos = f[:, 0] @ f[:, 0].T
        pair_cos = cos[iu]
        np.fill_diagonal(cos, -np.inf)
        if exclude is not None:
            cos[exclude] = -np.inf
        out["float_pairwise_cosine_mean"] = float(pair_cos.mean())
        out["float_nn_other_place_cosine"] = _pct(cos.max(1))
        out["float_same_place_cosine"] = _pct(np.einsum("ij,ij->i", f[:, 0], f[:, 1]))
    return out


def _nn_large(codes: np.ndarray, place: np.ndarray, sample: int, rng: np.random.Generator,
              views: bool = True) -> dict[str, Any]:
    """For ``sample`` entries of a large set: distance to the nearest entry of another place and to
    the nearest other view of its own place (exhaustive, faiss)."""
    import faiss

    index = faiss.IndexBinaryFlat(BITS)
    index.add(codes)
    q = rng.choice(len(codes), sample, replace=False)
    dist, ids = index.search(codes[q], 64)
    other = np.where(place[ids] != place[q][:, None], dist, np.iinfo(np.int32).max).min(1)
    mine = np.where((place[ids] == place[q][:, None]) & (ids != q[:, None]), dist, np.iinfo(np.int32).max).min(1)
    out = {"entries": int(len(codes)), "sampled": int(sample), "nn_other_place_hamming": _pct(other)}
    if views:
        out["nn_same_place_hamming"] = _pct(mine[mine < np.iinfo(np.int32).max])
    if (other == np.iinfo(np.int32).max).any():
        out["note"] = "some sampled entries had no other place within their 64 nearest"
    return out


def realism(gen: Generator | None = None, n_large: int = 100_000, views: int = 10, sample: int = 2_000,
            seed: int = 0) -> dict[str, Any]:
    """Generated vs real (held-out frames) vs uniformly random codes.

    ``matched``: the same number of places as held-out frame images, in 4 views each (real: 4
    augmented views of each held-out frame image; generated: 4 views of each of as many places;
    random: independent codes); view 0 gives the pairwise and nearest-other-place figures, view 1
    against view 0 the retrieval rates. ``large``: ``n_large`` entries, ``views`` per place
    (random: all independent), nearest distances of ``sample`` entries.
    """
    gen = gen or generator()
    rng = np.random.default_rng(seed)
    real = gen._real["real_codes"]
    n_places = real.shape[0]
    g_codes, g_floats = gen.generate(0, n_places * FIT_VIEWS, FIT_VIEWS)
    g_views = g_codes.reshape(n_places, FIT_VIEWS, CODE_BYTES)
    g_floats = g_floats.reshape(n_places, FIT_VIEWS, FLOAT_DIM)[:, :2]
    rand = np.random.default_rng([seed, 99]).integers(0, 256, real.shape, dtype=np.uint8)
    rand_f = np.random.default_rng([seed, 98]).standard_normal((n_places, 2, FLOAT_DIM)).astype(np.float32)
    rand_f /= np.linalg.norm(rand_f, axis=-1, keepdims=True)
    idx, season = gen._real["real_index"], gen._real["real_season"]
    near = np.abs(idx[:, None] - idx[None]) <= HOLDOUT_BLOCK  # the same stretch of route, either season
    np.fill_diagonal(near, False)
    matched = {
        "real": _code_stats(real, rng, gen._real["real_floats"], exclude=near),
        "generated": _code_stats(g_views, rng, g_floats),
        "uniform_random": _code_stats(rand, rng, rand_f),
    }
    # Context only: the same frame in the other season (not modelled: a place's views are one season's).
    pairs = [(i, j) for i in np.flatnonzero(season == 0) for j in np.flatnonzero((season == 1) & (idx == idx[i]))]
    if pairs:
        a, b = np.asarray(pairs).T
        matched["real"]["other_season_same_frame_hamming"] = _pct(
            np.unpackbits(real[a, 0] ^ real[b, 0], axis=1).sum(1))
    big_codes, _ = gen.generate(0, n_large, views)
    large = {
        "generated": _nn_large(big_codes, np.arange(n_large) // views, sample, rng),
        "uniform_random": _nn_large(np.random.default_rng([seed, 97]).integers(0, 256, (n_large, CODE_BYTES),
                                                                              dtype=np.uint8),
                                    np.arange(n_large), sample, rng, views=False),
    }
    big_bits = _bits(big_codes[:20_000])
    large["generated"]["bit_balance_mean_abs_p_minus_half"] = float(np.abs(big_bits.mean(0) - 0.5).mean())
    return {
        "how": "see benchmarks/_scale_codes.py docstring",
        "fit": {k: v for k, v in gen.meta.items() if k != "key"} | {"augment": AUGMENT},
        "view_noise_rank": gen.rank, "view_noise_variance_kept": round(gen.view_variance_kept, 4),
        "matched": matched, "large": large,
    }


# -- self-test ----------------------------------------------------------------------------------
def _rss_mb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    import argparse

    import faiss

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=1_000_000, help="entries to time")
    ap.add_argument("--rank", type=int, default=DEFAULT_RANK)
    args = ap.parse_args()
    t = time.perf_counter()
    model = fit()
    print(f"fit: {time.perf_counter() - t:.1f} s (when fitted: {model['meta']['fit_s']} s); rss {_rss_mb():.0f} MB")
    gen = Generator(model, rank=args.rank)
    _DEFAULT[(0, args.rank, ())] = gen
    t, cpu = time.perf_counter(), time.process_time()
    for s in range(0, args.n, 100_000):
        gen.generate(s, min(100_000, args.n - s))
    dt, dcpu = time.perf_counter() - t, time.process_time() - cpu
    print(f"generate {args.n} in chunks of 100 k on {gen.threads} threads: {dt:.1f} s wall, {dcpu:.1f} s CPU "
          f"({args.n / dt / 1e6:.2f} M/s; 10 M ~ {1e7 / args.n * dt:.0f} s); peak rss {_rss_mb():.0f} MB")
    a = gen.generate(150_000, 100_000)[0]
    b = np.concatenate([gen.generate(150_000, 37_000)[0], gen.generate(187_000, 63_000)[0]])
    print("chunk-invariant:", bool((a == b).all()))
    t = time.perf_counter()
    stats = realism(gen)
    print(f"realism: {time.perf_counter() - t:.1f} s")
    print(json.dumps(stats, indent=1))
    n_map = 100_000
    index = faiss.IndexBinaryFlat(BITS)
    index.add(gen.generate(0, n_map)[0])
    q, _, places = gen.queries(1000, n_map, seed=1)
    _, ids = index.search(q, 10)
    hit = (ids // 10 == places[:, None])
    print(f"findability, 1000 queries vs {n_map} entries (10 views/place): "
          f"own place top-1 {hit[:, 0].mean():.3f}, top-10 {hit.any(1).mean():.3f}")


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    main()
