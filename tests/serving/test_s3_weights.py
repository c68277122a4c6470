"""Weights from a real S3 server (SeaweedFS, the collectives tests' fixture)."""

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("boto3")

from hetfaas.exceptions import ConfigurationError, ModelLoadError  # noqa: E402
from hetfaas.serving import GPUManager, InferenceFunction, Runtime, save_weights  # noqa: E402
from tests.collectives.conftest import S3_KEYS, s3_server  # noqa: E402, F401


def test_models_load_from_s3(s3_server):  # noqa: F811
    import boto3
    from botocore.config import Config

    boto3.client(
        "s3", endpoint_url=s3_server, region_name="us-east-1",
        aws_access_key_id=S3_KEYS["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=S3_KEYS["AWS_SECRET_ACCESS_KEY"],
        config=Config(s3={"addressing_style": "path"}),
    ).create_bucket(Bucket="models")  # fmt: skip
    query = (f"?endpoint={s3_server}&access_key_id={S3_KEYS['AWS_ACCESS_KEY_ID']}"
             f"&secret_access_key={S3_KEYS['AWS_SECRET_ACCESS_KEY']}")  # fmt: skip
    torch.manual_seed(0)
    model = torch.nn.Linear(8, 3)
    save_weights(model, f"s3://models/linear.pt{query}")
    infer = InferenceFunction()
    infer.register("linear", lambda: torch.nn.Linear(8, 3), weights=f"s3://models/linear.pt{query}")
    infer.register("absent", lambda: torch.nn.Linear(8, 3), weights=f"s3://models/none.pt{query}")
    x = torch.randn(2, 8)
    with torch.inference_mode():
        ref = model(x)
    with Runtime(infer, [GPUManager.cpu(1, 10_000)], "lalb") as rt:
        assert torch.allclose(rt.infer("linear", x), ref)
        with pytest.raises(ModelLoadError, match="absent"):
            rt.infer("absent", x)
        wrong = query.replace("test-secret", "wrong")
        infer.register(
            "denied", lambda: torch.nn.Linear(8, 3), weights=f"s3://models/linear.pt{wrong}"
        )
    with pytest.raises(ConfigurationError, match="unknown s3:// options"):
        save_weights(model, "s3://models/x.pt?bucket_style=virtual")
    with pytest.raises(ModelLoadError):  # the server checks the secret
        infer("denied", x)
