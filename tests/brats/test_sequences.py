"""Choosing and removing sequences: unimodal selection, modality dropout, zero-filled audit inputs."""

from __future__ import annotations

import pytest
import torch

from cggm_seg.apps.brats.sequences import (
    RandSequenceDropoutd,
    SelectSequencesd,
    check_sequences,
    zero_sequences,
)


def _image() -> torch.Tensor:
    return torch.arange(1, 5, dtype=torch.float32).view(4, 1, 1, 1).expand(4, 3, 3, 3).clone()


def test_zero_sequences_zeroes_only_the_missing_channels():
    image = _image()
    out = zero_sequences(image, [True, False, True, False])
    assert out[:, 0, 0, 0].tolist() == [1.0, 0.0, 3.0, 0.0]
    assert image[:, 0, 0, 0].tolist() == [1.0, 2.0, 3.0, 4.0]  # a copy: the input is untouched
    batch = zero_sequences(image[None].repeat(2, 1, 1, 1, 1), [False, True, True, True])
    assert batch[:, :, 0, 0, 0].tolist() == [[0.0, 2.0, 3.0, 4.0]] * 2
    with pytest.raises(ValueError, match="4 sequences"):
        zero_sequences(image, [True, False])


def test_select_sequences_keeps_the_named_channels_in_order():
    out = SelectSequencesd("image", ["t2"])({"image": _image()})["image"]
    assert out.shape == (1, 3, 3, 3) and float(out[0, 0, 0, 0]) == 3.0
    out = SelectSequencesd("image", ["flair", "t1"])({"image": _image()})["image"]
    assert out[:, 0, 0, 0].tolist() == [4.0, 1.0]
    same = _image()
    assert SelectSequencesd("image")({"image": same})["image"] is same  # all four: a no-op
    with pytest.raises(ValueError, match="unknown"):
        SelectSequencesd("image", ["t2w"])
    with pytest.raises(ValueError, match="expected the 4 sequences"):
        SelectSequencesd("image", ["t2"])({"image": torch.zeros(3, 2, 2, 2)})
    assert check_sequences("t1") == ("t1",)
    with pytest.raises(ValueError, match="distinct"):
        check_sequences(["t1", "t1"])


def test_modality_dropout_rate_never_empty_and_seeded():
    drop = RandSequenceDropoutd("image", prob=0.5)
    drop.set_random_state(0)
    kept = torch.stack([(drop({"image": _image()})["image"][:, 0, 0, 0] != 0) for _ in range(2000)])
    assert kept.any(1).all(), "a sample lost every sequence"
    # P(dropped) = 0.5, except that an all-dropped draw (1/16) keeps one: 0.5 - 1/16 / 4 = 0.484
    assert float(1 - kept.float().mean()) == pytest.approx(0.5 - 1 / 64, abs=0.02)
    again = RandSequenceDropoutd("image", prob=0.5)
    again.set_random_state(0)
    replay = torch.stack([(again({"image": _image()})["image"][:, 0, 0, 0] != 0) for _ in range(2000)])
    assert torch.equal(kept, replay)
    almost_all = RandSequenceDropoutd("image", prob=0.99)
    almost_all.set_random_state(1)
    assert all(
        int((almost_all({"image": _image()})["image"][:, 0, 0, 0] != 0).sum()) >= 1 for _ in range(200)
    )


def test_modality_dropout_zero_is_a_no_op_and_bad_rates_fail():
    off = RandSequenceDropoutd("image", prob=0.0)
    image = _image()
    assert off({"image": image})["image"] is image
    for bad in (-0.1, 1.0):
        with pytest.raises(ValueError, match=r"prob must be in \[0, 1\)"):
            RandSequenceDropoutd("image", prob=bad)
