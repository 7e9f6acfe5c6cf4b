"""The one secret rule (dte_tools.redact): every form of a secret is masked, key names and
ordinary words are not, and values too short to be passwords are flagged at config load."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from urllib.parse import quote, quote_plus

import pytest

from dte_tools.redact import MASK, Redactor, secret_values
from dte_tools.wire import MAX_NAME_LENGTH
from duftd.config import load_config
from duftd.config import secret_values as task_secrets
from tests.test_resolution import config_with

# A quote, a backslash, a DSN-unsafe '$', a '/' and two non-ASCII characters.
SECRET = 'pa"s\\wörd$1/✓'


def forms(secret: str) -> dict[str, str]:
    """Texts a task might print that carry ``secret``, by name."""
    dsn = f"postgresql://duft:{quote(secret, safe='')}@db.local/emr"
    return {
        "plain": f"connecting with {secret} now",
        "json": json.dumps({"password": secret}),
        "json non-ascii": json.dumps({"password": secret}, ensure_ascii=False),
        "repr": repr({"password": secret}),
        "ascii": ascii(secret),
        "bytes repr": repr(secret.encode()),
        "url in dsn": dsn,
        "url default safe": quote(secret),
        "quote_plus": f"password={quote_plus(secret)}&user=duft",
        "base64": base64.b64encode(secret.encode()).decode(),
        "urlsafe base64": base64.urlsafe_b64encode(secret.encode()).decode(),
        "basic auth": "Basic " + base64.b64encode(f"duft:{secret}".encode()).decode(),
        "basic auth, other user": "Basic " + base64.b64encode(f"ab:{secret}".encode()).decode(),
        "exception": str(RuntimeError(f"login failed for {secret!r}")),
    }


@pytest.mark.parametrize(("name", "text"), forms(SECRET).items())
def test_every_form_is_masked_raw_and_inside_json(name: str, text: str) -> None:
    """Each form is masked as printed, and again once JSON-encoded (as events and notebooks
    store it), with and without ASCII escaping."""
    redactor = Redactor([SECRET])
    for stored in (text, json.dumps(text), json.dumps(text, ensure_ascii=False)):
        masked = redactor.mask(stored)
        assert MASK in masked, (name, stored)
        for leak in ("wörd", "w\\u00f6rd", "w%C3%B6rd", "d$1"):
            assert leak not in masked, (name, masked)


def test_key_names_and_words_stay_when_the_password_is_a_common_word() -> None:
    """A password that is the word 'password' is masked where it is a value, never as a key
    or a word of a sentence."""
    redactor = Redactor(["password"])
    assert redactor.mask("{'password': 'password'}") == "{'password': '********'}"
    assert redactor.mask('{"password":"password"}') == '{"password":"********"}'
    assert redactor.mask("password=password&user=x") == "password=********&user=x"
    assert redactor.mask("postgresql://duft:password@host/db") == (
        "postgresql://duft:********@host/db"
    )
    assert redactor.mask("type your password here") == "type your password here"
    assert redactor.mask(json.dumps({"text": "password\n"})) == '{"text": "********\\n"}'
    encoded = base64.b64encode(b"password").decode()
    assert redactor.mask(f"Basic {encoded}") == f"Basic {MASK}"


def test_short_values_are_not_secrets() -> None:
    """A value under 4 characters is not masked anywhere (it would erase every 'a')."""
    assert secret_values({"password": "abc", "token": "long-enough"}) == {"long-enough"}
    assert Redactor(["abc"]).mask("abc abc") == "abc abc"
    assert not Redactor(["abc"])


def test_short_password_is_warned_about_at_config_load(tmp_path: Path) -> None:
    """A password-type value shorter than 4 characters gets a warning naming the connection
    and field, and is left out of the run's secrets."""
    values = {"DB": {"pw": "a1", "host": "db.local"}, "API": {"token": "long-token"}}
    config = config_with(tmp_path, {}, dataConnectionParameters=values)
    (warning,) = [d for d in config.diagnostics if d.connection_id == "DB"]
    assert warning.severity == "warning"
    assert warning.field == "dataConnectionParameters.pw" and "shorter than 4" in warning.message
    assert task_secrets(config, config.task("T")) == ("long-token",)


def test_task_address_longer_than_the_wire_accepts_is_not_runnable(tmp_path: Path) -> None:
    """A task id the control socket could never carry is an error at load, not runnable."""
    root = tmp_path / "cfg"
    (root / "system" / "data_tasks").mkdir(parents=True)
    (root / "system" / "data_tasks" / "t.py").write_text("")
    long_id = "T" * (MAX_NAME_LENGTH + 1)
    tasks = [{"id": long_id, "pythonFile": "t.py"}, {"id": "OK", "pythonFile": "t.py"}]
    (root / "system" / "data_tasks.json").write_text(json.dumps({"dataTasks": tasks}))
    config = load_config(root)
    assert not config.tasks[long_id].runnable
    assert any(
        d.task_id == long_id and d.severity == "error" and str(MAX_NAME_LENGTH) in d.message
        for d in config.diagnostics
    )
    assert config.tasks["OK"].runnable
