"""Passwords in storage and tracking URLs are masked wherever the product stores or shows them."""

from __future__ import annotations

import pytest

from distill_lab.errors import DistillLabError
from distill_lab.masking import check_tracking_credentials, mask_url, scrub
from distill_lab.study_runner import _worker_tracking_uri

SECRET = "S3cret/PW"


@pytest.mark.parametrize("url, masked", [
    ("postgresql+psycopg2://postgres:S3cretPW@127.0.0.1:5432/db", "postgresql+psycopg2://postgres:***@127.0.0.1:5432/db"),
    ("mysql://u:p%40ss@db.example/x", "mysql://u:***@db.example/x"),
    ("http://alice:pw@mlflow.example:5000", "http://alice:***@mlflow.example:5000"),
    ("postgresql://postgres@127.0.0.1/db", "postgresql://postgres@127.0.0.1/db"),
    ("sqlite:///mlflow.db", "sqlite:///mlflow.db"),
    ("/tmp/optuna.journal", "/tmp/optuna.journal"),
])
def test_mask_url_hides_only_the_password(url, masked):
    assert mask_url(url) == masked


def test_scrub_removes_a_password_from_any_message_also_url_encoded():
    url = "postgresql://postgres:S3cret%2FPW@127.0.0.1/db"
    message = f"could not connect with password S3cret/PW (S3cret%2FPW) to {url}"
    assert SECRET not in scrub(message, url) and "S3cret%2FPW" not in scrub(message, url)


def test_credentials_in_an_http_tracking_uri_are_refused():
    with pytest.raises(DistillLabError, match=r"http://alice:\*\*\*@h:5000: credentials in the URL .* "
                                              r"MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD"):
        check_tracking_credentials("http://alice:pw@h:5000")
    check_tracking_credentials("http://h:5000")  # fine


def test_a_joining_worker_brings_the_tracking_password_itself():
    real = "postgresql://mlflow:pw@db/mlflow"
    assert _worker_tracking_uri(mask_url(real), real) == real
    assert _worker_tracking_uri("http://h:5000", "sqlite:///mlflow.db") == "http://h:5000"
    with pytest.raises(DistillLabError, match="pass --tracking-uri with its password"):
        _worker_tracking_uri(mask_url(real), "sqlite:///mlflow.db")
