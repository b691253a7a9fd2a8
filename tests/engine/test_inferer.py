"""The Inferer: the same numbers as the per-call inference it replaced, and its divisor from the network."""

import dataclasses

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from monai.inferers import sliding_window_inference

from semiseg.engine.inferer import Inferer, flip_axes, network_divisor
from semiseg.nets import UNet


def _unet(dims: int) -> UNet:
    torch.manual_seed(0)
    return UNet(spatial_dims=dims, in_channels=1, out_channels=3, widths=(4, 8, 16)).eval()


def _inferer(dims: int, net: torch.nn.Module, label_mode: str = "multiclass") -> Inferer:
    return Inferer(dim=dims, label_mode=label_mode, device=torch.device("cpu"), divisor=network_divisor([net]),
                   roi_size=(8, 8, 8), batch_size=3, overlap=0.5)


def _image(shape=(1, 10, 13, 7)) -> np.ndarray:
    return np.random.default_rng(0).normal(size=shape).astype(np.float32)


def _slice_reference(net, volume: torch.Tensor, divisor: int, batch: int) -> torch.Tensor:
    """Slice-wise inference written out: centred zero padding to the divisor, crop, softmax, stack."""
    out = []
    slices = volume.permute(3, 0, 1, 2)
    for start in range(0, slices.shape[0], batch):
        chunk = slices[start : start + batch]
        h, w = chunk.shape[2:]
        ph, pw = -h % divisor, -w % divisor
        padded = F.pad(chunk, (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2))
        logits = net(padded)[:, :, ph // 2 : ph // 2 + h, pw // 2 : pw // 2 + w]
        out.append(torch.softmax(logits.float(), dim=1))
    return torch.cat(out).permute(1, 2, 3, 0)


@torch.no_grad()
def test_slice_wise_2d_equals_the_written_out_loop():
    net, image = _unet(2), _image()
    got = _inferer(2, net).probabilities(net, image)
    expected = _slice_reference(net, torch.from_numpy(image), divisor=4, batch=3).numpy()
    assert got.shape == (3, 10, 13, 7) and np.array_equal(got, expected)


@torch.no_grad()
def test_a_2d_case_keeps_its_own_shape():
    net, image = _unet(2), _image((1, 10, 13))
    got = _inferer(2, net).probabilities(net, image)
    expected = _slice_reference(net, torch.from_numpy(image[..., None]), divisor=4, batch=3).numpy()[..., 0]
    assert got.shape == (3, 10, 13) and np.array_equal(got, expected)


@torch.no_grad()
@pytest.mark.parametrize("label_mode", ["multiclass", "multilabel"])
def test_sliding_window_3d_equals_monai_gaussian_windows(label_mode):
    net, image = _unet(3), _image((1, 12, 10, 9))
    got = _inferer(3, net, label_mode).probabilities(net, image)
    logits = sliding_window_inference(torch.from_numpy(image)[None], roi_size=(8, 8, 8), sw_batch_size=3,
                                      predictor=net, overlap=0.5, mode="gaussian").float()
    probs = torch.softmax(logits, 1) if label_mode == "multiclass" else torch.sigmoid(logits)
    assert np.array_equal(got, probs[0].numpy())


def test_divisor_comes_from_the_network():
    assert UNet(spatial_dims=2, widths=(4, 8, 16, 32)).divisor == 8
    small_head = torch.nn.Conv2d(1, 1, 1)  # a NetSpec.builder net without a divisor does not constrain
    assert network_divisor([UNet(spatial_dims=2, widths=(4, 8)), small_head]) == 2
    assert network_divisor([small_head]) == 1


def test_amp_wraps_only_the_network():
    seen = []
    inferer = Inferer(dim=2, label_mode="multiclass", device=torch.device("cpu"), divisor=1, roi_size=(4, 4),
                      batch_size=2, overlap=0.5, amp=True)

    def predictor(x):
        seen.append(torch.is_autocast_enabled("cpu"))
        return torch.cat([x, -x], 1)

    probs = inferer.probabilities(predictor, _image((1, 4, 4)))
    assert seen == [True] and probs.dtype == np.float32


# -- test-time augmentation (flips) ---------------------------------------------------------------


@torch.no_grad()
@pytest.mark.parametrize("dims", [2, 3])
def test_tta_of_a_flip_equivariant_predictor_equals_the_plain_prediction(dims):
    """A 1×1 convolution: flipping its input flips its output, so flip TTA must not change it."""
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(1, 3, 1) if dims == 2 else torch.nn.Conv3d(1, 3, 1)
    image = _image((1, 12, 10, 9))
    plain = _inferer(dims, conv).probabilities(conv, image)
    flipped = dataclasses.replace(_inferer(dims, conv), tta=True).probabilities(conv, image)
    assert flipped.shape == plain.shape == (3, 12, 10, 9)
    np.testing.assert_allclose(flipped, plain, atol=1e-6)


@torch.no_grad()
@pytest.mark.parametrize("dims", [2, 3])
def test_tta_averages_each_flip_undone(dims):
    net, image = _unet(dims), _image((1, 12, 10, 9))
    inferer = _inferer(dims, net)
    expected = np.mean([np.flip(inferer.probabilities(net, np.flip(image, axes).copy()), axes)
                        for axes in flip_axes(dims)], axis=0)
    got = dataclasses.replace(inferer, tta=True).probabilities(net, image)
    assert len(flip_axes(dims)) == 2**dims and got.shape == (3, 12, 10, 9)
    np.testing.assert_allclose(got, expected, atol=1e-5)
    assert not np.allclose(got, inferer.probabilities(net, image), atol=1e-4)  # a U-Net is not flip-invariant


@torch.no_grad()
def test_tta_keeps_a_2d_case_shape():
    net, image = _unet(2), _image((1, 10, 13))
    got = dataclasses.replace(_inferer(2, net), tta=True).probabilities(net, image)
    assert got.shape == (3, 10, 13)
    np.testing.assert_allclose(got.sum(axis=0), 1.0, atol=1e-5)
