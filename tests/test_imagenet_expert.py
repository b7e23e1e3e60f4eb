"""The ImageNet expert: mapping table, aggregation, arch checks, and the expert inside the
fusion on generated data (a stand-in "pretrained" network; nothing is downloaded)."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import torchvision

from pixelplay_lib.data import load_challenge, load_class_attributes
from pixelplay_lib.demo import write_demo_dataset
from pixelplay_lib.experts import fusion
from pixelplay_lib.experts.imagenet import (
    KEEP,
    N_IMAGENET,
    OUTPUT,
    PROB_FLOOR,
    head_name,
    imagenet_forward,
    load_imagenet_network,
    make_expert,
    output_size,
    read_mapping,
)
from pixelplay_lib.inference import ViewPlan, run_images
from pixelplay_lib.pipeline import FileImages
from pixelplay_lib.runtime import Runtime

# the 50 AwA2 names in classes.txt order, and the 10 without training images
CLASSES = """antelope grizzly+bear killer+whale beaver dalmatian persian+cat horse german+shepherd
blue+whale siamese+cat skunk mole tiger hippopotamus leopard moose spider+monkey humpback+whale
elephant gorilla ox fox sheep seal chimpanzee hamster squirrel rhinoceros rabbit bat giraffe wolf
chihuahua rat weasel otter buffalo zebra giant+panda deer bobcat pig lion mouse polar+bear collie
walrus raccoon cow dolphin""".split()
UNSEEN = ["chimpanzee", "collie", "fox", "gorilla", "horse", "moose", "rabbit", "rhinoceros",
          "sheep", "squirrel"]
CPU = Runtime(torch.device("cpu"), None, False)
COVERED_UNSEEN = sorted(set(UNSEEN) - {"moose", "rhinoceros"})


def test_mapping_matches_torchvision_categories_and_the_challenge_classes():
    categories = torchvision.models.ResNet101_Weights.IMAGENET1K_V2.meta["categories"]
    rows = read_mapping()
    for row in rows:
        assert categories[row.index] == row.imagenet_name, row
        assert set(row.classes) <= set(CLASSES), row
    covered = {c for row in rows for c in row.classes}
    # 8 of the 10 unseen classes have counterparts, moose and rhinoceros none
    assert set(UNSEEN) - covered == {"moose", "rhinoceros"}
    assert len(covered) == 36
    mapped = {row.index: row.classes for row in rows}
    # traps: the tabby "tiger cat", the rhinoceros beetle, the computer mouse, grey whale
    assert not {282, 306, 673, 147} & set(mapped)
    assert mapped[367] == ("chimpanzee",) and mapped[345] == ("ox", "cow")
    assert [i for i, c in mapped.items() if c == ("fox",)] == [277, 278, 279, 280]


def test_bad_table_lines_name_the_file_and_line(tmp_path):
    path = tmp_path / "table.tsv"
    path.write_text("# comment\n367\tchimpanzee\tchimpanzee\n367\tchimpanzee\tgorilla\n")
    with pytest.raises(ValueError, match="table.tsv line 3: index 367 .* listed twice"):
        read_mapping(path)
    path.write_text("367 chimpanzee chimpanzee\n")
    with pytest.raises(ValueError, match="line 1: .* is not 'index<TAB>"):
        read_mapping(path)


def known_logits(probs: dict[int, float]) -> np.ndarray:
    """(1000,) logits whose softmax is `probs` on those indices and ~0 elsewhere."""
    logits = np.full(N_IMAGENET, -80.0)
    for index, p in probs.items():
        logits[index] = math.log(p)
    return logits


def test_aggregation_gives_each_class_its_imagenet_mass_and_shares_the_leftover():
    # 367 chimpanzee, 339 sorrel -> horse, 345 ox -> ox|cow (split), 999 toilet tissue and
    # 306 rhinoceros beetle are mapped to nothing: their 0.1 is the leftover
    logits = known_logits({367: 0.5, 339: 0.2, 345: 0.2, 999: 0.05, 306: 0.05})
    expert = make_expert(logits[None], CLASSES)
    probs = np.exp(expert.scores([]))[0]
    uncovered = [c for c in range(50) if c not in expert.covers]
    assert len(uncovered) == 14 and CLASSES.index("moose") in uncovered
    expected = np.zeros(50)
    expected[CLASSES.index("chimpanzee")] = 0.5
    expected[CLASSES.index("horse")] = 0.2
    expected[CLASSES.index("ox")] = expected[CLASSES.index("cow")] = 0.1
    expected[uncovered] = 0.1 / 14
    np.testing.assert_allclose(probs, np.maximum(expected, PROB_FLOOR), rtol=1e-9, atol=1e-15)
    assert probs.sum() == pytest.approx(1.0)
    # a fixed expert: the classes the protocol lets it fit do not change anything
    assert np.array_equal(expert.scores([0, 1]), expert.scores(list(range(40))))


def test_leftover_rule_and_full_coverage():
    # all mass on unmapped ImageNet classes: the expert says "one of the uncovered classes"
    expert = make_expert(known_logits({999: 0.7, 500: 0.3})[None], CLASSES)
    probs = np.exp(expert.scores([]))[0]
    uncovered = np.array([c not in expert.covers for c in range(50)])
    np.testing.assert_allclose(probs[uncovered], 1 / 14)
    assert probs[~uncovered].max() < 1e-9
    # every class covered: the covered masses are renormalised (no leftover column left)
    few = ["chimpanzee", "Gorilla", "fox"]  # matched whatever the case
    expert = make_expert(known_logits({367: 0.3, 366: 0.1, 277: 0.05, 278: 0.05, 999: 0.5}
                                      )[None], few)
    np.testing.assert_allclose(np.exp(expert.scores([]))[0], [0.6, 0.2, 0.2])
    with pytest.raises(ValueError, match="none of the classes has an ImageNet counterpart"):
        make_expert(known_logits({367: 1.0})[None], ["moose", "rhinoceros"])


def test_votes_are_averaged_in_probability_space():
    view_a = known_logits({367: 0.9, 366: 0.1})
    view_b = known_logits({367: 0.1, 366: 0.9 - 1e-6, 999: 1e-6})
    probs = np.exp(make_expert(np.stack([view_a, view_b])[None], CLASSES).scores([]))[0]
    assert probs[CLASSES.index("chimpanzee")] == pytest.approx(0.5, abs=1e-6)
    assert probs[CLASSES.index("gorilla")] == pytest.approx(0.5, abs=1e-6)
    with pytest.raises(ValueError, match=r"\(n, 1000\) or \(n, views, 1000\)"):
        make_expert(np.zeros((2, 50)), CLASSES)


@pytest.mark.parametrize("arch", ["resnet18", "efficientnet_b0", "convnext_tiny", "vit_b_16",
                                  "squeezenet1_0"])
def test_torchvision_classifiers_have_a_1000_way_head_found_by_name(arch):
    net = torchvision.models.get_model(arch, weights=None)
    assert output_size(net) == N_IMAGENET
    assert head_name(net) + ".weight" in net.state_dict()


def test_network_loading_accepts_a_1000_way_state_dict_and_refuses_others(tmp_path):
    torch.manual_seed(0)
    reference = torchvision.models.mobilenet_v3_small()
    good = tmp_path / "pretrained.pth"
    torch.save(reference.state_dict(), good)
    net = load_imagenet_network("mobilenet_v3_small", str(good), str(tmp_path))
    assert not net.training
    x = torch.randn(2, 3, 64, 64)
    torch.testing.assert_close(imagenet_forward(net)(x)[OUTPUT], reference.eval()(x))
    finetuned = torchvision.models.mobilenet_v3_small(num_classes=40)
    torch.save(finetuned.state_dict(), tmp_path / "finetuned.pth")
    with pytest.raises(ValueError, match="classifier.3.weight has 40 outputs, not ImageNet's"):
        load_imagenet_network("mobilenet_v3_small", str(tmp_path / "finetuned.pth"))
    with pytest.raises(ValueError, match="is not a state dict of resnet18"):
        load_imagenet_network("resnet18", str(good))
    with pytest.raises(ValueError, match="'r3d_18' is not a torchvision ImageNet classifier"):
        load_imagenet_network("r3d_18", "imagenet")
    with pytest.raises(ValueError, match="weights='none': the ImageNet expert needs"):
        load_imagenet_network("resnet18", "none")


# --------------------------------------------------------------- inside the fusion

STANDIN_SIZE = 32


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> dict:
    """Generated data and a stand-in "pretrained" resnet18: random frozen body, and a
    1000-way head trained to put each covered class's images on its first ImageNet index.

    Random features are too weak for a head to generalise to new images within seconds, so
    the stand-in has seen the very photos it is evaluated on (as ImageNet may have seen some
    of AwA2's): the test checks the mapping, the aggregation and the fusion's use of a head
    that knows some classes, not transfer."""
    out = tmp_path_factory.mktemp("imagenet-world")
    root = write_demo_dataset(out, train_per_class=6, n_test=300, width=(40, 64), seed=5,
                              odd_files=False)
    ch = load_challenge(root)
    with open(out / "answer_key.csv") as f:
        rows = list(csv.DictReader(f))
    labelled = [(root / "test" / r["image_id"], ch.classes.index(r["class"])) for r in rows]
    first_index = {}
    for row in read_mapping():
        for c in row.classes:
            first_index.setdefault(ch.classes.index(c), row.index)
    torch.manual_seed(0)
    tv = torchvision.models.resnet18()
    tv.fc = torch.nn.Identity()
    tv.eval()

    def features(paths: list[Path]) -> np.ndarray:
        got = run_images(lambda x: {"f": tv(x)}, FileImages(paths), range(len(paths)),
                         ViewPlan(STANDIN_SIZE), CPU, batch_images=64, workers=0,
                         keep={"f": "first"})
        return got["f"]

    seen_paths = [p for p, _ in ch.train_samples]
    train_labels = np.array([c for _, c in ch.train_samples])
    train_features = features(seen_paths)
    test_features = features([p for p, _ in labelled])
    test_labels = np.array([c for _, c in labelled])
    pre_x = np.concatenate([train_features[np.isin(train_labels, list(first_index))],
                            test_features[np.isin(test_labels, list(first_index))]])
    pre_y = [first_index[int(c)] for c in [*train_labels, *test_labels] if c in first_index]
    x, y = torch.as_tensor(pre_x), torch.as_tensor(pre_y)
    fc = torch.nn.Linear(x.shape[1], N_IMAGENET)
    mean, std = x.mean(0), x.std(0) + 1e-6
    opt = torch.optim.Adam(fc.parameters(), lr=0.05)
    for _ in range(150):
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(fc((x - mean) / std), y) + 1e-3 * (
            fc.weight ** 2).sum()
        loss.backward()
        opt.step()
    with torch.no_grad():  # fold the standardisation into the head
        fc.weight /= std
        fc.bias -= fc.weight @ mean
    weights = out / "standin-imagenet.pth"
    torch.save({**tv.state_dict(), "fc.weight": fc.weight.detach(), "fc.bias": fc.bias.detach()},
               weights)
    return dict(ch=ch, weights=weights, eval=labelled, train_features=train_features,
                train_labels=train_labels, test_features=test_features,
                attributes=load_class_attributes(root, ch.classes)[0])


def test_the_expert_beats_the_attribute_model_on_the_classes_its_head_knows(world, tmp_path):
    ch = world["ch"]
    net = load_imagenet_network("resnet18", str(world["weights"]), str(tmp_path))
    paths = [p for p, _ in world["eval"]]
    truth = np.array([c for _, c in world["eval"]])
    logits = run_images(imagenet_forward(net), FileImages(paths), range(len(paths)),
                        ViewPlan(STANDIN_SIZE, votes=1), CPU, batch_images=64, workers=0,
                        keep=KEEP)[OUTPUT]
    assert logits.shape == (len(paths), 2, N_IMAGENET)
    imagenet = make_expert(logits, ch.classes)
    attributes = fusion.AttributeExpert(world["test_features"], world["train_features"],
                                        world["train_labels"], world["attributes"])
    known = np.isin(truth, [ch.classes.index(c) for c in COVERED_UNSEEN])
    assert known.sum() >= 30

    def accuracy(pred: np.ndarray, mask: np.ndarray) -> float:
        return float((pred[mask] == truth[mask]).mean())

    alone_imagenet = accuracy(imagenet.scores(ch.seen).argmax(1), known)
    alone_attributes = accuracy(attributes.scores(ch.seen).argmax(1), known)
    assert alone_imagenet > alone_attributes + 0.2, (alone_imagenet, alone_attributes)

    # the fusion: weights and gamma by leave-classes-out on seen-class images (held out
    # from the stand-in head's training), then applied to the evaluation images
    seen_eval = np.isin(truth, ch.seen)
    state = fusion.protocol(
        [make_expert(logits[seen_eval], ch.classes),
         fusion.AttributeExpert(world["test_features"][seen_eval],
                                world["train_features"], world["train_labels"],
                                world["attributes"])],
        truth[seen_eval], ch.seen, len(ch.classes), folds=4, seed=0)
    assert state.weights[0] > 0, state.report
    alone = state.report["protocol"]["experts"]
    assert alone["imagenet"]["u"] > alone["attributes"]["u"]
    fused = fusion.apply_fusion(state, [imagenet, attributes])
    assert accuracy(fused, known) > alone_attributes + 0.2, (accuracy(fused, known),
                                                             alone_attributes)


def test_cli_uses_the_imagenet_head_for_the_unseen_classes_it_knows(world, tmp_path):
    """weights=<the stand-in> and no image-text model: train fits resnet + attributes +
    imagenet, and predict names the covered unseen classes (the head's job) while moose and
    rhinoceros stay the attribute model's."""
    from conftest import run_cli

    root = world["ch"].root
    out = tmp_path / "run"
    args = ["--data-root", str(root), "--output-dir", str(out), "--input-root",
            str(tmp_path / "none"), "--num-workers", "0", "--vl-model", "", "--tta-votes", "1"]
    done = run_cli("train", *args, "--arch", "resnet18", "--weights", str(world["weights"]),
                   "--trainable", "layer4,fc", "--image-size", str(STANDIN_SIZE), "--epochs",
                   "1", "--batch-size", "32", "--lr", "0.01")
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads((out / "fusion.json").read_text())
    assert report["names"] == ["resnet", "attributes", "imagenet"]
    assert report["protocol"]["weights"]["imagenet"] > 0, report["protocol"]["weights"]
    assert run_cli("predict", *args).returncode == 0
    pred = dict(pd.read_csv(out / "submission.csv").values)
    truth = {p.name: world["ch"].classes[c] for p, c in world["eval"]}
    covered = [name for name, c in truth.items() if c in COVERED_UNSEEN]
    assert sum(pred[n] == truth[n] for n in covered) / len(covered) > 0.5
