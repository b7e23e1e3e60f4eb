"""Voting and the submission writer."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from pixelplay_lib.inference import ViewPlan, run_images
from pixelplay_lib.pipeline import EpochBatches
from pixelplay_lib.predict import vote, write_submission
from pixelplay_lib.runtime import Runtime


class ArrayImages:
    errors: dict = {}

    def __init__(self, n: int):
        self.arrays = [np.full((40, 50, 3), 10 * i, np.uint8) for i in range(n)]

    def __len__(self):
        return len(self.arrays)

    def get(self, i):
        return self.arrays[i]


class CountingNet(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.batch_sizes = []
        self.lin = torch.nn.Linear(3, 4)

    def forward(self, x):
        self.batch_sizes.append(len(x))
        f = x.mean((2, 3))
        return {"logits": self.lin(f), "features": f, "pixels": x}


CPU = Runtime(torch.device("cpu"), None, False)


@pytest.mark.parametrize("votes", [1, 7])
def test_voting_runs_every_view_in_batches(votes):
    n = 10
    net = CountingNet()
    out = run_images(net, ArrayImages(n), range(n), ViewPlan(16, votes=votes), CPU,
                     batch_images=4, workers=0, keep={"logits": "all", "features": "first"})
    # every image: one central view + `votes` augmented ones, never one image at a time
    assert net.batch_sizes == [4 * (votes + 1)] * 2 + [2 * (votes + 1)]
    assert out["logits"].shape == (n, votes + 1, 4)
    assert out["features"].shape == (n, 3)  # only the central view's: nothing more is kept
    assert "pixels" not in out
    assert list(out["index"]) == list(range(n))


def test_views_order_flip_and_reductions():
    """Results follow the caller's order; the flip view mirrors the central one; "mean"
    averages over views."""
    order = [4, 0, 3]
    keep = {"pixels": "all", "features": "mean"}
    out = run_images(CountingNet(), ArrayImages(5), order, ViewPlan(16, votes=2, flip=True),
                     CPU, batch_images=2, workers=0, keep=keep, labels=[7, 8, 9, 10, 11])
    assert list(out["index"]) == order and list(out["labels"]) == [11, 7, 10]
    pixels = out["pixels"]
    assert pixels.shape == (3, 4, 3, 16, 16)
    assert np.array_equal(pixels[:, 1], pixels[:, 0][..., ::-1])
    assert not np.allclose(pixels[:, 2], pixels[:, 3])  # two different augmented votes
    assert np.allclose(out["features"], pixels.mean((3, 4)).mean(1), atol=1e-5)


def test_undecodable_images_are_left_out_or_kept_black():
    class Broken(ArrayImages):
        def get(self, i):
            if i == 1:
                raise OSError("truncated")
            return super().get(i)

    keep = {"features": "first"}
    left = run_images(CountingNet(), Broken(3), range(3), ViewPlan(16), CPU, batch_images=2,
                      workers=0, keep=keep)
    assert list(left["index"]) == [0, 2] and left["failed"][0][0] == 1
    kept = run_images(CountingNet(), Broken(3), range(3), ViewPlan(16), CPU, batch_images=2,
                      workers=0, keep=keep, keep_failed=True)
    assert list(kept["index"]) == [0, 1, 2] and "truncated" in kept["failed"][0][1]


def test_hard_and_soft_vote():
    # image 0: votes 2,2,1 -> hard 2; probabilities favour 1 -> soft 1
    logits = np.log(np.array([[[0.1, 0.1, 0.45, 0.35], [0.1, 0.1, 0.45, 0.35],
                               [0.0001, 0.9, 0.05, 0.0499]]]))
    assert vote(logits, "hard", [0, 1, 2, 3])[0] == 2
    assert vote(logits, "soft", [0, 1, 2, 3])[0] == 1
    # classes outside `allowed` (unseen ones) are never voted for
    assert vote(logits, "hard", [0, 1, 3])[0] == 3


def test_hard_vote_ties_go_to_the_higher_mean_probability():
    logits = np.log(np.array([[[0.6, 0.4], [0.3, 0.7]]]))
    assert vote(logits, "hard", [0, 1])[0] == 1


@pytest.fixture
def test_files(tmp_path) -> list[Path]:
    return [tmp_path / f"{i:05d}.jpg" for i in (3, 1, 2)]


def frame(ids, labels):
    return pd.DataFrame({"image_id": ids, "class": labels})


def test_submission_is_written_sorted_with_header(tmp_path, test_files):
    path = write_submission(frame(["00003.jpg", "00001.jpg", "00002.jpg"], ["b", "a", "b"]),
                            test_files, ["a", "b"], tmp_path / "submission.csv")
    assert path.read_text().splitlines() == ["image_id,class", "00001.jpg,a", "00002.jpg,b",
                                             "00003.jpg,b"]


@pytest.mark.parametrize("ids, labels, message", [
    (["00001.jpg", "00002.jpg"], ["a", "a"], "without a row"),
    (["00001.jpg", "00002.jpg", "00002.jpg", "00003.jpg"], ["a"] * 4, "duplicated"),
    (["00001.jpg", "00002.jpg", "00003.jpg", "00009.jpg"], ["a"] * 4, "unknown images"),
    (["00001.jpg", "00002.jpg", "00003.jpg"], ["a", "zebra", "a"], "not in classes.txt"),
])
def test_incomplete_or_wrong_frames_are_refused(tmp_path, test_files, ids, labels, message):
    target = tmp_path / "submission.csv"
    with pytest.raises(ValueError, match=message):
        write_submission(frame(ids, labels), test_files, ["a", "b"], target)
    assert not target.exists()


def test_sample_submission_header_and_order_win(tmp_path, test_files):
    sample = tmp_path / "sample_submission.csv"
    sample.write_text("id,label\n00002.jpg,x\n00003.jpg,x\n00001.jpg,x\n")
    path = write_submission(frame(["00001.jpg", "00002.jpg", "00003.jpg"], ["a", "b", "a"]),
                            test_files, ["a", "b"], tmp_path / "sub.csv", sample)
    assert path.read_text().splitlines() == ["id,label", "00002.jpg,b", "00003.jpg,a",
                                             "00001.jpg,a"]


@pytest.mark.parametrize("width, suffix", [(5, ".jpg"), (3, ".png")])
def test_sample_submission_ids_without_zero_padding_match_by_number(tmp_path, width, suffix):
    files = [tmp_path / f"{i:0{width}d}{suffix}" for i in (1, 2, 3)]
    sample = tmp_path / "sample_submission.csv"
    sample.write_text("image_id,class\n2,x\n3,x\n1,x\n")
    path = write_submission(frame([f.name for f in files], ["a", "b", "a"]), files,
                            ["a", "b"], tmp_path / "sub.csv", sample)
    assert path.read_text().splitlines() == ["image_id,class", "2,b", "3,a", "1,a"]


def test_predict_before_training_finished_says_to_resume(tmp_path):
    from pixelplay_lib.inference import load_trained

    (tmp_path / "ckpt-e0003-s0000000.pt").write_bytes(b"x")
    with pytest.raises(FileNotFoundError, match="stopped before its end.*ckpt-e0003.*again"):
        load_trained(tmp_path / "model.pt")
    with pytest.raises(FileNotFoundError, match="train first"):
        load_trained(tmp_path / "elsewhere" / "model.pt")


def test_score_splits_seen_and_unseen_found_under_input_root(demo_dir):
    from pixelplay_lib.score import score_submission

    answers = demo_dir / "answer_key.csv"
    key = pd.read_csv(answers)
    wrong_unseen = key.assign(**{"class": ["antelope" if c in {"fox", "horse"} else c
                                           for c in key["class"]]})
    path = demo_dir.parent / "scored.csv"
    wrong_unseen.to_csv(path, index=False)
    result = score_submission(path, answers, "", input_root=str(demo_dir))  # Kaggle's way
    n_wrong = int(key["class"].isin(["fox", "horse"]).sum())
    assert result["seen_accuracy"] == 1.0 and result["images"] == len(key)
    assert result["accuracy"] == round(1 - n_wrong / len(key), 4)
    assert result["unseen_accuracy"] < 1.0 or n_wrong == 0


@pytest.mark.parametrize("n, world", [(35, 2), (33, 2), (37, 4), (40, 4)])
def test_rank_batches_cut_the_single_process_batches(n, world):
    single = EpochBatches(range(n), 16, seed=3)
    ranks = [EpochBatches(range(n), 16, seed=3, rank=r, world=world) for r in range(world)]
    for sampler in [single, *ranks]:
        sampler.epoch = 2
    per_rank = [list(r) for r in ranks]
    for b, whole in enumerate(single):
        if len(whole) < world:  # would leave a rank empty: dropped when distributed
            assert all(len(p) == b for p in per_rank)
            continue
        parts = [p[b] for p in per_rank]
        assert all(parts) and sum(parts, []) == whole
