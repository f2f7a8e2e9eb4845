"""Credentials for the Google Drive backend.

Three sources, tried in this order by `load_credentials`:
1. `token_file`: an OAuth token stored by `authorize` (google-auth's authorized-user JSON: token,
   refresh_token, client_id, client_secret, token_uri, scopes, expiry). A valid access token is used
   as is; an expired one is refreshed on first use (at Google, or at the `token_uri` option).
2. `credentials_file`: a service-account key (JSON), optionally impersonating a user (`subject`,
   domain-wide delegation).
3. neither: `DEFAULT_TOKEN_FILE` if `vfs auth gdrive` wrote one, else Application Default Credentials
   (`google.auth.default`).

`authorize(client_secrets_file, token_file)` runs the installed-app flow (a browser consent, a
redirect to a loopback port) and stores the token with mode 0600; `vfs auth gdrive` calls it.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any, Sequence

import google.auth
import google.auth.credentials
import google.oauth2.credentials
import google.oauth2.service_account

log = logging.getLogger(__name__)

# vfs reads and writes every file the user can see: `drive` (drive.file would see only files vfs
# itself created). A token made for drive.readonly needs `vfs auth gdrive` again before writes work.
SCOPES: tuple[str, ...] = ("https://www.googleapis.com/auth/drive",)
DEFAULT_TOKEN_FILE = Path(os.environ.get("XDG_CONFIG_HOME", Path.home() / ".config")) / "vfs" / "gdrive-token.json"


def authorize(client_secrets_file: str | os.PathLike[str], token_file: str | os.PathLike[str] = DEFAULT_TOKEN_FILE,
              *, scopes: Sequence[str] = SCOPES, open_browser: bool = True, port: int = 0) -> google.oauth2.credentials.Credentials:
    """Run the OAuth installed-app flow for `client_secrets_file` and store the token in `token_file`."""
    from google_auth_oauthlib.flow import InstalledAppFlow  # only this command needs oauthlib

    flow = InstalledAppFlow.from_client_secrets_file(os.fspath(client_secrets_file), scopes=list(scopes))
    creds = flow.run_local_server(host="localhost", port=port, open_browser=open_browser,
                                  authorization_prompt_message="Open this URL to allow vfs to read your Drive: {url}")
    save_token(creds, token_file)
    return creds


def save_token(creds: google.oauth2.credentials.Credentials, token_file: str | os.PathLike[str]) -> None:
    """Write authorized-user JSON readable only by the owner (temp file, then rename)."""
    path = Path(token_file)
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(creds.to_json())
    os.replace(tmp, path)
    log.info("stored Google Drive token in %s", path)


def token_info(token: str, *, refresh_token: str = "", client_id: str = "", client_secret: str = "",
               expiry: str = "2100-01-01T00:00:00Z", scopes: Sequence[str] = SCOPES) -> dict[str, Any]:
    """Authorized-user JSON for a known access token (what tests and scripted set-ups write)."""
    return {"token": token, "refresh_token": refresh_token, "client_id": client_id, "client_secret": client_secret,
            "token_uri": "https://oauth2.googleapis.com/token", "scopes": list(scopes), "expiry": expiry}


def load_credentials(*, token_file: str | None = None, credentials_file: str | None = None, subject: str | None = None,
                     token_uri: str | None = None, scopes: Sequence[str] = SCOPES) -> google.auth.credentials.Credentials:
    """Credentials from the first source that is configured (see the module docstring).

    `token_uri` replaces Google's token endpoint for stored OAuth tokens (a test server's); google-auth
    ignores the one written in a token file on purpose, so a planted file cannot send the refresh
    token elsewhere, and so does this function.
    """
    if token_file:
        return _load_token(Path(token_file).expanduser(), token_uri)
    if credentials_file:
        creds = google.oauth2.service_account.Credentials.from_service_account_file(
            os.fspath(Path(credentials_file).expanduser()), scopes=list(scopes))
        return creds.with_subject(subject) if subject else creds
    if DEFAULT_TOKEN_FILE.exists():
        return _load_token(DEFAULT_TOKEN_FILE, token_uri)
    creds, _ = google.auth.default(scopes=list(scopes))
    return creds


def _load_token(path: Path, token_uri: str | None) -> google.oauth2.credentials.Credentials:
    info = json.loads(path.read_text())
    # The stored scopes are the ones granted; passing ours would only make google-auth re-request them.
    creds = google.oauth2.credentials.Credentials.from_authorized_user_info(info)
    if token_uri:
        creds = google.oauth2.credentials.Credentials(
            token=creds.token, refresh_token=creds.refresh_token, token_uri=token_uri, scopes=creds.scopes,
            client_id=creds.client_id, client_secret=creds.client_secret, expiry=creds.expiry,
            quota_project_id=creds.quota_project_id)
    return creds
