"""The DSEL_* environment contract of the operator."""

from __future__ import annotations

import pytest

from selection_operator.settings import DEFAULT_METRICS_PORT, OperatorSettings, SettingsError


def test_defaults_without_any_variable():
    settings = OperatorSettings.from_env({})
    assert settings.metrics_port == DEFAULT_METRICS_PORT == 9090
    assert settings.worker_image.startswith("dsel-worker:")
    assert settings.default_storage_uri is None and settings.job_ttl_seconds is None
    assert settings.logging_level is None


def test_every_variable_is_read():
    settings = OperatorSettings.from_env({
        "DSEL_WORKER_IMAGE": "ghcr.io/x/worker:3", "DSEL_DEFAULT_STORAGE_URI": "s3://bucket/dsel/",
        "DSEL_S3_ENDPOINT": "http://minio:9000", "DSEL_S3_REGION": "eu-1", "DSEL_S3_CREDENTIALS_SECRET": "s3",
        "DSEL_METRICS_PORT": "0", "DSEL_METRICS_ADDRESS": "127.0.0.1", "DSEL_LOG_LEVEL": "debug",
        "DSEL_WORKER_SERVICE_ACCOUNT": "worker", "DSEL_JOB_TTL_SECONDS": "3600", "DSEL_RESYNC_SECONDS": "5",
    })
    assert settings == OperatorSettings(
        worker_image="ghcr.io/x/worker:3", default_storage_uri="s3://bucket/dsel", s3_endpoint="http://minio:9000",
        s3_region="eu-1", s3_credentials_secret="s3", metrics_port=0, metrics_address="127.0.0.1",
        log_level="DEBUG", worker_service_account="worker", job_ttl_seconds=3600, resync_seconds=5.0,
    )


@pytest.mark.parametrize(("name", "value"), [
    ("DSEL_METRICS_PORT", "http"), ("DSEL_METRICS_PORT", "70000"), ("DSEL_JOB_TTL_SECONDS", "-1"),
    ("DSEL_LOG_LEVEL", "LOUD"), ("DSEL_DEFAULT_STORAGE_URI", "/mnt/data"), ("DSEL_RESYNC_SECONDS", "0"),
])
def test_bad_values_name_the_variable(name, value):
    with pytest.raises(SettingsError, match=name):
        OperatorSettings.from_env({name: value})


def test_empty_variables_count_as_unset():
    assert OperatorSettings.from_env({"DSEL_METRICS_PORT": "", "DSEL_S3_ENDPOINT": " "}) == OperatorSettings.from_env({})


@pytest.mark.parametrize(("name", "value"), [
    ("DSEL_POD_START_GRACE_SECONDS", "0"), ("DSEL_POD_START_GRACE_SECONDS", "soon"),
    ("DSEL_POD_START_GRACE_SECONDS", "inf"),
])
def test_bad_grace_periods_name_the_variable(name, value):
    with pytest.raises(SettingsError, match=name):
        OperatorSettings.from_env({name: value})


def test_the_grace_period_is_read():
    assert OperatorSettings.from_env({"DSEL_POD_START_GRACE_SECONDS": "120"}).pod_start_grace_seconds == 120
    assert OperatorSettings.from_env({}).pod_start_grace_seconds == 900


def test_an_endpoint_with_credentials_is_refused_without_printing_them():
    """They would be copied into every namespace's arguments ConfigMap (issue 13 item 3)."""
    with pytest.raises(SettingsError, match="DSEL_S3_ENDPOINT") as refused:
        OperatorSettings.from_env({"DSEL_S3_ENDPOINT": "http://AKIAEXAMPLE:s3cr3t-value@minio:9000"})
    assert "s3cr3t-value" not in str(refused.value) and "AKIAEXAMPLE" not in str(refused.value)
