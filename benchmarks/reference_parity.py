"""Parity of imported models with the authors' reference implementations.

Builds each reference model from a local checkout of its public repository,
fills it with seeded random weights, saves them in the released checkpoint
layout, imports that file with selavpr_ros and compares the outputs on the
same input (fp32, CPU). Nothing of the reference code is part of this package;
pass the checkouts' paths:

    python benchmarks/reference_parity.py --selavpr ~/src/SelaVPR \\
        --selavprpp ~/src/SelaVPRplusplus --emvp ~/src/EMVP

Writes benchmarks/results/reference_parity.json. ViT-L models need ~6 GB RAM.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
import tempfile
import types
import warnings
from pathlib import Path

import torch
from _common import save

from selavpr_ros.models.adapters import DynamicPowerNorm
from selavpr_ros.models.heads import CentroidFreeProbing
from selavpr_ros.models.methods.selavpr import import_selavpr
from selavpr_ros.models.methods.selavprpp import import_selavprpp


def _import_from(repo: Path, module: str):
    """Import ``module`` from a checkout, forgetting same-named modules of other checkouts."""
    for name in list(sys.modules):
        if name.split(".")[0] in ("backbone", "model", "network", "models"):
            del sys.modules[name]
    sys.path.insert(0, str(repo))
    try:
        return importlib.import_module(module)
    finally:
        sys.path.remove(str(repo))


def _randomise(model: torch.nn.Module, seed: int = 1) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.02 + (1.0 if name.endswith("gamma") else 0.0))
            if name.endswith(".p"):
                p.fill_(3.0)
        for name, b in model.named_buffers():
            if "running_var" in name:
                b.copy_(torch.rand(b.shape, generator=g) + 0.5)
            elif "running_mean" in name:
                b.copy_(torch.randn(b.shape, generator=g) * 0.1)


def selavpr(repo: Path, tmp: Path) -> dict:
    network = _import_from(repo, "network")
    results = {}
    for registers in (False, True):
        ref = network.GeoLocalizationNet(
            types.SimpleNamespace(registers=registers, foundation_model_path=None, resume="x")
        ).eval()
        _randomise(ref)
        torch.save({"model_state_dict": torch.nn.DataParallel(ref).state_dict()}, tmp / "selavpr.pth")
        ours = import_selavpr(tmp / "selavpr.pth")
        x = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(0))
        with torch.no_grad():
            local, glob = ref(x)
            out = ours(x)
        results[f"selavpr_vitl14{'_reg4' if registers else ''}"] = {
            "global_max_abs": (glob - out.descriptors).abs().max().item(),
            "local_max_abs": (local - out.local_features).abs().max().item(),
        }
    return results


def selavprpp(repo: Path, tmp: Path) -> dict:
    network = _import_from(repo, "model.network")
    results = {}
    for backbone in ("dinov2-base", "dinov2-large"):
        for two_branch in (False, True):
            args = types.SimpleNamespace(
                backbone=backbone,
                aggregation="gem",
                hashing=two_branch,
                rerank=two_branch,
                resume=True,
                foundation_model_path=None,
            )
            ref = network.GeoLocalizationNet(args).eval()
            _randomise(ref)
            torch.save({"model_state_dict": torch.nn.DataParallel(ref).state_dict()}, tmp / "pp.pth")
            ours = import_selavprpp(tmp / "pp.pth")
            x = torch.randn(2, 3, 322, 322, generator=torch.Generator().manual_seed(0))
            with torch.no_grad():
                out_ref = ref(x)
                out = ours(x)
            key = f"selavpr++_{backbone}_{'rerank' if two_branch else 'float'}"
            if two_branch:
                z, _, xg = out_ref
                results[key] = {
                    "float_max_abs": (xg - out.descriptors).abs().max().item(),
                    "hash_max_abs": (z - out.hash_z).abs().max().item(),
                    "code_bits_differ": int(((z >= 0) != (out.hash_z >= 0)).sum()),
                }
            else:
                results[key] = {"float_max_abs": (out_ref - out.descriptors).abs().max().item()}
    return results


def emvp(repo: Path) -> dict:
    sys.modules.setdefault("torchvision", types.ModuleType("torchvision"))  # only their ResNet needs it
    cfp = _import_from(repo, "models.aggregators.centroid_free_probing")
    dim = 768
    ref = cfp.CFProbing(
        num_channels=dim, remove_mean=True, constant_norm="softmax", post_norm="dpn", with_token=True, final_norm=True
    ).eval()
    ref.post_norm = "gpn"  # the published class builds its DPN for 'dpn' but applies it under 'gpn*'
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for p in ref.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.05)
    sd = ref.state_dict()

    def linear(conv: str) -> torch.Tensor:
        w = sd[conv]
        return w.reshape(w.shape[0], -1) if w.ndim == 4 else w

    names = {"features": "cluster_features", "scores": "score"}
    mapping = {}
    for ours_name, ref_name in names.items():
        for i in (0, 3):
            mapping[f"{ours_name}.{i}.weight"] = linear(f"{ref_name}.{i}.weight")
            mapping[f"{ours_name}.{i}.bias"] = sd[f"{ref_name}.{i}.bias"]
    for i in (0, 2):
        mapping[f"token.{i}.weight"] = sd[f"token_features.{i}.weight"]
        mapping[f"token.{i}.bias"] = sd[f"token_features.{i}.bias"]
    for i in (0, 3):
        mapping[f"dpn.mlp.{i}.weight"] = sd[f"gpn.projection.{i}.weight"]
        mapping[f"dpn.mlp.{i}.bias"] = sd[f"gpn.projection.{i}.bias"]
    ours = CentroidFreeProbing(dim).eval()
    ours.load_state_dict(mapping, strict=True)
    x = torch.randn(2, dim, 16, 23, generator=g)
    token = torch.randn(2, dim, generator=g)
    with torch.no_grad():
        cfp_diff = (ref((x, token)) - ours(x.permute(0, 2, 3, 1), token)).abs().max().item()
    # DPN_R of the trunk: the class is defined in their backbone module (which needs torch.hub); run its source.
    src = (repo / "models" / "backbones" / "dinov2.py").read_text()
    namespace = {"torch": torch, "nn": torch.nn}
    exec(src[src.index("class DPN") : src.index("class DINOv2")], namespace)  # noqa: S102
    ref_dpn = namespace["DPN"](num_channels=dim).eval()
    with torch.no_grad():
        for p in ref_dpn.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.05)
    our_dpn = DynamicPowerNorm(dim, 16).eval()
    our_dpn.mlp.load_state_dict({k.replace("projection.", ""): v for k, v in ref_dpn.state_dict().items()})
    tokens = torch.randn(2, 257, dim, generator=g)
    with torch.no_grad():
        dpn_diff = (ref_dpn(tokens) - our_dpn(tokens)).abs().max().item()
    return {"emvp_cfp_head": {"max_abs": cfp_diff}, "emvp_dpn_r": {"max_abs": dpn_diff}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--selavpr", type=Path, help="checkout of github.com/Lu-Feng/SelaVPR")
    parser.add_argument("--selavprpp", type=Path, help="checkout of github.com/Lu-Feng/SelaVPRplusplus")
    parser.add_argument("--emvp", type=Path, help="checkout of github.com/vincentqqb/EMVP")
    args = parser.parse_args()
    if not (args.selavpr or args.selavprpp or args.emvp):
        parser.error("give at least one reference checkout")
    warnings.filterwarnings("ignore")
    logging.disable(logging.WARNING)
    results: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        if args.selavpr:
            results.update(selavpr(args.selavpr, Path(tmp)))
        if args.selavprpp:
            results.update(selavprpp(args.selavprpp, Path(tmp)))
    if args.emvp:
        results.update(emvp(args.emvp))
    for name, values in results.items():
        print(
            f"{name:<34} "
            + ", ".join(f"{k} {v:.2g}" if isinstance(v, float) else f"{k} {v}" for k, v in values.items())
        )
    print(f"wrote {save('reference_parity', {'results': results})}")


if __name__ == "__main__":
    main()
