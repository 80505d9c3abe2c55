"""A homomorphic request must say it put the model's log-scale features on their scale.

The service cannot see the values: a client that ignored a declared transform (an older
SDK) would get scores it cannot tell from right ones, so such a request is refused.
"""

from __future__ import annotations

import pytest

from protocol import inference as wire
from server.inference.linear import LinearMap, he_scores

LOG_MODEL = LinearMap(
    columns=("area", "age"),
    weights=((0.5, -0.25),),
    bias=(0.1,),
    link="sigmoid",
    labels=("benign", "malignant"),
    transforms={"area": "log"},
)


def _request(transforms: dict[str, str]) -> wire.HeRequest:
    return wire.HeRequest(
        "ab" * 16, None, 1, 64, ("area", "age"), (b"ct",), "blocks", transforms=transforms
    )


@pytest.mark.parametrize("sent", [{}, {"age": "log"}, {"area": "sqrt"}])
def test_a_request_without_the_models_transforms_is_refused_naming_them(sent):
    with pytest.raises(wire.ApiError) as caught:
        he_scores(LOG_MODEL, None, _request(sent))  # refused before the context is used
    assert caught.value.code == wire.INVALID_INPUT.code
    assert "'area': 'log'" in caught.value.message and "he.transforms" in caught.value.message


def test_a_request_with_the_models_transforms_gets_to_the_ciphertexts():
    with pytest.raises(wire.ApiError) as caught:
        he_scores(LOG_MODEL, None, _request({"area": "log"}))
    # past the check: refused for its block size (64)
    assert caught.value.code != wire.INVALID_INPUT.code
