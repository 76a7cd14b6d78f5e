"""DSN parsing and masking: the forms users paste, and no password in anything printed."""

import pytest

from kinelab.dsn import MASK, Dsn, mask_text
from kinelab.errors import UsageError


def test_postgres_url_roundtrip_and_mask():
    dsn = Dsn.parse("postgres://kine:s3cr%40t@db.example:6543/k3s?sslmode=require")
    assert (dsn.kind, dsn.host, dsn.port, dsn.user, dsn.password, dsn.database) == \
        ("postgres", "db.example", 6543, "kine", "s3cr@t", "k3s")
    assert "s3cr" not in dsn.masked and MASK in dsn.masked
    assert "s3cr" not in repr(dsn)
    assert Dsn.parse(dsn.url) == dsn


def test_go_style_mysql_and_url_style_mysql_agree():
    go = Dsn.parse("mysql://root:pw@tcp(10.0.0.5:3307)/kine")
    url = Dsn.parse("mysql://root:pw@10.0.0.5:3307/kine")
    assert go == url
    assert go.kine_endpoint == "mysql://root:pw@tcp(10.0.0.5:3307)/kine"
    assert go.identity == "mysql://10.0.0.5:3307/kine"


def test_postgres_defaults_to_kines_database_and_kine_endpoint_disables_tls():
    dsn = Dsn.parse("postgresql://u:p@127.0.0.1")
    assert dsn.database == "kubernetes" and dsn.port == 5432
    assert dsn.kine_endpoint.endswith("/kubernetes?sslmode=disable")


def test_mask_text_finds_passwords_in_free_text():
    line = 'failed: postgres://kine:hunter2@127.0.0.1:5432/kubernetes and password=hunter2 here'
    masked = mask_text(line)
    assert "hunter2" not in masked
    assert masked.count(MASK) == 2


@pytest.mark.parametrize("bad", ["nonsense", "redis://x:1/0", "postgres://u:p@h:notaport/db", "sqlite://"])
def test_bad_dsns_raise_usage_errors(bad):
    with pytest.raises(UsageError):
        Dsn.parse(bad)
