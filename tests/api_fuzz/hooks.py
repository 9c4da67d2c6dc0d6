"""Schemathesis hooks for tests/api_fuzz/run.sh: the signed-in profiles.

The profile's account is signed in with POST /api/auth/token. When the fuzzer itself
has broken the account (a reset password, a disabled or demoted user, a revoked
session, a lockout), the account is put back through the gate's own CLI over the
admin socket, and the token fetched again: a profile never silently degrades into
the anonymous one.
"""

import os
import subprocess

import requests
import schemathesis

PROFILE = os.environ["API_FUZZ_PROFILE"]
URL = os.environ["API_FUZZ_URL"]
CA = os.environ["API_FUZZ_CA"]
EMAIL = os.environ.get("API_FUZZ_EMAIL", "")
PASSWORD = os.environ.get("API_FUZZ_PASSWORD", "")
BIN = os.environ.get("API_FUZZ_BIN", "")
DATA = os.environ.get("API_FUZZ_DATA", "")


def _cli(*args, stdin=None):
    env = dict(os.environ, MIAUFLIX_DATA_DIR=DATA)
    subprocess.run([BIN, *args], input=stdin, env=env, check=False, capture_output=True, text=True, timeout=30)


def _token():
    resp = requests.post(
        f"{URL}/api/auth/token", json={"email": EMAIL, "password": PASSWORD}, verify=CA, timeout=30
    )
    if resp.status_code == 200:
        return resp.json()["access_token"]
    return None


def _restore():
    _cli("user", "reset-password", "--email", EMAIL, stdin=PASSWORD + "\n")
    _cli("user", "enable", "--email", EMAIL)
    _cli("user", "unlock", "--email", EMAIL)
    _cli("user", "set-role", "--email", EMAIL, "--role", PROFILE)


if PROFILE != "anonymous":

    @schemathesis.auth(refresh_interval=600, retry_on=[401])
    class ProfileToken:
        def get(self, case, context):
            token = _token()
            if token is None:
                _restore()
                token = _token()
            if token is None:
                raise RuntimeError(f"api-fuzz: cannot sign in as the {PROFILE} profile even after restoring it")
            return token

        def set(self, case, data, context):
            case.headers = case.headers or {}
            case.headers["Authorization"] = f"Bearer {data}"
