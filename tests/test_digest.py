from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from model_provisioner import Digest, InvalidDigest

HEX = "ab" * 32


def test_string_and_mapping_forms_are_one_digest() -> None:
    d = Digest.parse(f"sha256:{HEX}")
    assert str(d) == f"sha256:{HEX}"
    assert Digest.parse({"algo": "sha256", "value": HEX}) == d
    assert Digest.parse({"algo": "SHA256", "value": HEX.upper()}) == d
    assert Digest.parse(f"SHA256:{HEX.upper()}") == d
    assert Digest.parse({"algo": "sha512", "value": "cd" * 64}).algo == "sha512"


@pytest.mark.parametrize(
    "value",
    [
        "",
        HEX,
        "sha256:",
        f"sha256:{HEX[:-1]}",
        f"sha256:{HEX}0",
        f"sha256:{'g' * 64}",
        f"md5:{'a' * 32}",
        f"sha1:{'a' * 40}",
        f"sha512:{HEX}",
        {"algo": "sha256"},
        {"value": HEX},
        42,
        None,
        ["sha256", HEX],
    ],
)
def test_strict_validation(value: object) -> None:
    with pytest.raises(InvalidDigest) as info:
        Digest.parse(value)
    assert isinstance(info.value, ValueError)
    assert "digest" in str(info.value)


@given(st.text(max_size=140))
def test_garbage_never_crashes(text: str) -> None:
    try:
        d = Digest.parse(text)
    except InvalidDigest:
        return
    assert Digest.parse(str(d)) == d
