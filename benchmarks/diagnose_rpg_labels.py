"""How accurate are RPG's nearest-reference labels, compared with the trained network's own argmax?

Run: ``python benchmarks/diagnose_rpg_labels.py RUN [RUN ...] [--size 32] [--k-fraction 0.57]`` on multiclass
2D run folders (e.g. ``runs/reference_multiclass/rpg-s0``).

For the first test subject of each run, foreground slices from the middle half are taken in groups of 8: the
first 4 (with their labels) are the references, the other 4 the queries. The script prints pixel accuracy of
the reference labels and of the network's argmax on the queries, the foreground share of each, and the mean
weight W, overall and over the pixels the references label foreground and background (W's bias between them).
Then the same accuracies on the pixels where the network is unsure (top probability below ``--unsure``, where
references could add most), and those of a majority vote over the ``--votes`` nearest references (cosine, the
references subsampled like RPG's), which asks whether a smoother matcher than Eq. 4's single nearest one would
label better, and the accuracy of each where the network and the references disagree. Eval mode, last
checkpoint. It separates "the matcher mislabels" from "training on its labels drifts".

``--passes`` asks the same of batches as training draws them: 4 slices of the run's labelled subject as references,
4 of its unlabelled subjects as queries (``--groups`` random groups), with features from eval mode, from one
train-mode pass over both (BatchNorm statistics shared: ``unlabelled_pass: joint``) and from one train-mode pass
each (``separate``), against the network's own eval-mode argmax on the queries, then the ``--votes`` majorities
(separate passes) over all pixels and the unsure ones. It says whether any pass layout or vote gives reference
labels better than the network's own answer on the batches training sees. A run trained on a few labelled slices
(``split.labelled_slices``) draws its references from those slices only.

``--pools 4 8 16 32`` asks whether a larger pool p (the paper's Table 2) would: the same kind of groups, with the
nearest reference among p labelled slices (train-mode passes of 4 slices each), against the network's own answer.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

try:
    import semiseg  # noqa: F401
except ModuleNotFoundError:  # run from a checkout without ``pip install -e .``
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from semiseg.api import load_model
from semiseg.data.loaders import evenly_spaced
from semiseg.engine.assemble import open_configured_dataset
from semiseg.ssl.reference import ReferenceLabels, ReferenceSettings, reference_pseudo_labels


def query_slices(run: str) -> tuple[object, torch.Tensor, torch.Tensor]:
    """The trained model and the (image, label) foreground slices of the run's first test subject."""
    model = load_model(run, "last", device="cpu")
    spec = open_configured_dataset(model.cfg)
    case_id = json.loads((Path(run) / "split.json").read_text())["test"][0]
    case = next(ref for ref in spec.cases if ref.case_id == case_id).load()
    image = torch.from_numpy(model.normalized(case)).float()
    label = torch.from_numpy(case.label).long()
    h, w = (n // model.divisor * model.divisor for n in image.shape[1:3])
    zs = [z for z in range(image.shape[-1]) if (label[..., z] > 0).any()]
    zs = zs[len(zs) // 4 : 3 * len(zs) // 4 : 3]
    images = torch.stack([image[..., z] for z in zs])[..., :h, :w]
    labels = torch.stack([label[..., z] for z in zs])[..., :h, :w]
    return model, images, labels


def weight_where(matched: ReferenceLabels, foreground: bool) -> float:
    """Mean W over the pixels whose reference label is (not) background; NaN where there are none."""
    chosen = (matched.target > 0) == foreground
    return float(matched.weight[chosen].mean()) if chosen.any() else float("nan")


def vote_labels(ref_features: torch.Tensor, ref_labels: torch.Tensor, features: torch.Tensor, size: int,
                votes: int) -> torch.Tensor:
    """Majority label among the ``votes`` most cosine-similar references (subsampled to size², as RPG's)."""
    refs = F.interpolate(ref_features, size=(size, size), mode="nearest")
    labels = F.interpolate(ref_labels[:, None].float(), size=(size, size), mode="nearest").long().flatten()
    refs = F.normalize(refs.movedim(1, -1).reshape(-1, refs.shape[1]), dim=1)
    queries = F.normalize(features.movedim(1, -1).reshape(-1, features.shape[1]), dim=1)
    nearest = (queries @ refs.T).topk(min(votes, len(refs)), dim=1).indices
    return labels[nearest].mode(dim=1).values.reshape(features.shape[0], *features.shape[2:])


def foreground_slices(model: object, case: object) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(image, label) of every slice of ``case`` with foreground, cropped to the network's divisor."""
    image, label = torch.from_numpy(model.normalized(case)).float(), torch.from_numpy(case.label).long()
    h, w = (n // model.divisor * model.divisor for n in image.shape[1:3])
    return [(image[..., z][..., :h, :w], label[..., z][:h, :w])
            for z in range(image.shape[-1]) if (label[..., z] > 0).any()]


def draw(slices: list[tuple[torch.Tensor, torch.Tensor]], count: int,
         generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """``count`` random (image, label) slices, stacked into a batch of images and one of labels."""
    picked = [slices[i] for i in torch.randperm(len(slices), generator=generator)[:count]]
    images, labels = zip(*picked, strict=True)
    return torch.stack(images), torch.stack(labels)


def labelled_slices(model: object, case: object) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The foreground slices of a labelled case the run trained on: all of them, or the ``split.labelled_slices``
    evenly spaced ones (``evenly_spaced``, as ``keep_labelled_slices`` picks them)."""
    slices = foreground_slices(model, case)
    count = model.cfg.split.labelled_slices
    return slices if count is None else [slices[i] for i in evenly_spaced(len(slices), count)]


def training_slices(run: str) -> tuple[torch.nn.Module, list, list]:
    """The run's network at its last checkpoint, the labelled slices it trained on (the references) and the
    foreground slices of its unlabelled cases (the queries)."""
    model = load_model(run, "last", device="cpu")
    cases = {c.case_id: c for c in open_configured_dataset(model.cfg).cases}
    split = json.loads((Path(run) / "split.json").read_text())
    refs = [s for case_id in split["labelled"] for s in labelled_slices(model, cases[case_id].load())]
    queries = [s for case_id in split["unlabelled"] for s in foreground_slices(model, cases[case_id].load())]
    return model.nets["model"], refs, queries


def pass_layouts(run: str, settings: ReferenceSettings, groups: int, votes: list[int],
                 unsure: float) -> dict[str, tuple[float, float]]:
    """Training-like groups (see module doc): accuracy, plain and W-weighted, of the reference labels per layout,
    and of the network's own argmax (weighted by the separate layout's W); then, over all pixels and over those
    where the network is unsure, the network's and each vote's (separate passes, as training runs them)."""
    net, refs, queries = training_slices(run)
    generator, scores = torch.Generator().manual_seed(0), []
    for _ in range(groups):
        (x_ref, y_ref), (x_query, y_query) = draw(refs, 4, generator), draw(queries, 4, generator)
        with torch.no_grad():
            net.eval()
            ref_eval, query_eval = net(x_ref, return_features=True), net(x_query, return_features=True)
            net.train()
            joint = net(torch.cat([x_ref, x_query]), return_features=True).features
            layouts = {"eval": (ref_eval.features, query_eval.features),
                       "joint": (joint[:len(x_ref)], joint[len(x_ref):]),
                       "separate": (net(x_ref, return_features=True).features,
                                    net(x_query, return_features=True).features)}
        own = query_eval.logits.argmax(1)
        own_right = (own == y_query).float()
        row = []
        for ref_features, query_features in layouts.values():
            matched = reference_pseudo_labels(ref_features, y_ref, query_features, label_mode="multiclass",
                                              num_classes=int(ref_eval.logits.shape[1]), settings=settings,
                                              generator=torch.Generator().manual_seed(1))
            right = (matched.target == y_query).float()
            row += [float(right.mean()), float((matched.weight * right).sum() / matched.weight.sum())]
        # the network on the same pixels, weighted by the W training uses (separate passes, the default)
        row = [float(own_right.mean()), float((matched.weight * own_right).sum() / matched.weight.sum()), *row]
        doubtful = query_eval.logits.softmax(1).amax(1) < unsure
        row += [accuracy(own, y_query), accuracy(own, y_query, doubtful)]
        ref_separate, query_separate = layouts["separate"]
        for k in votes:
            voted = vote_labels(ref_separate, y_ref, query_separate, settings.size_for(2), k)
            row += [accuracy(voted, y_query), accuracy(voted, y_query, doubtful)]
        scores.append(row)
    net.eval()
    means = np.nanmean(scores, axis=0)
    names = ["network", *layouts, "argmax", *[f"{k} votes" for k in votes]]
    return {name: (means[2 * i], means[2 * i + 1]) for i, name in enumerate(names)}


def pool_sizes(run: str, settings: ReferenceSettings, groups: int, pools: list[int],
               unsure: float) -> dict[str, tuple[float, float]]:
    """Training-like groups with larger reference pools: accuracy (all pixels / where the network is unsure) of
    the nearest reference among ``p`` labelled slices (train-mode passes of 4 slices each, as training's batches
    run) for each ``p`` of ``pools``, and of the network's own eval-mode argmax on the same 4 query slices."""
    net, refs, queries = training_slices(run)
    generator, scores = torch.Generator().manual_seed(0), []
    for _ in range(groups):
        (x_query, y_query), (x_ref, y_ref) = draw(queries, 4, generator), draw(refs, max(pools), generator)
        with torch.no_grad():
            own = net.eval()(x_query)
            net.train()
            query_features = net(x_query, return_features=True).features
            ref_features = torch.cat([net(x_ref[i:i + 4], return_features=True).features
                                      for i in range(0, len(x_ref), 4)])
        doubtful = own.softmax(1).amax(1) < unsure
        row = [accuracy(own.argmax(1), y_query), accuracy(own.argmax(1), y_query, doubtful)]
        for p in pools:
            matched = reference_pseudo_labels(ref_features[:p], y_ref[:p], query_features, label_mode="multiclass",
                                              num_classes=int(own.shape[1]), settings=settings,
                                              generator=torch.Generator().manual_seed(1))
            row += [accuracy(matched.target, y_query), accuracy(matched.target, y_query, doubtful)]
        scores.append(row)
    net.eval()
    means = np.nanmean(scores, axis=0)
    names = ["network", *[f"p = {p}" for p in pools]]
    return {name: (means[2 * i], means[2 * i + 1]) for i, name in enumerate(names)}


def accuracy(pred: torch.Tensor, truth: torch.Tensor, where: torch.Tensor | None = None) -> float:
    """Share of pixels (of ``where``, when given) labelled right; NaN when ``where`` selects none."""
    hits = (pred == truth).float()
    if where is None:
        return float(hits.mean())
    return float(hits[where].mean()) if where.any() else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("runs", nargs="+")
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--k-fraction", type=float, default=0.57)
    parser.add_argument("--unsure", type=float, default=0.9, help="top probability below which the net is unsure")
    parser.add_argument("--votes", type=int, nargs="+", default=[5, 25], help="nearest references that vote")
    parser.add_argument("--passes", action="store_true", help="also score training-like groups per pass layout")
    parser.add_argument("--groups", type=int, default=15, help="random groups of 4 + 4 slices for --passes")
    parser.add_argument("--pools", type=int, nargs="+", help="also score reference pools of these many slices")
    args = parser.parse_args()
    settings = ReferenceSettings(size=args.size, k_fraction=args.k_fraction)
    torch.manual_seed(0)
    for run in args.runs:
        model, images, labels = query_slices(run)
        net = model.nets["model"].eval()
        with torch.no_grad():
            out = net(images, return_features=True)
        rows = []
        for i in range(0, len(images) - 7, 8):
            refs, queries = slice(i, i + 4), slice(i + 4, i + 8)
            matched = reference_pseudo_labels(out.features[refs], labels[refs], out.features[queries],
                                              label_mode="multiclass", num_classes=int(out.logits.shape[1]),
                                              settings=settings)
            truth, probabilities = labels[queries], out.logits[queries].softmax(1)
            own, unsure = probabilities.argmax(1), probabilities.amax(1) < args.unsure
            voted = [vote_labels(out.features[refs], labels[refs], out.features[queries], args.size, k)
                     for k in args.votes]
            rows.append([accuracy(own, truth), accuracy(matched.target, truth),
                         float((matched.target > 0).float().mean()), float((truth > 0).float().mean()),
                         float(matched.weight.mean()), weight_where(matched, True), weight_where(matched, False),
                         float(unsure.float().mean()), accuracy(own, truth, unsure),
                         accuracy(matched.target, truth, unsure), float((own != matched.target).float().mean()),
                         accuracy(own, truth, own != matched.target),
                         accuracy(matched.target, truth, own != matched.target),
                         float((matched.weight * (own != matched.target)).sum() / matched.weight.sum()),
                         *[value for v in voted for value in (accuracy(v, truth), accuracy(v, truth, unsure))]])
        (acc_own, acc_ref, fg_ref, fg_true, weight, weight_fg, weight_bg, unsure_share, own_u, ref_u, split_share,
         own_split, ref_split, weight_split, *vote) = np.nanmean(rows, axis=0)
        votes = ", ".join(f"{k} votes {vote[2 * i]:.3f} / {vote[2 * i + 1]:.3f}" for i, k in enumerate(args.votes))
        print(f"{run}: pixel accuracy argmax {acc_own:.3f}, references {acc_ref:.3f}; foreground share references "
              f"{fg_ref:.3f}, truth {fg_true:.3f}; mean W {weight:.3f} (foreground labels {weight_fg:.3f}, background "
              f"{weight_bg:.3f}; {len(rows)} groups)")
        print(f"  where the net is unsure ({unsure_share:.3f} of pixels): argmax {own_u:.3f}, references {ref_u:.3f}; "
              f"all / unsure pixels: {votes}")
        print(f"  where the two disagree ({split_share:.3f} of pixels): argmax {own_split:.3f}, references "
              f"{ref_split:.3f}; share of W there {weight_split:.3f}")
        if args.passes:
            scores = [f"{name} {a:.3f} / {b:.3f}" for name, (a, b) in
                      pass_layouts(run, settings, args.groups, args.votes, args.unsure).items()]
            print(f"  training-like groups ({args.groups}), pixels right, plain / W-weighted: "
                  f"{', '.join(scores[:4])}; all / unsure: {', '.join(scores[4:])}")
        if args.pools:
            scores = [f"{name} {a:.3f} / {b:.3f}" for name, (a, b) in
                      pool_sizes(run, settings, args.groups, args.pools, args.unsure).items()]
            print(f"  reference pools ({args.groups} groups), pixels right, all / unsure: {', '.join(scores)}")


if __name__ == "__main__":
    main()
