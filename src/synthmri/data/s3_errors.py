"""boto3 errors in words: which ones a retry may cure, and a one-line cause for the others."""

from __future__ import annotations


def is_transient(exc: Exception) -> bool:
    """A broken-off stream or a failed in-flight checksum: worth another attempt."""
    from botocore.exceptions import (
        ConnectionClosedError,
        FlexibleChecksumError,
        IncompleteReadError,
        ReadTimeoutError,
        ResponseStreamingError,
    )

    return isinstance(exc, (ConnectionClosedError, FlexibleChecksumError, IncompleteReadError, ReadTimeoutError,
                            ResponseStreamingError))


def describe_error(exc: Exception, bucket: str, endpoint: str | None) -> str | None:
    """A one-line cause for a boto3 error, or None for anything that is not one."""
    from botocore.exceptions import (
        BotoCoreError,
        ClientError,
        ConnectTimeoutError,
        EndpointConnectionError,
        NoCredentialsError,
    )

    if isinstance(exc, NoCredentialsError):
        return "no credentials found (set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or a profile)"
    if isinstance(exc, (EndpointConnectionError, ConnectTimeoutError)):
        return f"cannot reach the S3 endpoint {endpoint or '(AWS default)'} ({exc})"
    if isinstance(exc, ClientError):
        error = exc.response.get("Error", {})
        code, text = str(error.get("Code", "")), error.get("Message") or str(exc)
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        if code == "NoSuchBucket":
            return f"bucket {bucket!r} does not exist"
        if code in ("InvalidAccessKeyId", "SignatureDoesNotMatch", "ExpiredToken", "InvalidToken"):
            return f"credentials rejected ({code}: {text})"
        if code in ("AccessDenied", "AllAccessDisabled", "403") or status == 403:
            return f"access denied ({code}: {text})"
        if code in ("PreconditionFailed", "412") or status == 412:
            return "object changed since it was listed; run again"
        if code in ("NoSuchKey", "404"):
            return "object disappeared since it was listed; run again"
        return f"{code or status}: {text}"
    if isinstance(exc, BotoCoreError):
        return str(exc)
    return None
