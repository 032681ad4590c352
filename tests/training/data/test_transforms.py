import pytest
import torch

from training.data import AugmentConfig, augment, normalize, random_crop_flip


def _window(x: torch.Tensor, padding: int, oy: int, ox: int) -> torch.Tensor:
    """The [H, W] window at (oy, ox) of the zero-padded image x [C, H, W], built by hand."""
    _, h, w = x.shape
    out = torch.zeros_like(x)
    for i in range(h):
        for j in range(w):
            si, sj = oy + i - padding, ox + j - padding
            if 0 <= si < h and 0 <= sj < w:
                out[:, i, j] = x[:, si, sj]
    return out


def _matches(x: torch.Tensor, y: torch.Tensor, padding: int) -> list[tuple[int, int, bool]]:
    found = []
    for oy in range(2 * padding + 1):
        for ox in range(2 * padding + 1):
            for flipped in (False, True):
                win = _window(x, padding, oy, ox)
                if torch.equal(win.flip(-1) if flipped else win, y):
                    found.append((oy, ox, flipped))
    return found


def test_crop_is_a_shifted_window_of_the_padded_image() -> None:
    # distinct positive values, so every (offset, flip) gives a different picture
    x = (torch.arange(2 * 5 * 6) + 1).view(1, 2, 5, 6).to(torch.uint8).repeat(64, 1, 1, 1)
    y = random_crop_flip(x, padding=2, flip=True, generator=torch.Generator().manual_seed(0))
    assert y.shape == x.shape and y.dtype == torch.uint8
    seen = set()
    for b in range(64):
        match = _matches(x[b], y[b], 2)
        assert len(match) == 1
        seen.add(match[0])
    offsets = {(oy, ox) for oy, ox, _ in seen}
    assert len(offsets) >= 15  # 25 possible, 64 draws
    assert {f for _, _, f in seen} == {False, True}


def test_hand_shift_example() -> None:
    x = torch.tensor([[[1.0, 2.0], [3.0, 4.0]]])  # [C=1, 2, 2]
    assert torch.equal(_window(x, 1, 0, 0), torch.tensor([[[0.0, 0.0], [0.0, 1.0]]]))
    ys = random_crop_flip(x.repeat(200, 1, 1, 1), 1, False, torch.Generator().manual_seed(1))
    assert any(torch.equal(y, torch.tensor([[[0.0, 0.0], [0.0, 1.0]]])) for y in ys)
    assert any(torch.equal(y, torch.tensor([[[4.0, 0.0], [0.0, 0.0]]])) for y in ys)
    assert any(torch.equal(y, x) for y in ys)


def test_flip_only_reverses_width() -> None:
    x = torch.rand(100, 3, 4, 7)
    y = random_crop_flip(x, padding=0, flip=True, generator=torch.Generator().manual_seed(0))
    same = [torch.equal(a, b) for a, b in zip(y, x, strict=True)]
    flipped = [torch.equal(a, b.flip(-1)) for a, b in zip(y, x, strict=True)]
    assert all(s != f for s, f in zip(same, flipped, strict=True))
    assert 30 < sum(flipped) < 70
    assert torch.equal(random_crop_flip(x, padding=0, flip=False), x)


def test_reproducible_with_generator() -> None:
    x = torch.randint(0, 256, (16, 1, 28, 28), dtype=torch.uint8)
    cfg = AugmentConfig()
    a = augment(x, cfg, torch.Generator().manual_seed(5))
    b = augment(x, cfg, torch.Generator().manual_seed(5))
    c = augment(x, cfg, torch.Generator().manual_seed(6))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_normalize_values() -> None:
    x = torch.tensor([[[[0, 255]], [[51, 102]]]], dtype=torch.uint8)  # [1, 2, 1, 2]
    y = normalize(x, mean=(0.5, 0.2), std=(0.25, 0.5))
    assert y.dtype == torch.float32
    expected = torch.tensor([[[[-2.0, 2.0]], [[0.0, 0.4]]]])
    torch.testing.assert_close(y, expected)
    with pytest.raises(ValueError, match="2 channels but mean"):
        normalize(x, mean=(0.5,), std=(0.25,))
