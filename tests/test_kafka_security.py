"""Kafka TLS/SASL settings from the environment (no broker needed: it is configuration)."""
import pytest

from tagpulse import kafka_security


@pytest.fixture(autouse=True)
def fresh(monkeypatch):
    for name in ["PROTOCOL", "SASL_MECHANISM", "SASL_USERNAME", "SASL_PASSWORD", "SASL_PASSWORD_FILE"]:
        monkeypatch.delenv(f"TAGPULSE_KAFKA_{'SECURITY_' if name == 'PROTOCOL' else ''}{name}", raising=False)
    kafka_security.client_kwargs.cache_clear()
    yield
    kafka_security.client_kwargs.cache_clear()


def test_plaintext_by_default():
    assert kafka_security.client_kwargs() == {}
    assert kafka_security.faust_credentials() is None


def test_sasl_ssl_reads_the_password_from_a_file(monkeypatch, tmp_path):
    secret = tmp_path / "pw"
    secret.write_text("s3cret\n")
    monkeypatch.setenv("TAGPULSE_KAFKA_SECURITY_PROTOCOL", "sasl_ssl")
    monkeypatch.setenv("TAGPULSE_KAFKA_SASL_USERNAME", "pipeline")
    monkeypatch.setenv("TAGPULSE_KAFKA_SASL_PASSWORD_FILE", str(secret))
    kwargs = kafka_security.client_kwargs()
    assert kwargs["security_protocol"] == "SASL_SSL" and kwargs["sasl_mechanism"] == "SCRAM-SHA-256"
    assert kwargs["sasl_plain_password"] == "s3cret" and kwargs["ssl_context"] is not None
    creds = kafka_security.faust_credentials()
    assert "s3cret" not in repr(creds)


def test_sasl_without_credentials_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("TAGPULSE_KAFKA_SECURITY_PROTOCOL", "SASL_PLAINTEXT")
    with pytest.raises(SystemExit, match="TAGPULSE_KAFKA_SASL_USERNAME"):
        kafka_security.client_kwargs()


def test_unknown_protocol_is_refused(monkeypatch):
    monkeypatch.setenv("TAGPULSE_KAFKA_SECURITY_PROTOCOL", "TLS")
    with pytest.raises(SystemExit, match="PLAINTEXT"):
        kafka_security.client_kwargs()
