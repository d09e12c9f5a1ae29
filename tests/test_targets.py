"""Target profiles: parsing, lookup errors, detection. No torch."""

import dataclasses

import pytest

import targets
from targets import ProfileError, UnknownTargetError, detect_target, list_profiles, load_profile

EXPECTED = {"x86-avx2", "x86-avx512-vnni", "rpi4", "rpi5", "jetson-orin"}


def test_all_expected_profiles_exist_and_parse():
    assert {p.id for p in list_profiles()} == EXPECTED
    for profile in list_profiles():
        assert profile.formats and profile.precisions and profile.backends
        assert profile.runtime.artifact_preference
        assert 0 < profile.accuracy.cosine_min <= profile.accuracy.cosine_mean <= 1
        assert profile.int8.notes, f"{profile.id}: every INT8 scheme must say why"
        assert profile.hardware.notes


def test_unknown_target_lists_known_ones():
    with pytest.raises(UnknownTargetError) as info:
        load_profile("pdp-11")
    for known in EXPECTED:
        assert known in str(info.value)


def test_avx2_profile_avoids_vpmaddubsw_saturation():
    # The hardware reason is data: AVX2 without VNNI limits adjacent weight pairs (INT8) and
    # uses 7-bit weights where codes are not pair-aware (INT4's expansions); VNNI needs neither.
    avx2, vnni = load_profile("x86-avx2").int8, load_profile("x86-avx512-vnni").int8
    assert (avx2.pair_sum_limit, avx2.reduce_range) == (128, True)
    assert (vnni.pair_sum_limit, vnni.reduce_range) == (0, False)
    assert 255 * avx2.pair_sum_limit <= 32767  # u8 activations x a pair: one saturating int16


@pytest.mark.parametrize("change, message", [
    ({"pair_sum_limit": 129}, "2..128"),  # 255 x 129 > 32767: would saturate
    ({"weight_rounding": "nearest"}, "needs weight_rounding"),
    ({"per_channel": False}, "needs weight_rounding"),
])
def test_pair_sum_limit_is_checked(change, message):
    scheme = load_profile("x86-avx2").int8
    with pytest.raises(ProfileError, match=message):
        dataclasses.replace(scheme, **change)


def test_jetson_uses_symmetric_qdq_for_tensorrt():
    scheme = load_profile("jetson-orin").int8
    assert (scheme.quant_format, scheme.activation_type, scheme.weight_type) == ("qdq", "int8", "int8")


@pytest.mark.parametrize(
    "facts, expected",
    [
        ({"arch": "x86_64", "cpu_flags": {"avx2", "fma"}, "device_model": ""}, "x86-avx2"),
        ({"arch": "x86_64", "cpu_flags": {"avx2", "fma", "avx512f", "avx512bw", "avx512_vnni"},
          "device_model": ""}, "x86-avx512-vnni"),
        ({"arch": "aarch64", "cpu_flags": {"asimd"}, "device_model": "Raspberry Pi 4 Model B Rev 1.4"}, "rpi4"),
        ({"arch": "aarch64", "cpu_flags": {"asimd", "asimddp"}, "device_model": "Raspberry Pi 5 Model B Rev 1.0"}, "rpi5"),
        ({"arch": "aarch64", "cpu_flags": {"asimd", "asimddp"},
          "device_model": "NVIDIA Jetson Orin Nano Developer Kit"}, "jetson-orin"),
    ],
)
def test_detection(facts, expected):
    assert detect_target(facts).id == expected


def test_detection_without_a_match_says_what_to_do():
    """The library names the profiles (no flag: edge-run --info and edge-bench show this reason
    too, and have no --target); edge-convert adds its flag."""
    with pytest.raises(UnknownTargetError, match="the profiles: .*x86-avx2") as raised:
        detect_target({"arch": "riscv64", "cpu_flags": set(), "device_model": ""})
    assert "--target" not in str(raised.value)


def test_this_machine_is_detected():
    assert load_profile("auto").id in EXPECTED


def test_malformed_profile_is_rejected(tmp_path, monkeypatch):
    bad = tmp_path / "x86-avx2.toml"
    text = (targets._DIR / "x86-avx2.toml").read_text().replace("per_channel = true", "per_chanel = true")
    bad.write_text(text)
    with pytest.raises(targets.ProfileError, match="per_chanel"):
        targets._parse(bad)


def test_pair_sum_limit_refuses_fused_attention():
    # QAttention weights would be quantized by onnxruntime alone, outside the limit.
    profile = load_profile("x86-avx2")
    with pytest.raises(ProfileError, match="onnx.fusion"):
        dataclasses.replace(profile, onnx=dataclasses.replace(profile.onnx, fusion=True))
