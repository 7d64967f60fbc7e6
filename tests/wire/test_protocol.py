"""The one /v1 request model: token ids as JSON Schema reads them, in range; non-integers refused."""

from __future__ import annotations

import pytest

from wire.protocol import TOKEN_ID_MAX, CompletionRequest, RequestInvalid, request_validate


def test_integral_token_ids_are_integers() -> None:
    # JSON Schema's "integer" takes 2.0; so does the model, as the same token id.
    request = request_validate(CompletionRequest, {"model": "m", "prompt": [[1, 2.0]]})
    assert request.prompt_token_ids() == [1, 2]
    assert request_validate(CompletionRequest, {"model": "m", "prompt": [7.0, 8]}).prompt_token_ids() == [7, 8]


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"prompt": "x", "max_tokens": 16.5}, "max_tokens"),
        ({"prompt": "x", "n": True}, "n"),
        ({"prompt": [-1]}, "prompt"),
        ({"prompt": [[TOKEN_ID_MAX + 1]]}, "prompt"),
        ({"prompt": [1.5]}, "prompt"),
        ({"prompt": [132575931361050157978785557522677760]}, "prompt"),
    ],
)
def test_non_integers_and_token_ids_out_of_range_are_refused(body: dict[str, object], param: str) -> None:
    with pytest.raises(RequestInvalid) as caught:
        request_validate(CompletionRequest, {"model": "m", **body})
    assert caught.value.param == param
    if param == "prompt":
        assert f"0 to {TOKEN_ID_MAX}" in caught.value.message
