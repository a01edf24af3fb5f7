"""Kafka TLS / SASL settings for every client tagpulse creates (aiokafka and Faust).

Configured from the environment only; a password comes from
TAGPULSE_KAFKA_SASL_PASSWORD_FILE (preferred) or TAGPULSE_KAFKA_SASL_PASSWORD and
is never printed. PLAINTEXT (the default) is right for the local stack on
127.0.0.1 only.

| variable | meaning |
| --- | --- |
| TAGPULSE_KAFKA_SECURITY_PROTOCOL | PLAINTEXT (default), SSL, SASL_PLAINTEXT or SASL_SSL |
| TAGPULSE_KAFKA_SASL_MECHANISM | PLAIN, SCRAM-SHA-256 (default for SASL) or SCRAM-SHA-512 |
| TAGPULSE_KAFKA_SASL_USERNAME | SASL user |
| TAGPULSE_KAFKA_SASL_PASSWORD_FILE / _PASSWORD | SASL password (file first) |
| TAGPULSE_KAFKA_SSL_CAFILE | CA bundle to verify the brokers (system store when unset) |
| TAGPULSE_KAFKA_SSL_CERTFILE / _KEYFILE | client certificate for mutual TLS |
"""
from __future__ import annotations

import os
import ssl
from functools import lru_cache
from pathlib import Path

PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")


class SecurityConfigError(SystemExit):
    pass


def _password() -> str | None:
    path = os.environ.get("TAGPULSE_KAFKA_SASL_PASSWORD_FILE")
    if path:
        try:
            return Path(path).read_text().strip()
        except OSError as exc:
            raise SecurityConfigError(f"tagpulse: cannot read TAGPULSE_KAFKA_SASL_PASSWORD_FILE ({exc.strerror})")
    return os.environ.get("TAGPULSE_KAFKA_SASL_PASSWORD")


def _ssl_context() -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=os.environ.get("TAGPULSE_KAFKA_SSL_CAFILE") or None)
    cert = os.environ.get("TAGPULSE_KAFKA_SSL_CERTFILE")
    if cert:
        context.load_cert_chain(cert, os.environ.get("TAGPULSE_KAFKA_SSL_KEYFILE") or None)
    return context


@lru_cache(maxsize=1)
def client_kwargs() -> dict:
    """Keyword arguments for AIOKafkaProducer / AIOKafkaConsumer / AIOKafkaAdminClient."""
    protocol = os.environ.get("TAGPULSE_KAFKA_SECURITY_PROTOCOL", "PLAINTEXT").upper()
    if protocol not in PROTOCOLS:
        raise SecurityConfigError(f"tagpulse: TAGPULSE_KAFKA_SECURITY_PROTOCOL must be one of {', '.join(PROTOCOLS)}")
    if protocol == "PLAINTEXT":
        return {}
    kwargs: dict = {"security_protocol": protocol}
    if protocol in ("SSL", "SASL_SSL"):
        kwargs["ssl_context"] = _ssl_context()
    if protocol.startswith("SASL"):
        mechanism = os.environ.get("TAGPULSE_KAFKA_SASL_MECHANISM", "SCRAM-SHA-256").upper()
        if mechanism not in MECHANISMS:
            raise SecurityConfigError(f"tagpulse: TAGPULSE_KAFKA_SASL_MECHANISM must be one of {', '.join(MECHANISMS)}")
        user, password = os.environ.get("TAGPULSE_KAFKA_SASL_USERNAME"), _password()
        if not user or password is None:
            raise SecurityConfigError("tagpulse: SASL needs TAGPULSE_KAFKA_SASL_USERNAME and a password "
                                      "(TAGPULSE_KAFKA_SASL_PASSWORD_FILE or TAGPULSE_KAFKA_SASL_PASSWORD)")
        kwargs.update(sasl_mechanism=mechanism, sasl_plain_username=user, sasl_plain_password=password)
    return kwargs


def faust_credentials():
    """The same settings for faust.App(broker_credentials=...), or None for PLAINTEXT."""
    import faust

    kwargs = client_kwargs()
    if not kwargs:
        return None
    protocol = kwargs["security_protocol"]
    if protocol == "SSL":
        return faust.SSLCredentials(kwargs["ssl_context"])
    mechanism = kwargs["sasl_mechanism"]
    if mechanism == "PLAIN":
        return faust.SASLCredentials(username=kwargs["sasl_plain_username"], password=kwargs["sasl_plain_password"],
                                     ssl_context=kwargs.get("ssl_context"))
    from faust.auth import SASLCredentials
    from faust.types.auth import SASLMechanism
    return SASLCredentials(username=kwargs["sasl_plain_username"], password=kwargs["sasl_plain_password"],
                           mechanism=SASLMechanism(mechanism), ssl_context=kwargs.get("ssl_context"))
