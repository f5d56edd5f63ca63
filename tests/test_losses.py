import numpy as np
import pytest

from cvae.losses import grey_loss, grey_weight_for_epoch, kl_loss, reconstruction_loss


def test_reconstruction_is_sum_of_squares_per_image():
    x = np.zeros((2, 2, 2, 1), np.float32)
    y = np.array([[[[1.0], [0.5]], [[0.0], [0.0]]], [[[0.2], [0.2]], [[0.2], [0.2]]]], np.float32)
    np.testing.assert_allclose(np.asarray(reconstruction_loss(x, y)), [1.25, 0.16], rtol=1e-6)


def test_kl_matches_hand_computation():
    mean = np.array([[0.0, 0.0], [1.0, -2.0]], np.float32)
    log_var = np.array([[0.0, 0.0], [np.log(2.0), 0.0]], np.float32)
    # second row: -0.5 * [(1 + ln2 - 1 - 2) + (1 + 0 - 4 - 1)] = -0.5 * (ln2 - 2 - 4)
    expected = [0.0, -0.5 * (np.log(2.0) - 6.0)]
    np.testing.assert_allclose(np.asarray(kl_loss(mean, log_var)), expected, rtol=1e-6)


def test_grey_term_penalises_grey_only_above_threshold():
    y = np.array([0.0, 1.0, 0.5, 0.9, 1.5], np.float32).reshape(1, 5, 1, 1)
    # y(1-y) = 0, 0, 0.25, 0.09, -0.75
    np.testing.assert_allclose(np.asarray(grey_loss(y, 0.0)), [0.34], rtol=1e-6)
    np.testing.assert_allclose(np.asarray(grey_loss(y, 0.1)), [0.15], rtol=1e-5)
    np.testing.assert_allclose(np.asarray(grey_loss(y, 0.25)), [0.0], atol=1e-7)


@pytest.mark.parametrize("epoch, expected", [(1, 0.0), (2, 0.0), (3, 0.32), (9, 0.32)])
def test_grey_weight_zero_during_warmup(epoch, expected):
    assert grey_weight_for_epoch(epoch, 0.32, warmup_epochs=2) == expected


def test_no_warmup_means_grey_from_epoch_one():
    assert grey_weight_for_epoch(1, 0.5, warmup_epochs=0) == 0.5
