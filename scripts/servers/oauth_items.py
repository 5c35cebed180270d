"""An item API behind OAuth 2.0 as people build one with Flask and Authlib: Authlib's
AuthorizationServer issuing client-credentials tokens that expire, and its ResourceProtector
guarding the items with a BearerTokenValidator. Two clients, one per client-authentication
method of RFC 6749 2.3.1: `basic-client` (client_secret_basic) and `post-client`
(client_secret_post), both with the secret `s3cret`. For tests/auth.rs and by hand:

    TOKEN_LIFETIME=5 python3 scripts/servers/oauth_items.py 127.0.0.1 0

prints `127.0.0.1:PORT` once it listens. GET /stats counts tokens issued and items served.
"""
import os
import secrets
import sys
import threading
import time

from authlib.integrations.flask_oauth2 import AuthorizationServer, ResourceProtector
from authlib.oauth2.rfc6749 import ClientMixin, TokenMixin, grants
from authlib.oauth2.rfc6750 import BearerTokenValidator
from flask import Flask, jsonify
from werkzeug.serving import make_server

LIFETIME = int(os.environ.get("TOKEN_LIFETIME", "5"))
SECRET = "s3cret"


class Client(ClientMixin):
    def __init__(self, client_id, method):
        self.client_id, self.method = client_id, method

    def get_client_id(self):
        return self.client_id

    def get_default_redirect_uri(self):
        return None

    def get_allowed_scope(self, scope):
        return scope or ""

    def check_redirect_uri(self, redirect_uri):
        return False

    def check_client_secret(self, client_secret):
        return secrets.compare_digest(client_secret, SECRET)

    def check_endpoint_auth_method(self, method, endpoint):
        return method == self.method

    def check_response_type(self, response_type):
        return False

    def check_grant_type(self, grant_type):
        return grant_type == "client_credentials"


class Token(TokenMixin):
    def __init__(self, client, issued):
        self.client, self.issued = client, issued

    def check_client(self, client):
        return client.client_id == self.client.client_id

    def get_scope(self):
        return ""

    def get_expires_in(self):
        return LIFETIME

    def is_expired(self):
        return time.time() >= self.issued + LIFETIME

    def is_revoked(self):
        return False

    def get_user(self):
        return None

    def get_client(self):
        return self.client


CLIENTS = {
    "basic-client": Client("basic-client", "client_secret_basic"),
    "post-client": Client("post-client", "client_secret_post"),
}
TOKENS = {}
LOCK = threading.Lock()
STATS = {"tokens_issued": 0, "items": 0}


def save_token(token, request):
    with LOCK:
        TOKENS[token["access_token"]] = Token(request.client, time.time())
        STATS["tokens_issued"] += 1


class Validator(BearerTokenValidator):
    def authenticate_token(self, token_string):
        with LOCK:
            return TOKENS.get(token_string)


app = Flask(__name__)
app.config["OAUTH2_TOKEN_EXPIRES_IN"] = {"client_credentials": LIFETIME}
server = AuthorizationServer(app, query_client=CLIENTS.get, save_token=save_token)


class ClientCredentialsGrant(grants.ClientCredentialsGrant):
    # Authlib's grant takes client_secret_basic alone unless told otherwise.
    TOKEN_ENDPOINT_AUTH_METHODS = ["client_secret_basic", "client_secret_post"]


server.register_grant(ClientCredentialsGrant)
require_oauth = ResourceProtector()
require_oauth.register_token_validator(Validator())


@app.route("/oauth/token", methods=["POST"])
def issue_token():
    return server.create_token_response()


@app.route("/items/<int:item_id>")
@require_oauth()
def item(item_id):
    with LOCK:
        STATS["items"] += 1
    return jsonify(id=item_id, name=f"item-{item_id}")


@app.route("/stats")
def stats():
    with LOCK:
        return jsonify(STATS)


if __name__ == "__main__":
    host, port = sys.argv[1], int(sys.argv[2])
    httpd = make_server(host, port, app, threaded=True)
    print(f"{host}:{httpd.server_port}", flush=True)
    httpd.serve_forever()
