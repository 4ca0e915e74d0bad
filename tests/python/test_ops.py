"""jit_embedding.ops against independent computations in torch and NumPy (CPU), the pure-torch fallback against the
C++ reference, argument errors, the torch.ops registrations, and (on a GPU machine) the CUDA path against the CPU.

Independent means: scales from NumPy's fp32 absmax / qmax, codes from torch's own casts (``.to(float8_e4m3fn)``,
``torch.round``), casts from ``Tensor.to``, resizes from ``F.interpolate`` / ``F.adaptive_avg_pool2d``."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from jit_embedding import _C, ops

FLOATS = [torch.float32, torch.float16, torch.bfloat16]
FP8 = torch.float8_e4m3fn
CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
CLIP_STD = [0.26862954, 0.26130258, 0.27577711]
OPS = [
    "quantize_fp8_rowwise",
    "dequantize_fp8_rowwise",
    "quantize_fp8_per_tensor",
    "dequantize_fp8_per_tensor",
    "quantize_int8_rowwise",
    "dequantize_int8_rowwise",
    "cast",
    "preprocess",
]


def bits(t: torch.Tensor) -> torch.Tensor:
    """The raw bits of t as an integer tensor of the same element size (NaN payloads and -0 included)."""
    return t.view({1: torch.uint8, 2: torch.int16, 4: torch.int32}[t.element_size()])


def assert_bits_equal(actual: torch.Tensor, expected: torch.Tensor, any_nan: bool = False) -> None:
    """Same dtype, shape and bits. any_nan: a NaN matches any NaN (the GPU writes its one canonical NaN, 0x7FFFFFFF
    in fp32, where x86 keeps the quiet NaN it was given; a NaN's payload and sign are not part of the contract)."""
    assert actual.dtype == expected.dtype and actual.shape == expected.shape
    diff = bits(actual) != bits(expected)
    if any_nan and actual.is_floating_point():
        diff &= ~(actual.isnan() & expected.isnan())
    assert not diff.any(), f"{int(diff.sum())} elements differ, first at {diff.nonzero()[0].tolist()}"


def gaussian(shape, seed: int = 0, scale: float = 1.0) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed)) * scale


def frames(shape, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 256, shape, dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


def numpy_scales(x: torch.Tensor, qmax: float, axis=-1) -> torch.Tensor:
    """The scale rule computed in NumPy fp32: max |x| over finite values / qmax, 1 where that is 0."""
    a = x.float().numpy()
    absmax = np.where(np.isfinite(a), np.abs(a), np.float32(0)).max(axis=axis, initial=np.float32(0))
    scale = (absmax.astype(np.float32) / np.float32(qmax)).astype(np.float32)
    return torch.from_numpy(np.where(scale > 0, scale, np.float32(1)).astype(np.float32))


def rel_rms(approx: torch.Tensor, x: torch.Tensor) -> float:
    x64 = x.double()
    return float((approx.double() - x64).pow(2).mean().sqrt() / x64.pow(2).mean().sqrt())


# ---- fp8 -----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize("shape", [(7, 33), (3, 5, 64), (1,), (64, 1024)])
def test_fp8_rowwise_matches_torch_cast(dtype, shape):
    x = gaussian(shape, scale=3.0).to(dtype)
    codes, scales = ops.quantize_fp8_rowwise(x)
    expected_scales = numpy_scales(x, 448.0).reshape(shape[:-1])
    assert codes.dtype == FP8 and codes.shape == x.shape
    assert scales.dtype == torch.float32 and scales.shape == x.shape[:-1]
    assert_bits_equal(scales, expected_scales)
    assert_bits_equal(codes, (x.float() / expected_scales.unsqueeze(-1)).to(FP8))


@pytest.mark.parametrize("dtype", FLOATS)
def test_fp8_per_tensor_matches_torch_cast(dtype):
    x = gaussian((5, 7, 61), seed=1, scale=0.01).to(dtype)
    codes, scale = ops.quantize_fp8_per_tensor(x)
    expected = numpy_scales(x.reshape(-1), 448.0).reshape(1)
    assert codes.shape == x.shape and scale.shape == (1,)
    assert_bits_equal(scale, expected)
    assert_bits_equal(codes, (x.float() / expected).to(FP8))


def test_fp8_rounds_to_nearest_even_like_torch():
    # Scale 1 (absmax 448): exact ties between neighbouring codes, normal and subnormal, both signs.
    ties = [1.0625, 1.1875, 3.25, 3.75, 240.0, 416.0, 2.0**-10, 3 * 2.0**-10, 5 * 2.0**-10, 0.0146484375]
    x = torch.tensor([448.0] + ties + [-t for t in ties])
    codes, scales = ops.quantize_fp8_rowwise(x)
    assert scales.item() == 1.0
    assert_bits_equal(codes, x.to(FP8))
    codes, scale = ops.quantize_fp8_per_tensor(x)
    assert scale.item() == 1.0
    assert_bits_equal(codes, x.to(FP8))


def test_fp8_special_values_follow_the_contract():
    nan, inf = float("nan"), float("inf")
    x = torch.tensor(
        [
            [2.0, nan, inf, -inf, -2.0, 0.0, -0.0, 1e-30],  # NaN/Inf ignored by the absmax; Inf saturates
            [0.0] * 8,  # all zero: scale 1
            [nan] * 8,  # nothing finite: scale 1, every code NaN (0x7F, whatever the sign)
            [1e-45] * 8,  # absmax / 448 underflows to 0: scale 1
        ]
    )
    codes, scales = ops.quantize_fp8_rowwise(x)
    assert scales.tolist() == [np.float32(2.0) / np.float32(448.0), 1.0, 1.0, 1.0]
    raw = bits(codes).tolist()
    assert raw[0] == [0x7E, 0x7F, 0x7E, 0xFE, 0xFE, 0x00, 0x80, 0x00]
    assert raw[1] == [0] * 8 and raw[2] == [0x7F] * 8 and raw[3] == [0] * 8
    # Decoding: 0x7F is NaN, saturated codes give +-448 * scale.
    back = ops.dequantize_fp8_rowwise(codes, scales)
    assert torch.isnan(back[0, 1]) and back[0, 2].item() == pytest.approx(2.0) and back[0, 3].item() == -2.0
    assert torch.isnan(back[2]).all()


def test_fp8_per_tensor_saturates_inf_and_empty_gets_scale_1():
    codes, scale = ops.quantize_fp8_per_tensor(torch.tensor([float("inf"), -float("inf"), 1.0, float("nan")]))
    assert scale.item() == np.float32(1.0) / np.float32(448.0)
    assert bits(codes).tolist() == [0x7E, 0xFE, 0x7E, 0x7F]
    codes, scale = ops.quantize_fp8_per_tensor(torch.empty(0, 3))
    assert codes.shape == (0, 3) and scale.tolist() == [1.0]


def test_rowwise_empty_rows_and_columns():
    codes, scales = ops.quantize_fp8_rowwise(torch.empty(3, 0))
    assert codes.shape == (3, 0) and scales.tolist() == [1.0, 1.0, 1.0]
    codes, scales = ops.quantize_int8_rowwise(torch.empty(0, 5, dtype=torch.bfloat16))
    assert codes.shape == (0, 5) and scales.shape == (0,)
    assert ops.dequantize_int8_rowwise(codes, scales).shape == (0, 5)


@pytest.mark.parametrize("out", FLOATS)
def test_fp8_dequantize_is_one_fp32_multiply(out):
    x = gaussian((33, 100), seed=2)
    codes, scales = ops.quantize_fp8_rowwise(x)
    assert_bits_equal(ops.dequantize_fp8_rowwise(codes, scales, out), (codes.float() * scales[:, None]).to(out))
    assert_bits_equal(
        ops.dequantize_fp8_rowwise(codes.view(torch.uint8), scales, out), (codes.float() * scales[:, None]).to(out)
    )
    codes, scale = ops.quantize_fp8_per_tensor(x)
    assert_bits_equal(ops.dequantize_fp8_per_tensor(codes, scale, out), (codes.float() * scale).to(out))
    assert_bits_equal(ops.dequantize_fp8_per_tensor(codes, scale.reshape(()), out), (codes.float() * scale).to(out))


# ---- int8 ----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize("shape", [(9, 77), (2, 3, 128), (5,)])
def test_int8_rowwise_matches_round_half_even(dtype, shape):
    x = gaussian(shape, seed=3, scale=2.0).to(dtype)
    codes, scales = ops.quantize_int8_rowwise(x)
    expected_scales = numpy_scales(x, 127.0).reshape(shape[:-1])
    assert codes.dtype == torch.int8 and scales.shape == x.shape[:-1]
    assert_bits_equal(scales, expected_scales)
    q = x.float().numpy() / expected_scales.unsqueeze(-1).numpy()
    expected = np.clip(np.rint(q), -127, 127).astype(np.int8)  # np.rint: nearest, ties to even
    assert np.array_equal(codes.numpy(), expected)
    assert_bits_equal(ops.dequantize_int8_rowwise(codes, scales, dtype), (codes.float() * scales[..., None]).to(dtype))


def test_int8_ties_nan_and_inf():
    nan, inf = float("nan"), float("inf")
    x = torch.tensor([127.0, 0.5, 1.5, 2.5, -0.5, -2.5, 126.5, nan, inf, -inf])
    codes, scales = ops.quantize_int8_rowwise(x)
    assert scales.item() == 1.0
    assert codes.tolist() == [127, 0, 2, 2, 0, -2, 126, 0, 127, -127]
    x = torch.full((4,), -1e9)  # every code at the bottom of the range: -127, never -128
    assert ops.quantize_int8_rowwise(x)[0].tolist() == [-127] * 4


# ---- round trips on standard Gaussian [4096, 1024] ------------------------------------------------------------------


@pytest.fixture(scope="module")
def big_gaussian() -> torch.Tensor:
    return gaussian((4096, 1024), seed=4)


def test_round_trip_errors_on_gaussian(big_gaussian):
    x = big_gaussian
    fp8_rowwise = rel_rms(ops.dequantize_fp8_rowwise(*ops.quantize_fp8_rowwise(x)), x)
    fp8_tensor = rel_rms(ops.dequantize_fp8_per_tensor(*ops.quantize_fp8_per_tensor(x)), x)
    int8_rowwise = rel_rms(ops.dequantize_int8_rowwise(*ops.quantize_int8_rowwise(x)), x)
    bf16 = rel_rms(ops.cast(x, torch.bfloat16), x)
    fp16 = rel_rms(ops.cast(x, torch.float16), x)
    assert 0.022 < fp8_rowwise < 0.030, fp8_rowwise  # docs/kernels.md: about 2.6%
    assert 0.022 < fp8_tensor < 0.030, fp8_tensor
    assert 0.004 < int8_rowwise < 0.010, int8_rowwise
    assert 0.0010 < bf16 < 0.0025, bf16
    assert 0.00010 < fp16 < 0.00030, fp16


def test_int8_error_bound_per_element(big_gaussian):
    x = big_gaussian[:256]
    codes, scales = ops.quantize_int8_rowwise(x)
    err = (codes.float() * scales[:, None] - x).abs()
    assert (err <= scales[:, None] * (0.5 + 1e-6)).all()


# ---- cast ----------------------------------------------------------------------------------------------------------


def cast_inputs(dtype: torch.dtype) -> torch.Tensor:
    x = gaussian((4000,), seed=5, scale=100.0)
    edge = [
        0.0,
        -0.0,
        65504.0,
        65519.0,
        65520.0,
        1e6,
        -1e6,
        2.0**-24,
        3 * 2.0**-25,
        1e-30,
        1 + 2.0**-8,
        1 + 3 * 2.0**-8,
    ]
    x = torch.cat([x, torch.tensor(edge + [float("inf"), -float("inf")]), gaussian((500,), seed=6, scale=1e-6)])
    return x.to(dtype)


@pytest.mark.parametrize("src", FLOATS)
@pytest.mark.parametrize("dst", FLOATS)
def test_cast_matches_torch_to(src, dst):
    x = cast_inputs(src)
    out = ops.cast(x, dst)
    assert_bits_equal(out, x.to(dst))
    assert out.data_ptr() != x.data_ptr()


@pytest.mark.parametrize("src", FLOATS)
@pytest.mark.parametrize("dst", FLOATS)
def test_cast_nan(src, dst):
    x = torch.tensor([float("nan"), 1.0, -float("nan")]).to(src)
    out = ops.cast(x, dst)
    if src == dst:
        assert_bits_equal(out, x)  # a copy keeps the payload
    elif dst != torch.float32:
        assert bits(out).tolist() == [0x7FFF, bits(torch.tensor(1.0).to(dst)).item(), 0x7FFF]
    else:
        assert torch.isnan(out[0]) and torch.isnan(out[2]) and out[1].item() == 1.0


# ---- preprocess ----------------------------------------------------------------------------------------------------


def reference_preprocess(x: torch.Tensor, mean, std, size, mode) -> torch.Tensor:
    """Torch's resize on the frames as fp32, then torchvision-style normalization, [n, c, out_h, out_w] fp32."""
    v = x.permute(0, 3, 1, 2).float()
    if mode == "bilinear":
        v = F.interpolate(v, size=size, mode="bilinear", align_corners=False, antialias=False)
    elif mode == "area":
        v = F.adaptive_avg_pool2d(v, size)
    c = x.shape[-1]
    m = torch.tensor(mean, dtype=torch.float32).view(1, c, 1, 1)
    s = torch.tensor(std, dtype=torch.float32).view(1, c, 1, 1)
    return (v / 255 - m) / s


def stats(c: int) -> tuple[list[float], list[float]]:
    return (CLIP_MEAN * 6)[:c], (CLIP_STD * 6)[:c]


@pytest.mark.parametrize("c", [1, 3, 4])
@pytest.mark.parametrize("n", [0, 2])
def test_preprocess_none_is_normalization(c, n):
    x = frames((n, 9, 11, c), seed=c)
    mean, std = stats(c)
    out = ops.preprocess(x, mean, std, mode="none")
    assert out.shape == (n, c, 9, 11) and out.dtype == torch.float32 and out.is_contiguous()
    torch.testing.assert_close(out, reference_preprocess(x, mean, std, None, "none"), rtol=0, atol=1e-6)


SIZES = [
    ((1, 1), (1, 1)),
    ((1, 1), (4, 3)),  # upscale a single pixel
    ((7, 13), (5, 3)),  # odd downscale
    ((7, 13), (14, 27)),  # odd upscale
    ((16, 16), (8, 8)),
    ((9, 5), (9, 5)),  # same size
    ((32, 24), (7, 31)),  # down in one axis, up in the other
]


@pytest.mark.parametrize("mode", ["bilinear", "area"])
@pytest.mark.parametrize("c", [1, 3, 4])
@pytest.mark.parametrize(("hw", "size"), SIZES)
def test_preprocess_resize_matches_torch(mode, c, hw, size):
    x = frames((2, *hw, c), seed=hw[0] * 31 + c)
    mean, std = stats(c)
    out = ops.preprocess(x, mean, std, size=size, mode=mode)
    assert out.shape == (2, c, *size)
    torch.testing.assert_close(out, reference_preprocess(x, mean, std, size, mode), rtol=0, atol=1e-4)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("mode", ["none", "bilinear", "area"])
def test_preprocess_half_outputs_round_the_fp32_result(dtype, mode):
    x = frames((3, 13, 17, 3), seed=7)
    size = (13, 17) if mode == "none" else (6, 9)
    out = ops.preprocess(x, CLIP_MEAN, CLIP_STD, size=size, mode=mode, dtype=dtype)
    assert out.dtype == dtype
    # The contract: the fp32 value rounded once to dtype; torch's .to() rounds to nearest even.
    assert_bits_equal(out, ops.preprocess(x, CLIP_MEAN, CLIP_STD, size=size, mode=mode).to(dtype))
    ref = reference_preprocess(x, CLIP_MEAN, CLIP_STD, size, mode)
    tol = 2.0**-8 if dtype == torch.bfloat16 else 2.0**-11
    torch.testing.assert_close(out.float(), ref, rtol=tol, atol=1e-4)


def test_preprocess_single_image_video_and_scalar_stats():
    x = frames((2, 5, 10, 12, 3), seed=8)  # [n, t, h, w, c]
    out = ops.preprocess(x, 0.5, 0.5, size=(4, 6), mode="area")
    assert out.shape == (2, 3, 5, 4, 6) and out.is_contiguous()
    flat = reference_preprocess(x.reshape(10, 10, 12, 3), [0.5] * 3, [0.5] * 3, (4, 6), "area")
    expected = flat.reshape(2, 5, 3, 4, 6).permute(0, 2, 1, 3, 4)
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-4)
    for clip in range(2):  # t moved behind c: out[clip, :, t] is frame t of that clip
        assert torch.equal(out[clip, :, 3], ops.preprocess(x[clip, 3], 0.5, 0.5, size=(4, 6), mode="area"))
    one = ops.preprocess(x[0, 0], torch.tensor([0.5, 0.5, 0.5]), (0.5, 0.5, 0.5), size=np.int64(4))
    assert one.shape == (3, 4, 4)
    torch.testing.assert_close(one, ops.preprocess(x[0, :1], 0.5, 0.5, size=(4, 4))[0], rtol=0, atol=0)


def test_preprocess_accepts_non_contiguous_frames():
    x = frames((2, 12, 10, 3), seed=9)
    view = x.transpose(1, 2)  # [2, 10, 12, 3], not contiguous
    assert not view.is_contiguous()
    assert torch.equal(
        ops.preprocess(view, CLIP_MEAN, CLIP_STD, size=(5, 5)),
        ops.preprocess(view.contiguous(), CLIP_MEAN, CLIP_STD, size=(5, 5)),
    )


# ---- errors --------------------------------------------------------------------------------------------------------

F8 = torch.zeros(4, 8, dtype=FP8)
I8 = torch.zeros(4, 8, dtype=torch.int8)
S4 = torch.ones(4)
U8 = torch.zeros(2, 8, 8, 3, dtype=torch.uint8)

BAD_CALLS = [
    (lambda: ops.quantize_fp8_rowwise([1.0, 2.0]), TypeError, "x must be a torch.Tensor, not list"),
    (lambda: ops.quantize_fp8_rowwise(torch.ones(4, dtype=torch.float64)), TypeError, "float32, float16 or bfloat16"),
    (lambda: ops.dequantize_fp8_rowwise(F8, S4.numpy()), TypeError, "scales must be a torch.Tensor, not ndarray"),
    (lambda: ops.dequantize_fp8_per_tensor(F8, 1.0), TypeError, "scale must be a torch.Tensor, not float"),
    (lambda: ops.cast(torch.ones(3), "float16"), TypeError, "cast: dtype must be"),
    (lambda: ops.preprocess(U8, 0.5, 0.5, mode=1), TypeError, "mode must be a str, not int"),
    (lambda: ops.quantize_fp8_rowwise(torch.tensor(1.0)), ValueError, "at least one dimension"),
    (lambda: ops.quantize_int8_rowwise(torch.ones(3, dtype=torch.int32)), TypeError, "not torch.int32"),
    (lambda: ops.quantize_fp8_per_tensor(torch.ones(3, dtype=torch.uint8)), TypeError, "x must be float32"),
    (
        lambda: ops.dequantize_fp8_rowwise(F8, torch.ones(5)),
        ValueError,
        "scales must have shape codes.shape[:-1] = [4]",
    ),
    (lambda: ops.dequantize_fp8_rowwise(F8, S4.double()), TypeError, "scales must be float32"),
    (lambda: ops.dequantize_fp8_rowwise(I8, S4), TypeError, "codes must be torch.float8_e4m3fn or torch.uint8"),
    (lambda: ops.dequantize_fp8_rowwise(F8, S4, torch.int32), TypeError, "dtype must be torch.float32"),
    (lambda: ops.dequantize_fp8_per_tensor(F8, torch.ones(2)), ValueError, "scale must hold exactly one value"),
    (lambda: ops.dequantize_int8_rowwise(F8.view(torch.uint8), S4), TypeError, "codes must be torch.int8"),
    (lambda: ops.dequantize_int8_rowwise(I8, torch.ones(4, 1)), ValueError, "scales must have shape"),
    (lambda: ops.cast(torch.ones(3), torch.float64), TypeError, "cast: dtype must be"),
    (lambda: ops.preprocess(U8.float(), 0.5, 0.5), TypeError, "frames must be uint8"),
    (lambda: ops.preprocess(U8[0, 0], 0.5, 0.5), ValueError, "frames must be [h, w, c]"),
    (lambda: ops.preprocess(torch.zeros(1, 4, 4, 17, dtype=torch.uint8), 0.5, 0.5), ValueError, "1 to 16 channels"),
    (lambda: ops.preprocess(U8, [0.5, 0.5], 0.5), ValueError, "mean must have one value per channel (3), got 2"),
    (lambda: ops.preprocess(U8, 0.5, [0.5, 0.0, 0.5]), ValueError, "std must not be 0"),
    (lambda: ops.preprocess(U8, float("nan"), 0.5), ValueError, "mean must be finite"),
    (
        lambda: ops.preprocess(U8, 0.5, 0.5, mode="bicubic"),
        ValueError,
        "mode must be one of ['area', 'bilinear', 'none']",
    ),
    (
        lambda: ops.preprocess(U8, 0.5, 0.5, size=(4, 4), mode="none"),
        ValueError,
        "mode 'none' cannot resize 8x8 to 4x4",
    ),
    (lambda: ops.preprocess(U8, 0.5, 0.5, size=(0, 4)), ValueError, "size must be at least 1x1"),
    (lambda: ops.preprocess(U8, 0.5, 0.5, size="big"), TypeError, "size must be None, an int or (out_h, out_w)"),
    (lambda: ops.preprocess(U8, 0.5, 0.5, size=(4.0, 4)), TypeError, "size must be None, an int or (out_h, out_w)"),
    (lambda: ops.preprocess(U8, "0.5", 0.5), TypeError, "mean must be a float or a sequence"),
    (lambda: ops.preprocess(U8, 0.5, 0.5, dtype=torch.uint8), TypeError, "preprocess: dtype must be"),
]


@pytest.mark.parametrize(("call", "error", "message"), BAD_CALLS, ids=[m for _, _, m in BAD_CALLS])
def test_bad_arguments_raise_naming_the_problem(call, error, message):
    with pytest.raises(error) as info:
        call()
    assert message in str(info.value)


def test_native_layer_rejects_what_the_kernels_reject():
    out = torch.empty(4, dtype=torch.uint8)
    with pytest.raises(ValueError, match=r"quantize_fp8_rowwise: invalid argument \(status 1\)"):
        _C.ops_quantize_fp8_rowwise(0, 0, -1, 4, out.data_ptr(), out.data_ptr(), False, 0)
    with pytest.raises(ValueError, match="cast_float: invalid argument"):
        _C.ops_cast_float(out.data_ptr(), 7, out.data_ptr(), 0, 1, False, 0)  # 7 is no FloatDtype
    with pytest.raises(ValueError, match="mean and std need c = 3 entries each, got 1 and 3"):
        _C.ops_preprocess_nhwc_u8(U8.data_ptr(), 2, 8, 8, 3, 8, 8, [0.5], [0.5] * 3, 0, 0, out.data_ptr(), False, 0)
    with pytest.raises(ValueError, match="preprocess_nhwc_u8: invalid argument"):  # mode 3 is no ResizeMode
        _C.ops_preprocess_nhwc_u8(U8.data_ptr(), 2, 8, 8, 3, 8, 8, [0.5] * 3, [0.5] * 3, 3, 0, out.data_ptr(), False, 0)


@pytest.mark.skipif(_C.ops_has_cuda_kernels(), reason="this build has the CUDA kernels")
def test_device_call_without_kernels_says_so():
    assert not ops.has_cuda_kernels()
    with pytest.raises(RuntimeError, match="built without the CUDA kernels"):
        _C.ops_cast_float(0, 0, 0, 1, 0, True, 0)


# ---- registration ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", OPS)
def test_registered_under_torch_ops(name):
    packet = getattr(torch.ops.jit_embedding, name)
    assert str(packet.default._schema).startswith(f"jit_embedding::{name}(")


def test_torch_ops_match_the_public_functions():
    x = gaussian((6, 40), seed=10)
    for public, name in [
        (ops.quantize_fp8_rowwise, "quantize_fp8_rowwise"),
        (ops.quantize_int8_rowwise, "quantize_int8_rowwise"),
        (ops.quantize_fp8_per_tensor, "quantize_fp8_per_tensor"),
    ]:
        for a, b in zip(public(x), getattr(torch.ops.jit_embedding, name)(x)):
            assert_bits_equal(a, b)
    assert_bits_equal(torch.ops.jit_embedding.cast(x, torch.float16), ops.cast(x, torch.float16))
    codes, scales = ops.quantize_fp8_rowwise(x)
    assert_bits_equal(
        torch.ops.jit_embedding.dequantize_fp8_rowwise(codes, scales, torch.bfloat16),
        ops.dequantize_fp8_rowwise(codes, scales, torch.bfloat16),
    )
    f = frames((2, 7, 9, 3), seed=11)
    assert_bits_equal(
        torch.ops.jit_embedding.preprocess(f, CLIP_MEAN, CLIP_STD, 4, 5, "area", torch.float32),
        ops.preprocess(f, CLIP_MEAN, CLIP_STD, size=(4, 5), mode="area"),
    )
    with pytest.raises(ValueError, match="mode must be one of"):
        torch.ops.jit_embedding.preprocess(f, CLIP_MEAN, CLIP_STD, 4, 5, "nearest", torch.float32)


def opcheck_cases():
    x = gaussian((6, 16), seed=12)
    codes8, scales8 = ops.quantize_fp8_rowwise(x)
    codes_t, scale_t = ops.quantize_fp8_per_tensor(x)
    codes_i, scales_i = ops.quantize_int8_rowwise(x)
    f = frames((2, 7, 13, 3), seed=13)
    return [
        ("quantize_fp8_rowwise", (x.to(torch.bfloat16),)),
        ("quantize_fp8_per_tensor", (x,)),
        ("quantize_int8_rowwise", (x.to(torch.float16),)),
        # torch's schema check compares inputs with allclose, which float8 lacks: the uint8 view of the same codes.
        ("dequantize_fp8_rowwise", (codes8.view(torch.uint8), scales8, torch.float16)),
        ("dequantize_fp8_per_tensor", (codes_t.view(torch.uint8), scale_t, torch.bfloat16)),
        ("dequantize_int8_rowwise", (codes_i, scales_i, torch.float32)),
        ("cast", (x, torch.bfloat16)),
        ("preprocess", (f, CLIP_MEAN, CLIP_STD, 5, 3, "bilinear", torch.float16)),
    ]


@pytest.mark.parametrize(("name", "args"), opcheck_cases(), ids=[n for n, _ in opcheck_cases()])
def test_opcheck(name, args):
    # Schema (no mutation, no aliasing), fake tensors against the real outputs, and AOT dispatch with dynamic shapes.
    torch.library.opcheck(getattr(torch.ops.jit_embedding, name).default, args)


def test_works_under_torch_compile_with_fake_tensors():
    def roundtrip(x: torch.Tensor, f: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        codes, scales = ops.quantize_fp8_rowwise(x * 2)
        pixels = ops.preprocess(f, CLIP_MEAN, CLIP_STD, size=(4, 4), dtype=torch.bfloat16)
        return ops.dequantize_fp8_rowwise(codes, scales, torch.bfloat16) + 1, pixels

    compiled = torch.compile(roundtrip, backend="aot_eager", fullgraph=True)
    x, f = gaussian((8, 32), seed=14), frames((1, 9, 9, 3), seed=14)
    for a, b in zip(compiled(x, f), roundtrip(x, f)):
        assert_bits_equal(a, b)


# ---- the pure-torch fallback (what CUDA tensors get without the kernels), run on the CPU ----------------------------


def special_matrix(dtype: torch.dtype) -> torch.Tensor:
    x = gaussian((64, 300), seed=15, scale=5.0)
    x[3, 7], x[4, 1], x[4, 2], x[5] = float("nan"), float("inf"), -float("inf"), 0.0
    x[6] = float("nan")
    return x.to(dtype)


@pytest.mark.parametrize("dtype", FLOATS)
def test_fallback_quantization_matches_the_reference(dtype, monkeypatch):
    x = special_matrix(dtype)
    native = [ops.quantize_fp8_rowwise(x), ops.quantize_fp8_per_tensor(x), ops.quantize_int8_rowwise(x)]
    monkeypatch.setattr(ops, "_native", lambda t: False)
    fallback = [ops.quantize_fp8_rowwise(x), ops.quantize_fp8_per_tensor(x), ops.quantize_int8_rowwise(x)]
    for (codes_a, scales_a), (codes_b, scales_b) in zip(native, fallback):
        assert_bits_equal(codes_b, codes_a)
        assert_bits_equal(scales_b, scales_a)


@pytest.mark.parametrize("out", FLOATS)
def test_fallback_decode_and_cast_match_except_nan_bits(out, monkeypatch):
    x = special_matrix(torch.float32)
    (c8, s8), (ct, st), (ci, si) = (
        ops.quantize_fp8_rowwise(x),
        ops.quantize_fp8_per_tensor(x),
        ops.quantize_int8_rowwise(x),
    )

    def run():
        return [
            ops.dequantize_fp8_rowwise(c8, s8, out),
            ops.dequantize_fp8_per_tensor(ct, st, out),
            ops.dequantize_int8_rowwise(ci, si, out),
            ops.cast(x, out),
        ]

    native = run()
    monkeypatch.setattr(ops, "_native", lambda t: False)
    for a, b in zip(native, run()):
        assert torch.equal(torch.isnan(a), torch.isnan(b))
        keep = ~torch.isnan(a)
        assert_bits_equal(b[keep], a[keep])


@pytest.mark.parametrize("mode", ["none", "bilinear", "area"])
def test_fallback_preprocess_is_close(mode, monkeypatch):
    x = frames((2, 17, 23, 3), seed=16)
    size = (17, 23) if mode == "none" else (9, 31)
    native = ops.preprocess(x, CLIP_MEAN, CLIP_STD, size=size, mode=mode)
    monkeypatch.setattr(ops, "_native", lambda t: False)
    fallback = ops.preprocess(x, CLIP_MEAN, CLIP_STD, size=size, mode=mode)
    assert fallback.is_contiguous()
    torch.testing.assert_close(fallback, native, rtol=0, atol=2e-6)


# ---- CUDA: the device path against the CPU reference ----------------------------------------------------------------


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
class TestCuda:
    def compare(self, fn, *args, **kwargs):
        """fn on CUDA copies of the tensor args, bit for bit against fn on the CPU originals."""
        on_gpu = fn(*[a.cuda() if isinstance(a, torch.Tensor) else a for a in args], **kwargs)
        on_cpu = fn(*args, **kwargs)
        on_gpu, on_cpu = (r if isinstance(r, tuple) else (r,) for r in (on_gpu, on_cpu))
        for g, c in zip(on_gpu, on_cpu):
            assert g.device.type == "cuda"
            assert_bits_equal(g.cpu(), c, any_nan=True)

    @pytest.fixture(autouse=True)
    def kernels(self):
        if not ops.has_cuda_kernels():
            pytest.skip("this build has no CUDA kernels (needs a torch with CUDA and nvcc at build time)")

    @pytest.mark.parametrize("dtype", FLOATS)
    def test_quantize(self, dtype):
        x = special_matrix(dtype)
        for fn in (ops.quantize_fp8_rowwise, ops.quantize_fp8_per_tensor, ops.quantize_int8_rowwise):
            self.compare(fn, x)
        self.compare(ops.quantize_fp8_rowwise, gaussian((3, 5, 4096), seed=17).to(dtype))  # block-per-row path

    @pytest.mark.parametrize("out", FLOATS)
    def test_decode_and_cast(self, out):
        x = special_matrix(torch.float32)
        self.compare(ops.dequantize_fp8_rowwise, *ops.quantize_fp8_rowwise(x), out)
        self.compare(ops.dequantize_fp8_per_tensor, *ops.quantize_fp8_per_tensor(x), out)
        self.compare(ops.dequantize_int8_rowwise, *ops.quantize_int8_rowwise(x), out)
        for src in FLOATS:
            self.compare(ops.cast, cast_inputs(src), out)

    @pytest.mark.parametrize("mode", ["none", "bilinear", "area"])
    @pytest.mark.parametrize("dtype", FLOATS)
    def test_preprocess(self, mode, dtype):
        for hw, size in SIZES:
            x = frames((2, *hw, 3), seed=18)
            out_size = hw if mode == "none" else size
            self.compare(ops.preprocess, x, CLIP_MEAN, CLIP_STD, size=out_size, mode=mode, dtype=dtype)

    def test_runs_on_the_current_stream(self):
        x = gaussian((256, 512), seed=19).cuda()
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            codes, scales = ops.quantize_fp8_rowwise(x)
        side.synchronize()
        expected_codes, expected_scales = ops.quantize_fp8_rowwise(x.cpu())
        assert_bits_equal(codes.cpu(), expected_codes)
        assert_bits_equal(scales.cpu(), expected_scales)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_fallback_keeps_the_contract(monkeypatch):
    """What CUDA tensors get without the kernels: torch's ops on the GPU, within one code step of the reference."""
    x = special_matrix(torch.float32)
    monkeypatch.setattr(ops, "_native", lambda t: t.device.type == "cpu")
    for quantize, dequantize, step in (
        (ops.quantize_fp8_rowwise, ops.dequantize_fp8_rowwise, 2.0**-3),
        (ops.quantize_int8_rowwise, ops.dequantize_int8_rowwise, 1 / 127),
    ):
        codes, scales = quantize(x.cuda())
        ref_codes, ref_scales = quantize(x)
        torch.testing.assert_close(scales.cpu(), ref_scales, rtol=1e-6, atol=0)
        back, ref_back = dequantize(codes, scales).cpu(), dequantize(ref_codes, ref_scales)
        torch.testing.assert_close(back, ref_back, rtol=step, atol=float(ref_scales.max()) * step, equal_nan=True)
    f = frames((2, 17, 23, 3), seed=20)
    for mode, size in (("none", (17, 23)), ("bilinear", (9, 31)), ("area", (5, 7))):
        got = ops.preprocess(f.cuda(), CLIP_MEAN, CLIP_STD, size=size, mode=mode).cpu()
        torch.testing.assert_close(got, ops.preprocess(f, CLIP_MEAN, CLIP_STD, size=size, mode=mode), rtol=0, atol=1e-5)
